"""The benchmark models and one method's training step, built the way the trainer builds it.

Models (batch 128, 10 classes):

- ``cnn``: the standardization-loss paper's CNN (arXiv:1903.00925, appendix A.1) on 1x28x28.
- ``wide_cnn``: the same network with 64/128/256 channels on 3x32x32 (CIFAR-sized), where
  per-channel statistics are a larger share of the work than in the 8-32 channel paper net.
- ``mlp``: the paper's 3x100 MLP (appendix A.2) on 1x28x28.
- ``wide_cnn_inplace``: ``wide_cnn`` with ``ReLU(inplace=True)`` (torchvision style), for
  ``bench memory``: an in-place activation after a hooked conv.

A step is what :func:`normlab.lab.train.train` does per batch: ``zero_grad`` + forward +
task loss (+ the method's auxiliary loss) + backward + ``step``, on a batch resident in
memory (no data loading is timed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...methods import Method
from ..config import TrainConfig
from ..models import MODELS
from ..train import make_optimizer

__all__ = ["BenchModel", "BENCH_MODELS", "TrainSetup", "make_setup", "build_bench_model"]


@dataclass(frozen=True)
class BenchModel:
    """A benchmark network: a registered model, its input shape and constructor options."""

    key: str
    model: str
    in_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    batch: int = 128
    num_classes: int = 10

    def describe(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.model}({'x'.join(map(str, self.in_shape))}{opts}), batch {self.batch}"


BENCH_MODELS: dict[str, BenchModel] = {
    "cnn": BenchModel("cnn", "cnn", (1, 28, 28)),
    "wide_cnn": BenchModel("wide_cnn", "cnn", (3, 32, 32), {"widths": (64, 128, 256)}),
    "mlp": BenchModel("mlp", "mlp", (1, 28, 28)),
    "wide_cnn_inplace": BenchModel("wide_cnn_inplace", "cnn", (3, 32, 32),
                                   {"widths": (64, 128, 256), "inplace": True}),
}


def build_bench_model(spec: BenchModel, method: Method) -> nn.Module:
    """``build_model`` with constructor options: the factory, then ``method.prepare``."""
    model = MODELS.get(spec.model)(method, spec.in_shape, spec.num_classes, **spec.options)
    return method.prepare(model)


class TrainSetup:
    """One method's model, auxiliary loss, optimizer and a fixed batch; ``step()`` trains once.

    Args:
        model: the (eager) model; ``forward`` is what the step calls (maybe compiled).
        forward: the callable for the forward pass.
        aux: the method's auxiliary loss, or None.
        optimizer: the method-wrapped optimizer.
        x, y: the batch.
    """

    def __init__(self, model: nn.Module, forward: nn.Module, aux, optimizer, x: Tensor,
                 y: Tensor) -> None:
        self.model, self.forward, self.aux, self.optimizer = model, forward, aux, optimizer
        self.x, self.y = x, y

    def loss(self) -> Tensor:
        task = F.cross_entropy(self.forward(self.x), self.y)
        return task if self.aux is None else task + self.aux()

    def step(self) -> None:
        """zero_grad + forward + loss + backward + step, as the trainer does each batch."""
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()

    def close(self) -> None:
        """Detach the auxiliary loss's hooks and the optimizer wrapper's."""
        if self.aux is not None:
            self.aux.remove()
        if hasattr(self.optimizer, "remove"):
            self.optimizer.remove()


def make_setup(spec: BenchModel, method: Method, compile: bool = False, seed: int = 0,
               device: torch.device | str = "cpu", batch: int | None = None) -> TrainSetup:
    """Build ``method``'s training step on ``spec`` exactly as the trainer does.

    Args:
        spec: the benchmark model.
        method: a built method (:func:`normlab.methods.create_method`).
        compile: ``torch.compile`` the model (as ``TrainConfig(compile=True)`` does).
        seed: seeds the weights and the batch.
        device: where model and batch live.
        batch: batch size (default: ``spec.batch``).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_bench_model(spec, method).to(device).train()
    aux = method.auxiliary_loss(model)
    config = TrainConfig(model=spec.model, batch_size=batch or spec.batch, compile=compile)
    optimizer = method.wrap_optimizer(make_optimizer(config, model), model)
    n = config.batch_size
    x = torch.randn((n,) + tuple(spec.in_shape), generator=gen).to(device)
    y = torch.randint(0, spec.num_classes, (n,), generator=gen).to(device)
    forward = torch.compile(model) if compile else model
    return TrainSetup(model, forward, aux, optimizer, x, y)

"""The benchmark models and one method's training step, built the way the trainer builds it.

Models (batch 128, 10 classes):

- ``cnn``: the standardization-loss paper's CNN (arXiv:1903.00925, appendix A.1) on 1x28x28.
- ``wide_cnn``: the same network with 64/128/256 channels on 3x32x32 (CIFAR-sized), where
  per-channel statistics are a larger share of the work than in the 8-32 channel paper net.
- ``mlp``: the paper's 3x100 MLP (appendix A.2) on 1x28x28.
- ``wide_cnn_inplace``: ``wide_cnn`` with ``ReLU(inplace=True)`` (torchvision style), for
  ``bench memory``: an in-place activation after a hooked conv.

A step is :meth:`normlab.lab.train.Trainer.train_step`, the step every lab run takes:
``zero_grad`` + forward + task loss (+ the method's auxiliary loss) + the finiteness check +
backward + ``step``, on a batch resident in memory (no data loading is timed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...methods import Method
from ..config import TrainConfig
from ..models import MODELS
from ..train import Trainer

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
    """One method's model, auxiliary loss, optimizer and a fixed batch; ``step()`` trains once
    through :meth:`normlab.lab.train.Trainer.train_step`, the lab's one training step.

    Args:
        trainer: an opened :class:`~normlab.lab.train.Trainer` (hooks attached).
        x, y: the batch.
    """

    def __init__(self, trainer: Trainer, x: Tensor, y: Tensor) -> None:
        self.trainer, self.x, self.y = trainer, x, y

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def forward(self):
        return self.trainer.forward

    @property
    def aux(self):
        return self.trainer.aux

    @property
    def optimizer(self):
        return self.trainer.optimizer

    def loss(self) -> Tensor:
        task, extra = self.trainer.loss(self.x, self.y)
        return task if extra is None else task + extra

    def step(self) -> None:
        """zero_grad + forward + loss + backward + step, as the trainer does each batch."""
        self.trainer.train_step(self.x, self.y)

    def close(self) -> None:
        """Detach the auxiliary loss's hooks and the optimizer wrapper's (the method's
        :meth:`~normlab.methods.base.Method.attached` context)."""
        self.trainer.close()


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
    config = TrainConfig(model=spec.model, batch_size=batch or spec.batch, compile=compile)
    n = config.batch_size
    x = torch.randn((n,) + tuple(spec.in_shape), generator=gen).to(device)
    y = torch.randint(0, spec.num_classes, (n,), generator=gen).to(device)
    return TrainSetup(Trainer(config, model, None, method, seed).open(), x, y)

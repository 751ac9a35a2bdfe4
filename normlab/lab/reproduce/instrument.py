"""Hooks ``normlab reproduce`` adds to a training run without touching the trainer.

The trainer builds the model and the optimizer inside :func:`normlab.lab.train.train`; the
only objects it hands them to are the method's hooks. :class:`Instrumented` wraps a method,
delegates every hook to it unchanged, and on the way

- attaches a :class:`PercentileRecorder` (a forward pre-hook on the last activation module)
  to the freshly built model (in ``prepare``), and
- registers a step post-hook on the base optimizer that halves the learning rate every
  ``lr_halve_every`` steps (in ``wrap_optimizer``; PointNet's schedule, Qi et al. 2017,
  arXiv:1612.00593, as used by Collins, Ballé & Shlens 2019, arXiv:1903.00925, appendix A.3).

Every hook keeps its handle and is removed when the run ends (``for_inference``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ...methods import Method

__all__ = ["ACTIVATIONS", "Instrumented", "PercentileRecorder", "last_activation",
           "halve_lr_every"]

ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh)


def last_activation(model: nn.Module) -> nn.Module:
    """The last activation module of ``model`` in registration (= forward) order.

    Its input is the pre-activation of the last hidden layer: after the normalization layer
    for layer methods, the raw weight-layer output otherwise.

    Raises:
        ValueError: the model has no ReLU/ReLU6/Sigmoid/Tanh module (e.g. FRN's TLU).
    """
    found = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no activation module "
                         f"({', '.join(t.__name__ for t in ACTIVATIONS)}) to record")
    return found[-1]


class PercentileRecorder:
    """Percentiles of a module's input on training forwards 1, K, 2K, ...

    Args:
        module: the module whose input is recorded (an activation: its input is the
            pre-activation).
        every: record every ``every``-th training forward (and the first).
        percentiles: in 0..100.
        unit: record only channel ``unit`` (dim 1) instead of every element.

    Evaluation forwards (``module.training`` False) are not counted, so forward ``n`` is
    training step ``n``.
    """

    def __init__(self, module: nn.Module, every: int, percentiles: Sequence[float],
                 unit: int | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not all(0 <= p <= 100 for p in percentiles):
            raise ValueError(f"percentiles must be in [0, 100], got {list(percentiles)}")
        self.every, self.unit = every, unit
        self.percentiles = [float(p) for p in percentiles]
        self.steps: list[int] = []
        self.values: list[list[float]] = []  # one row per recorded step
        self._count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    @torch.no_grad()
    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if not module.training:
            return
        self._count += 1
        if self._count != 1 and self._count % self.every:
            return
        x = args[0].detach()
        if self.unit is not None:
            x = x[:, self.unit]
        q = torch.tensor(self.percentiles, dtype=torch.float64) / 100
        self.steps.append(self._count)
        self.values.append(torch.quantile(x.reshape(-1).double(), q).tolist())

    def remove(self) -> None:
        self._handle.remove()

    def to_dict(self) -> dict:
        return {"percentiles": self.percentiles, "unit": self.unit, "steps": self.steps,
                "values": self.values}


def halve_lr_every(optimizer: Optimizer, steps: int):
    """Halve every param group's learning rate after each ``steps`` optimizer steps.

    Returns:
        The removable handle of the optimizer's step post-hook.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    count = [0]

    def hook(opt: Optimizer, args, kwargs) -> None:
        count[0] += 1
        if count[0] % steps == 0:
            for group in opt.param_groups:
                group["lr"] *= 0.5

    return optimizer.register_step_post_hook(hook)


class Instrumented(Method):
    """``inner`` with recording and an lr schedule added; every hook delegates to ``inner``.

    Args:
        inner: the method to run.
        record_every: attach a :class:`PercentileRecorder` to each built model.
        percentiles, unit: passed to the recorder.
        lr_halve_every: halve the learning rate every this many steps.

    ``recordings`` holds one recorder per run, in run order.
    """

    def __init__(self, inner: Method, record_every: int | None = None,
                 percentiles: Sequence[float] = (15, 50, 85), unit: int | None = None,
                 lr_halve_every: int | None = None) -> None:
        self.inner = inner
        for attr in ("name", "kind", "paper", "batch_dependent", "inference", "conv_bias",
                     "folds"):
            setattr(self, attr, getattr(inner, attr))
        self.record_every, self.percentiles, self.unit = record_every, percentiles, unit
        self.lr_halve_every = lr_halve_every
        self.recordings: list[PercentileRecorder] = []
        self._handles: list = []

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        return self.inner.norm(num_features, spatial_dims)

    def block(self, num_features: int, spatial_dims: int, activation: nn.Module) -> nn.Module:
        return self.inner.block(num_features, spatial_dims, activation)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = self.inner.prepare(model)
        if self.record_every:
            self.recordings.append(PercentileRecorder(
                last_activation(model), self.record_every, self.percentiles, self.unit))
        return model

    def auxiliary_loss(self, model: nn.Module):
        return self.inner.auxiliary_loss(model)

    def wrap_optimizer(self, optimizer: Optimizer, model: nn.Module) -> Optimizer:
        if self.lr_halve_every:
            self._handles.append(halve_lr_every(optimizer, self.lr_halve_every))
        return self.inner.wrap_optimizer(optimizer, model)

    def for_inference(self, model: nn.Module) -> nn.Module:
        # The trainer calls this once, at the end of each run: detach what we attached.
        for rec in self.recordings:
            rec.remove()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.inner.for_inference(model)

    def options(self) -> dict[str, object]:
        return self.inner.options()

    def __repr__(self) -> str:
        return f"Instrumented({self.inner!r})"

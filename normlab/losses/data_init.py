"""Standardized from step 0: a data-dependent initialization, then the standardization loss.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, explain why the loss trains slower than BN:
"explicit normalization techniques ensure standardized activations from the very first
training step", the loss only after several SGD steps. In the spirit of LSUV (Mishkin &
Matas, "All you need is a good init", 2015, arXiv:1511.06422) and of weight normalization's
data-dependent init (Salimans & Kingma 2016, arXiv:1602.07868, section 3), the weights are
rescaled once, on the first training batch, so that every hooked pre-activation is exactly
standardized on it; the loss then keeps it there.

Derivation. A hooked layer computes, per output channel ``c``, ``z_c = w_c . x + b_c``; on the
batch ``z_c`` has mean ``mu_c`` and biased variance ``v_c``. With ``s_c = 1/sqrt(v_c + eps)``,

    w_c <- s_c w_c,     b_c <- s_c (b_c - mu_c)     gives     z_c <- (z_c - mu_c) s_c,

mean 0 and variance ``v_c / (v_c + eps)`` (1 up to eps) on the batch. A layer changes only
the layers after it, so the layers are visited in execution order, each measured after every
earlier one is fixed: one pass makes all of them standardized at once (one truncated forward
per layer). A layer without bias gets the scale only (its mean cannot move). Only the
initial weights change: the trained network is the bare network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributed.collectives import is_distributed
from ..functional.standardization import DEFAULT_EPS, channel_moments
from ..nn_types import WEIGHT_LAYERS
from .hooks import CopiesInert
from .standardization import StandardizationLoss

__all__ = ["standardize_init_", "StandardizingInitLoss"]


class _Measured(Exception):
    """Stops a forward once the measured layer has run (the rest of it is not needed)."""


def _channel_dim(module: nn.Module, channel_dim: int | None) -> int:
    if channel_dim is not None:
        return channel_dim
    return -1 if isinstance(module, nn.Linear) else 1


def _run(model: nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        model(*args, **kwargs)
    except _Measured:
        pass


@torch.no_grad()
def standardize_init_(model: nn.Module, layers: list[tuple[str, nn.Module]], *args,
                      channel_dim: int | None = None, eps: float = DEFAULT_EPS,
                      **kwargs) -> nn.Module:
    """Rescale each layer's weight and bias so its output on ``model(*args, **kwargs)`` is
    standardized per channel (module docstring); returns ``model``.

    Args:
        model: the network; run in its current mode (training mode: as the first step sees it).
        layers: ``(name, module)`` pairs; Conv1d/2d/3d and Linear are rescaled, others
            (e.g. a :class:`~normlab.nn_types.PreActivation`) are left alone.
        *args, **kwargs: the batch, as ``model`` takes it.
        channel_dim: channel dim of the outputs; ``None``: 1 for convolutions, -1 for Linear.
        eps: added to the variance before the square root.
    """
    targets = [m for _, m in layers if isinstance(m, WEIGHT_LAYERS)]
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, a, o: order.append(m) if m not in order
                                       else None) for m in targets]
    try:
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    for module in order:
        stats: dict[str, Tensor] = {}

        def measure(m: nn.Module, a, out: Tensor) -> None:
            # measured here, before a following in-place activation can overwrite ``out``
            stats["mean"], stats["var"] = channel_moments(out, _channel_dim(m, channel_dim))
            raise _Measured

        handle = module.register_forward_hook(measure)
        try:
            _run(model, args, kwargs)
        finally:
            handle.remove()
        scale = torch.rsqrt(stats["var"] + eps)
        weight = module.weight
        weight.mul_(scale.to(weight.dtype).reshape((-1,) + (1,) * (weight.dim() - 1)))
        if module.bias is not None:
            module.bias.sub_(stats["mean"].to(weight.dtype)).mul_(scale.to(weight.dtype))
    if is_distributed():
        # each rank measured its own shard: keep the replicas identical (rank 0's init)
        for p in model.parameters():
            torch.distributed.broadcast(p.data, 0)
    return model


class StandardizingInitLoss(StandardizationLoss):
    """:class:`StandardizationLoss` that, on the model's first training forward, first
    applies :func:`standardize_init_` to that forward's batch (then computes as usual).

    Takes :class:`StandardizationLoss`'s arguments. ``initialized`` tells whether the init
    has run; it runs once per instance.
    """

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.initialized = False
        self._model = model
        self._init_handle = model.register_forward_pre_hook(
            _InitHook(self), with_kwargs=True, prepend=True)

    def remove(self) -> None:
        self._init_handle.remove()
        super().remove()

    def _initialize(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.initialized or not (module.training and torch.is_grad_enabled()):
            return None
        self.initialized = True  # before the nested forwards, which come back through here
        standardize_init_(module, self.layers, *args, channel_dim=self.channel_dim,
                          eps=self.eps, **kwargs)
        return None


class _InitHook(CopiesInert):
    """The model pre-hook that runs the init; a copy of the model gets an inert one."""

    __slots__ = ("loss",)

    def __init__(self, loss: StandardizingInitLoss) -> None:
        self.loss = loss

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        return self.loss._initialize(module, args, kwargs)

"""A standardization-loss weight that needs no tuning: a fixed share of the gradient.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, tune the loss weight per network (1.0 for small MNIST nets,
down to 1e-6 for wide ones), because the loss is a sum over channels and layers. Instead,
the weight here is set so that the auxiliary gradient is a fixed ``fraction`` of the rest of
the gradient, measured where the loss acts: at the hooked pre-activations.

For every hooked output ``z`` the backward pass sees ``g = g_down + w g_aux``: ``g_down``
from everything downstream (the task loss, and the loss terms of later layers), ``g_aux``
the gradient of the unweighted term of ``z`` itself. The term is computed on a view of ``z``,
whose gradient hook returns ``w g_aux`` alone; the hook on ``z`` returns ``g``; their
difference is ``g_down``, exactly. Over all hooked outputs of a step,

    w* = fraction * ||g_down|| / ||g_aux||      (norms over every hooked output together)

is the weight that would have made the auxiliary gradient ``fraction`` of the downstream one
at that step; the weight follows it by an exponential moving average (``momentum``), clipped
to ``[0, max_weight]`` (a loss at its minimum has ``g_aux = 0``: the weight then stays). The
first step uses ``weight`` (the paper's 1.0 by default). One extra elementwise pass per
hooked output in the backward; no second backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .standardization import StandardizationLoss

__all__ = ["AdaptiveStandardizationLoss"]


class AdaptiveStandardizationLoss(StandardizationLoss):
    """:class:`StandardizationLoss` whose weight keeps the auxiliary gradient ``fraction`` of
    the downstream gradient at the hooked outputs (module docstring).

    Args:
        model, weight, layers, eps, channel_dim: as :class:`StandardizationLoss`; ``weight``
            is the first step's weight (> 0).
        fraction: target ``||w g_aux|| / ||g_down||`` (keyword-only, > 0).
        momentum: weight of the newest step in the moving average, in ``(0, 1]``.
        max_weight: upper clip of the weight.

    Attributes:
        weight: the current weight (read it to log the schedule).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0, layers=None, eps: float = 1e-5,
                 channel_dim: int | None = None, *, fraction: float = 0.5,
                 momentum: float = 0.1, max_weight: float = 1e3) -> None:
        if not weight > 0:
            raise ValueError(f"the first step's weight must be > 0, got {weight}")
        if not fraction > 0:
            raise ValueError(f"fraction must be > 0, got {fraction}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        super().__init__(model, weight=weight, layers=layers, eps=eps, channel_dim=channel_dim)
        self.fraction = fraction
        self.momentum = momentum
        self.max_weight = max_weight
        self._aux_sq = 0.0   # sum ||w g_aux||^2 of the last backward
        self._down_sq = 0.0  # sum ||g_down||^2 of the last backward
        self._grads: dict[int, Tensor] = {}

    def layer_loss(self, output: Tensor, channel_dim: int) -> Tensor:
        if not output.requires_grad:
            return super().layer_loss(output, channel_dim)
        alias = output.view_as(output)
        key = id(alias)

        def on_aux(grad: Tensor) -> None:
            self._grads[key] = grad

        def on_total(grad: Tensor) -> None:
            aux = self._grads.pop(key, None)
            if aux is None:
                return
            self._aux_sq += float(aux.double().square().sum())
            self._down_sq += float((grad - aux).double().square().sum())

        alias.register_hook(on_aux)
        output.register_hook(on_total)
        return super().layer_loss(alias, channel_dim)

    def _update_weight(self) -> None:
        if self._aux_sq > 0.0:
            unit = math.sqrt(self._aux_sq) / self.weight
            target = self.fraction * math.sqrt(self._down_sq) / unit
            new = (1.0 - self.momentum) * self.weight + self.momentum * target
            self.weight = float(min(max(new, 0.0), self.max_weight)) or self.weight
        self._aux_sq = self._down_sq = 0.0
        self._grads.clear()

    def __call__(self) -> Tensor:
        self._update_weight()  # from the previous step's backward
        return super().__call__()

"""Standardization losses with other targets: decorrelated groups, Laplace, Bernoulli activity.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, propose these targets as extensions. Each is
:class:`~normlab.losses.StandardizationLoss` (the same hooks, layer selection, weighting and
lifecycle) with its per-layer term replaced; the terms and their derivations are in
:mod:`normlab.functional.gaussian_kl` and :mod:`normlab.functional.sparse_kl`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..functional.gaussian_kl import channel_groups, grouped_gaussian_kl
from ..functional.sparse_kl import LAPLACE_UNIT_SCALE, bernoulli_activity_kl, laplace_kl
from .standardization import StandardizationLoss

__all__ = ["DecorrelationLoss", "LaplaceLoss", "BernoulliActivityLoss"]


class DecorrelationLoss(StandardizationLoss):
    """``KL(N(mu, Sigma) || N(0, I))`` on groups of ``group_size`` channels of each hooked
    output (:func:`~normlab.functional.gaussian_kl.grouped_gaussian_kl`).

    Args:
        model, weight, layers, eps, channel_dim: as :class:`StandardizationLoss`.
        group_size: channels per group (keyword-only).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0, layers=None, eps: float = 1e-5,
                 channel_dim: int | None = None, *, group_size: int = 16) -> None:
        channel_groups(1, group_size)  # validates group_size before any hook is attached
        super().__init__(model, weight=weight, layers=layers, eps=eps, channel_dim=channel_dim)
        self.group_size = group_size

    def layer_loss(self, output: Tensor, channel_dim: int) -> Tensor:
        return grouped_gaussian_kl(output, channel_dim, self.group_size, self.eps)


class LaplaceLoss(StandardizationLoss):
    """``KL(Laplace fit || Laplace(0, scale))`` per channel of each hooked output
    (:func:`~normlab.functional.sparse_kl.laplace_kl`).

    Args:
        model, weight, layers, eps, channel_dim: as :class:`StandardizationLoss`.
        scale: the target Laplace's scale (keyword-only; default: unit variance).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0, layers=None, eps: float = 1e-5,
                 channel_dim: int | None = None, *, scale: float = LAPLACE_UNIT_SCALE) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        super().__init__(model, weight=weight, layers=layers, eps=eps, channel_dim=channel_dim)
        self.scale = scale

    def layer_loss(self, output: Tensor, channel_dim: int) -> Tensor:
        return laplace_kl(output, channel_dim, self.scale, self.eps)


class BernoulliActivityLoss(StandardizationLoss):
    """``KL(Bern(P(z > 0)) || Bern(rho))`` plus the unit-variance term per channel of each
    hooked pre-activation (:func:`~normlab.functional.sparse_kl.bernoulli_activity_kl`).

    Args:
        model, weight, layers, eps, channel_dim: as :class:`StandardizationLoss`.
        rho: target probability that a unit is active (keyword-only).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0, layers=None, eps: float = 1e-5,
                 channel_dim: int | None = None, *, rho: float = 0.25) -> None:
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        super().__init__(model, weight=weight, layers=layers, eps=eps, channel_dim=channel_dim)
        self.rho = rho

    def layer_loss(self, output: Tensor, channel_dim: int) -> Tensor:
        return bernoulli_activity_kl(output, channel_dim, self.rho, self.eps)

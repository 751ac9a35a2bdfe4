"""``std_loss_decorrelation``: a decorrelating standardization loss on channel groups.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, propose a decorrelation target. Per group of
``group_size`` channels of every hooked pre-activation, the term is the KL divergence of the
fitted ``N(mu, Sigma)`` from ``N(0, I)``, ``0.5 (tr Sigma + mu^T mu - log det Sigma - G)``:
the paper's per-channel loss plus ``0.5 (sum_c log Sigma_cc - log det Sigma) >= 0``, which is
zero only for uncorrelated channels (derivation in :mod:`normlab.functional.gaussian_kl`).
Groups keep it cheap (``O(C G)`` per value instead of ``O(C^2)``), as decorrelated BN
(Huang et al. 2018, arXiv:1804.08450) whitens groups. Loss only: the deployed model is bare.
"""

from __future__ import annotations

from torch import nn

from ..functional.gaussian_kl import channel_groups
from ..losses.targets import DecorrelationLoss
from . import METHODS
from .base import Method


@METHODS.register("std_loss_decorrelation")
class StdLossDecorrelationMethod(Method):
    """The full-covariance Gaussian KL on channel groups of every hooked pre-activation.

    Args:
        weight: the loss weight.
        group_size: channels per group (the last group takes the remainder).
        eps: added to each covariance diagonal.
    """

    kind = "loss"
    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925 (section 5's decorrelation target)"
    batch_dependent = False
    inference = "none (loss dropped)"

    def __init__(self, weight: float = 1.0, group_size: int = 8, eps: float = 1e-5) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        channel_groups(1, group_size)  # one clear error for a bad group size
        self.weight = weight
        self.group_size = group_size
        self.eps = eps

    def auxiliary_loss(self, model: nn.Module) -> DecorrelationLoss:
        return DecorrelationLoss(model, weight=self.weight, eps=self.eps,
                                 group_size=self.group_size)

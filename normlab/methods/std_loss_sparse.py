"""``std_loss_laplace`` and ``std_loss_bernoulli``: sparse targets for the standardization loss.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, suggest sparse targets — a Laplace, or a Bernoulli
on post-activations — for representational ability and unsupervised learning. Derivations in
:mod:`normlab.functional.sparse_kl`:

- ``std_loss_laplace``: per channel, ``KL(Laplace(m, s) || Laplace(0, b))`` with ``m`` the
  mean and ``s`` the mean absolute deviation, ``log(b/s) + |m|/b + (s/b) exp(-|m|/s) - 1``.
  It controls the mean absolute deviation rather than the variance, so heavy-tailed, peaked
  (sparse) channels are not pulled back to Gaussian tails: meant for layers whose codes are
  read for their sparsity (features for unsupervised learning, dictionary-like codes).
- ``std_loss_bernoulli``: per channel, ``KL(Bern(Phi(mu/sigma)) || Bern(rho))`` on the
  probability that the ReLU after the pre-activation is active, plus the paper's unit-
  variance term: a fraction ``rho`` of units active per example, as in sparse autoencoders.

Loss only: the deployed model is the bare network.
"""

from __future__ import annotations

from torch import nn

from ..functional.sparse_kl import LAPLACE_UNIT_SCALE
from ..losses.targets import BernoulliActivityLoss, LaplaceLoss
from . import METHODS
from .base import Method


class _SparseBase(Method):
    kind = "loss"
    batch_dependent = False
    inference = "none (loss dropped)"


@METHODS.register("std_loss_laplace")
class StdLossLaplaceMethod(_SparseBase):
    """KL of each channel's Laplace fit from ``Laplace(0, scale)``.

    Args:
        weight: the loss weight.
        scale: the target's scale (default: the unit-variance Laplace, ``1/sqrt(2)``).
        eps: added to the fitted scale.
    """

    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925 (section 5's Laplace target)"

    def __init__(self, weight: float = 1.0, scale: float = LAPLACE_UNIT_SCALE,
                 eps: float = 1e-5) -> None:
        if weight < 0 or not scale > 0:
            raise ValueError(f"need weight >= 0 and scale > 0, got {weight}, {scale}")
        self.weight = weight
        self.scale = scale
        self.eps = eps

    def auxiliary_loss(self, model: nn.Module) -> LaplaceLoss:
        return LaplaceLoss(model, weight=self.weight, eps=self.eps, scale=self.scale)


@METHODS.register("std_loss_bernoulli")
class StdLossBernoulliMethod(_SparseBase):
    """KL of each unit's activity ``Bern(P(z > 0))`` from ``Bern(rho)``, plus unit variance.

    Args:
        weight: the loss weight.
        rho: the target fraction of active units, in ``(0, 1)``.
        eps: inside the variance's log and square root.
    """

    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925 (section 5's Bernoulli target)"

    def __init__(self, weight: float = 1.0, rho: float = 0.25, eps: float = 1e-5) -> None:
        if weight < 0 or not 0.0 < rho < 1.0:
            raise ValueError(f"need weight >= 0 and 0 < rho < 1, got {weight}, {rho}")
        self.weight = weight
        self.rho = rho
        self.eps = eps

    def auxiliary_loss(self, model: nn.Module) -> BernoulliActivityLoss:
        return BernoulliActivityLoss(model, weight=self.weight, eps=self.eps, rho=self.rho)

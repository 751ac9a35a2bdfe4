"""``std_loss_adaptive``: the standardization loss with a weight that needs no tuning.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, tune the weight per network (1.0 down to 1e-6) because the
loss sums over channels and layers. Here the weight follows, by a moving average, the value
that makes the auxiliary gradient at the hooked pre-activations ``fraction`` of the gradient
arriving there from downstream, ``w* = fraction ||g_down|| / ||g_aux||`` (derivation and the
exact split of the two gradients in :mod:`normlab.losses.adaptive`). The same ``fraction``
serves every width and depth. Loss only: the deployed model is the bare network.
"""

from __future__ import annotations

from torch import nn

from ..losses.adaptive import AdaptiveStandardizationLoss
from . import METHODS
from .base import Method


@METHODS.register("std_loss_adaptive")
class StdLossAdaptiveMethod(Method):
    """The standardization loss with a gradient-share weight.

    Args:
        fraction: target ratio of the auxiliary to the downstream gradient norm.
        weight: the first step's weight (the paper's 1.0).
        momentum: moving-average weight of each step's estimate.
        eps: inside the loss's log.
    """

    kind = "loss"
    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925 (weight set by gradient share)"
    batch_dependent = False
    inference = "none (loss dropped)"

    def __init__(self, fraction: float = 0.5, weight: float = 1.0, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        if not fraction > 0 or not weight > 0 or not 0 < momentum <= 1:
            raise ValueError(f"need fraction > 0, weight > 0, 0 < momentum <= 1; got "
                             f"{fraction}, {weight}, {momentum}")
        self.fraction = fraction
        self.weight = weight
        self.momentum = momentum
        self.eps = eps

    def auxiliary_loss(self, model: nn.Module) -> AdaptiveStandardizationLoss:
        return AdaptiveStandardizationLoss(model, weight=self.weight, eps=self.eps,
                                           fraction=self.fraction, momentum=self.momentum)

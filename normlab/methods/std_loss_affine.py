"""``std_loss_affine``: the standardization loss with a learned scale and shift, folded away.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, train their PointNet with a learned per-layer
scale and shift after the loss-standardized pre-activations. Here every weight layer's output
``z`` gets the loss (pushing ``z`` to N(0, 1) per channel) and the activation sees
``gamma * z + beta`` (:class:`~normlab.layers.channel_affine.ChannelAffine`), so the network
can undo the standardization where the task needs it, as BN's affine map can. The map is
per-channel affine, hence ``folds = True``: deployment folds it into the weight layer
(``W' = gamma W``, ``b' = gamma b + beta``) and the deployed model is exactly the bare one.
"""

from __future__ import annotations

from torch import nn

from ..layers.channel_affine import ChannelAffine
from ..losses.standardization import StandardizationLoss
from . import METHODS
from .base import Method


@METHODS.register("std_loss_affine")
class StdLossAffineMethod(Method):
    """Per-channel learned scale and shift after each weight layer + the standardization
    loss on the weight layer's output; the affine folds into the weights at deployment.

    Args:
        weight: the loss weight.
        eps: inside the loss's log.
    """

    kind = "loss"
    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925 (PointNet's scale and shift)"
    batch_dependent = False
    inference = "folded into the weights"
    folds = True

    def __init__(self, weight: float = 1.0, eps: float = 1e-5) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight
        self.eps = eps

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return ChannelAffine(num_features, spatial_dims)

    def auxiliary_loss(self, model: nn.Module) -> StandardizationLoss:
        # the default selection hooks the weight layers: the loss sees z, not gamma z + beta
        return StandardizationLoss(model, weight=self.weight, eps=self.eps)

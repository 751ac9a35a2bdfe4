"""``std_loss_init``: standardized from step 0 — a data-dependent init, then the loss.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, attribute BN's faster start to its activations being
standardized from the first step. This method rescales every hooked layer's weights once, on
the first training batch, so that each hooked pre-activation has mean 0 and variance 1 on it
(LSUV-like: Mishkin & Matas 2015, arXiv:1511.06422; Salimans & Kingma 2016,
arXiv:1602.07868, section 3), and adds the paper's loss to keep it so. The derivation is in
:mod:`normlab.losses.data_init`: ``w_c <- w_c / sigma_c``, ``b_c <- (b_c - mu_c) / sigma_c``,
layer by layer in execution order, which standardizes all of them at once. Only the initial
weights change, so the deployed model is the bare network.
"""

from __future__ import annotations

from torch import nn

from ..losses.data_init import StandardizingInitLoss
from . import METHODS
from .base import Method


@METHODS.register("std_loss_init")
class StdLossInitMethod(Method):
    """Data-dependent standardizing init on the first training batch + the standardization loss.

    Args:
        weight: the loss weight (0: the init alone).
        eps: inside the loss's log and the init's square root.
    """

    kind = "loss"
    paper = ("Collins, Ballé & Shlens 2019, arXiv:1903.00925; init as Mishkin & Matas 2015, "
             "arXiv:1511.06422")
    batch_dependent = False
    inference = "none (init and loss only change training)"

    def __init__(self, weight: float = 1.0, eps: float = 1e-5) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight
        self.eps = eps

    def auxiliary_loss(self, model: nn.Module) -> StandardizingInitLoss:
        return StandardizingInitLoss(model, weight=self.weight, eps=self.eps)

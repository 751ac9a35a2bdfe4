"""Module types normlab's layers, losses, optimizers and surgery agree on.

Every normalization normlab implements acts on the output channels of a weight layer (Ioffe &
Szegedy, "Batch Normalization", 2015, arXiv:1502.03167; Collins, Ballé & Shlens, "Accelerating
Training of Deep Neural Networks with a Standardization Loss", 2019, arXiv:1903.00925): the
layers whose weight holds those channels along dim 0 are defined here, once.
"""

from __future__ import annotations

from torch import nn

__all__ = ["WEIGHT_LAYERS"]

#: weight layers with output channels along dim 0 of ``weight``: what the standardization
#: loss hooks, weight reparametrizations and BNP/AGC act on, and BN is folded into.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

"""Module types normlab's layers, losses, optimizers and surgery agree on.

Every normalization normlab implements acts on the output channels of a weight layer (Ioffe &
Szegedy, "Batch Normalization", 2015, arXiv:1502.03167; Collins, Ballé & Shlens, "Accelerating
Training of Deep Neural Networks with a Standardization Loss", 2019, arXiv:1903.00925): the
layers whose weight holds those channels along dim 0 are defined here, once.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["WEIGHT_LAYERS", "PreActivation"]

#: weight layers with output channels along dim 0 of ``weight``: what the standardization
#: loss hooks, weight reparametrizations and BNP/AGC act on, and BN is folded into.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PreActivation(nn.Identity):
    """An identity whose output is a pre-activation: the standardization loss hooks it.

    Modules that compute a pre-activation without a weight layer of their own (the gate
    pre-activations of a recurrent cell, a functional projection) pass it through one, so
    the loss's default layer selection finds it like a Conv or Linear output.

    Args:
        channel_dim: the channel dimension of the tensor passed through (-1 for ``(N, T, C)``
            or ``(M, C)`` rows).
    """

    def __init__(self, channel_dim: int = -1) -> None:
        super().__init__()
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}"

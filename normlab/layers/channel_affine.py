"""A learned per-channel scale and shift that folds into the preceding weight layer.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925: their PointNet trained with the standardization
loss on the weight layers' outputs benefited from a learned scale and shift after them (the
loss standardizes ``z``; the network uses ``gamma * z + beta``, as after BN). The map is
per-channel affine in training and at eval, so :func:`normlab.surgery.fold_batch_norm` folds
it into the weight layer before it (``W' = gamma W``, ``b' = gamma b + beta``) and the
deployed network is the bare one.
"""

from __future__ import annotations

from torch import Tensor

from .base import NormLayer, check_channels, init_affine, reset_affine

__all__ = ["ChannelAffine"]


class ChannelAffine(NormLayer):
    """``y = weight * x + bias`` per channel (dim 1); starts as the identity.

    Args:
        num_features: channels C.
        spatial_dims: spatial dims of the input (recorded for surgery), or ``None``.

    Shape:
        Input ``(N, C, *)``; output the same.
    """

    def __init__(self, num_features: int, spatial_dims: int | None = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) \
                or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.spatial_dims = spatial_dims
        init_affine(self, num_features, True, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        check_channels(x, self.num_features, type(self).__name__)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """``(weight, bias)``: the map is the same in training and at eval."""
        return self.weight.detach(), self.bias.detach()

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial_dims={self.spatial_dims}"

"""``pointnet`` / ``pointnet_scale_shift``: vanilla PointNet for point-cloud classification.

Qi, Su, Mo & Guibas, "PointNet: Deep Learning on Point Sets for 3D Classification and
Segmentation", 2017, arXiv:1612.00593 — the vanilla version WITHOUT the input and feature
transform nets (T-Nets): a shared per-point MLP (64, 64, 64, 128, 1024) as 1x1 ``Conv1d``
layers (so methods see ``spatial_dims=1``), max-pooling over points, then a (512, 256) MLP
classifier; no dropout. Inputs ``(N, 3, P)``. ``pointnet_scale_shift`` adds a learned
per-channel scale and shift (:class:`ScaleShift`) after every weight layer but the logits, as
the standardization-loss paper's appendix A.3 does for its PointNet with the standardization
loss (the loss sees the weight layer's output, the scale and shift come after it).

Every weight layer is followed by ``method.block(...)`` and uses ``bias=method.conv_bias``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...methods import Method
from .base import MODELS

__all__ = ["ScaleShift", "pointnet", "pointnet_scale_shift"]


class ScaleShift(nn.Module):
    """A learned per-channel affine map ``y = gamma * x + beta`` (channels in dim 1).

    Args:
        num_features: channels C.

    Shape:
        Input ``(N, C, *)``; output the same.
    """

    def __init__(self, num_features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class _MaxPool(nn.Module):
    """Max over the points axis: ``(N, C, P) -> (N, C)`` (PointNet's symmetric function)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=2)


def _pointnet(method: Method, in_shape: Sequence[int], num_classes: int,
              point_mlp: Sequence[int], head: Sequence[int], scale_shift: bool) -> nn.Module:
    if len(in_shape) != 2 or in_shape[0] != 3:
        raise ValueError(f"pointnet needs (3, P) point clouds, got in_shape={tuple(in_shape)}")
    bias = method.conv_bias and not scale_shift  # with scale_shift, ScaleShift has the shift

    def after(width: int, spatial_dims: int) -> list[nn.Module]:
        extra = [ScaleShift(width)] if scale_shift else []
        return extra + [method.block(width, spatial_dims, nn.ReLU())]

    channels = 3
    layers: list[nn.Module] = []
    for width in point_mlp:
        layers += [nn.Conv1d(channels, width, 1, bias=bias), *after(width, 1)]
        channels = width
    layers.append(_MaxPool())
    for width in head:
        layers += [nn.Linear(channels, width, bias=bias), *after(width, 0)]
        channels = width
    layers.append(nn.Linear(channels, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("pointnet")
def pointnet(method: Method, in_shape: Sequence[int], num_classes: int,
             point_mlp: Sequence[int] = (64, 64, 64, 128, 1024),
             head: Sequence[int] = (512, 256)) -> nn.Module:
    """Vanilla PointNet (no T-Nets): shared per-point MLP, max-pool, MLP classifier."""
    return _pointnet(method, in_shape, num_classes, point_mlp, head, scale_shift=False)


@MODELS.register("pointnet_scale_shift")
def pointnet_scale_shift(method: Method, in_shape: Sequence[int], num_classes: int,
                         point_mlp: Sequence[int] = (64, 64, 64, 128, 1024),
                         head: Sequence[int] = (512, 256)) -> nn.Module:
    """PointNet with a learned per-channel scale and shift after each hidden weight layer."""
    return _pointnet(method, in_shape, num_classes, point_mlp, head, scale_shift=True)

"""More networks for ``normlab reproduce``: MobileNet-style CNN, PointNet, ResNet-20.

- ``mobilenet``: a small MobileNet-v1-style CNN. Howard, Zhu, Chen, Kalenichenko, Wang,
  Weyand, Andreetto & Adam, "MobileNets: Efficient Convolutional Neural Networks for Mobile
  Vision Applications", 2017, arXiv:1704.04861 — a 3x3 stem convolution, then depthwise-
  separable blocks (3x3 depthwise convolution, block, 1x1 pointwise convolution, block), ReLU6,
  global average pooling and a linear classifier. Sized for 28x28 Fashion-MNIST (the
  standardization-loss paper's batch-size experiment, arXiv:1903.00925 section 4.4, used the
  full MobileNet on ImageNet).
- ``pointnet`` / ``pointnet_scale_shift``: Qi, Su, Mo & Guibas, "PointNet: Deep Learning on
  Point Sets for 3D Classification and Segmentation", 2017, arXiv:1612.00593 — the vanilla
  version WITHOUT the input and feature transform nets (T-Nets): a shared per-point MLP
  (64, 64, 64, 128, 1024) as 1x1 ``Conv1d`` layers (so methods see ``spatial_dims=1``),
  max-pooling over points, then a (512, 256) MLP classifier; no dropout. Inputs ``(N, 3, P)``.
  ``pointnet_scale_shift`` adds a learned per-channel scale and shift (:class:`ScaleShift`)
  after every weight layer but the logits, as the standardization-loss paper's appendix A.3
  does for its PointNet with the standardization loss (the loss sees the weight layer's
  output, the scale and shift come after it).
- ``resnet20``: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", 2016,
  arXiv:1512.03385, section 4.2: the CIFAR-10 ResNet with 3 stages of 3 basic blocks (16, 32,
  64 channels) and the parameter-free "option A" shortcut (stride-2 subsampling and zero
  channel padding). The second block of each residual unit gets an identity activation; the
  ReLU follows the addition (for ``frn`` the TLU, which replaces the activation, sits before
  the addition).

Every weight layer is followed by ``method.block(...)`` and uses ``bias=method.conv_bias``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..methods import Method
from .models import MODELS

__all__ = ["ScaleShift", "mobilenet", "pointnet", "pointnet_scale_shift", "resnet20"]


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


# --------------------------------------------------------------------------- MobileNet

@MODELS.register("mobilenet")
def mobilenet(method: Method, in_shape: Sequence[int], num_classes: int, stem: int = 16,
              blocks: Sequence[tuple[int, int]] = ((32, 2), (64, 2), (64, 1), (128, 2))
              ) -> nn.Module:
    """Small MobileNet-v1: 3x3 stem, depthwise-separable ``(width, stride)`` blocks, ReLU6."""
    if len(in_shape) != 3:
        raise ValueError(f"mobilenet needs (C, H, W) inputs, got in_shape={tuple(in_shape)}")
    channels = in_shape[0]
    bias = method.conv_bias
    layers: list[nn.Module] = [nn.Conv2d(channels, stem, 3, 1, 1, bias=bias),
                               method.block(stem, 2, nn.ReLU6())]
    channels = stem
    for width, stride in blocks:
        layers += [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=bias),
                   method.block(channels, 2, nn.ReLU6()),
                   nn.Conv2d(channels, width, 1, bias=bias),
                   method.block(width, 2, nn.ReLU6())]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- PointNet

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


# --------------------------------------------------------------------------- ResNet-20

class _BasicBlock(nn.Module):
    """``relu(block2(conv2(block1(conv1(x)))) + shortcut(x))`` with the option-A shortcut."""

    def __init__(self, method: Method, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        bias = method.conv_bias
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.block1 = method.block(out_ch, 2, nn.ReLU())
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.block2 = method.block(out_ch, 2, nn.Identity())
        self.stride, self.pad = stride, out_ch - in_ch
        self.relu = nn.ReLU()

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        # Option A: the extra channels are zeros, so the shortcut has no parameters.
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x: Tensor) -> Tensor:
        y = self.block2(self.conv2(self.block1(self.conv1(x))))
        return self.relu(y + self.shortcut(x))


@MODELS.register("resnet20")
def resnet20(method: Method, in_shape: Sequence[int], num_classes: int,
             widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 3) -> nn.Module:
    """ResNet-20 for 32x32 CIFAR-10 (6n+2 layers with n = ``blocks_per_stage``)."""
    if len(in_shape) != 3:
        raise ValueError(f"resnet20 needs (C, H, W) inputs, got in_shape={tuple(in_shape)}")
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=method.conv_bias),
                               method.block(widths[0], 2, nn.ReLU())]
    channels = widths[0]
    for stage, width in enumerate(widths):
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(_BasicBlock(method, channels, width, stride))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)

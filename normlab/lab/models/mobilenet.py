"""``mobilenet``: a small MobileNet-v1-style CNN.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto & Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", 2017, arXiv:1704.04861 — a 3x3
stem convolution, then depthwise-separable blocks (3x3 depthwise convolution, block, 1x1
pointwise convolution, block), ReLU6, global average pooling and a linear classifier. Sized
for 28x28 Fashion-MNIST (the standardization-loss paper's batch-size experiment,
arXiv:1903.00925 section 4.4, used the full MobileNet on ImageNet).

Every weight layer is followed by ``method.block(...)`` and uses ``bias=method.conv_bias``.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ...methods import Method
from .base import MODELS

__all__ = ["mobilenet"]


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

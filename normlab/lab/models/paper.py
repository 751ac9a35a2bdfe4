"""The networks of the seed papers' experiments, each built for a normalization method.

- ``cnn``: Collins, Ballé & Shlens 2019 (arXiv:1903.00925), appendix A.1: three 5x5 stride-2
  convolutions with 32, 16 and 8 filters, ReLU, then a linear classifier. Padding 2 ("same"
  for a 5x5 kernel; the paper does not say), so 28x28 inputs give 14, 7 and 4.
- ``mlp``: the same paper's appendix A.2: three hidden layers of 100 units, ReLU.
- ``mlp_sigmoid``: Ioffe & Szegedy 2015 (arXiv:1502.03167), section 4.1: 3x100 sigmoid MLP.

Every weight layer is followed by ``method.block(...)`` and uses ``bias=method.conv_bias``
(:mod:`.base`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from ...methods import Method
from .base import MODELS

__all__ = ["cnn", "mlp", "mlp_sigmoid"]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@MODELS.register("cnn")
def cnn(method: Method, in_shape: Sequence[int], num_classes: int,
        widths: Sequence[int] = (32, 16, 8), kernel: int = 5, stride: int = 2) -> nn.Module:
    """The paper's CNN: ``len(widths)`` convolutions, each followed by ``method.block``."""
    if len(in_shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) inputs, got in_shape={tuple(in_shape)}")
    channels, h, w = in_shape
    layers: list[nn.Module] = []
    pad = kernel // 2
    for width in widths:
        layers.append(nn.Conv2d(channels, width, kernel, stride, pad, bias=method.conv_bias))
        layers.append(method.block(width, 2, nn.ReLU()))
        channels, h, w = width, _conv_out(h, kernel, stride, pad), _conv_out(w, kernel, stride, pad)
    layers += [nn.Flatten(), nn.Linear(channels * h * w, num_classes)]
    return nn.Sequential(*layers)


def _mlp(method: Method, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int],
         activation: Callable[[], nn.Module]) -> nn.Module:
    features = math.prod(in_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers.append(nn.Linear(features, width, bias=method.conv_bias))
        layers.append(method.block(width, 0, activation()))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("mlp")
def mlp(method: Method, in_shape: Sequence[int], num_classes: int,
        hidden: Sequence[int] = (100, 100, 100)) -> nn.Module:
    """The paper's MLP: three hidden ReLU layers of 100 units."""
    return _mlp(method, in_shape, num_classes, hidden, nn.ReLU)


@MODELS.register("mlp_sigmoid")
def mlp_sigmoid(method: Method, in_shape: Sequence[int], num_classes: int,
                hidden: Sequence[int] = (100, 100, 100)) -> nn.Module:
    """The BN paper's MNIST network: three hidden sigmoid layers of 100 units."""
    return _mlp(method, in_shape, num_classes, hidden, nn.Sigmoid)

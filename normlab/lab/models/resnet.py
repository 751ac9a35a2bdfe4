"""``resnet20``: the CIFAR-10 ResNet.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", 2016, arXiv:1512.03385,
section 4.2: 3 stages of 3 basic blocks (16, 32, 64 channels) and the parameter-free
"option A" shortcut (stride-2 subsampling and zero channel padding). The second block of each
residual unit gets an identity activation; the ReLU follows the addition (for ``frn`` the
TLU, which replaces the activation, sits before the addition).

Every weight layer is followed by ``method.block(...)`` and uses ``bias=method.conv_bias``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...methods import Method
from .base import MODELS

__all__ = ["resnet20"]


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

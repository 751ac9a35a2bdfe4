"""A reduced EfficientNet written the way ``efficientnet_pytorch`` (lukemelas) and timm
write it.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019,
arXiv:1905.11946 (MBConv from Sandler et al. 2018, arXiv:1801.04381; squeeze-excite from Hu,
Shen & Sun 2017, arXiv:1709.01507). Structure follows ``efficientnet_pytorch.model``:
``Conv2dStaticSamePadding`` is an ``nn.Conv2d`` subclass whose ``forward`` pads with
``F.pad`` and then calls ``F.conv2d`` (TensorFlow "SAME" padding; the layer's own
``padding`` stays 0), BN with TensorFlow's momentum/eps, ``nn.SiLU(inplace=True)`` in the
blocks, a functional squeeze-excite (``F.adaptive_avg_pool2d`` -> ``_se_reduce`` -> swish
-> ``_se_expand`` -> ``torch.sigmoid(gate) * x``), a projection conv + BN without
activation, ``x = x + inputs`` where the shape allows, and ``MemoryEfficientSwish`` (a
custom ``autograd.Function``) in the head. No drop-connect, so a step is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_MOMENTUM = 1 - 0.99  # TensorFlow's decay 0.99 in torch's convention
BN_EPS = 1e-3


class Conv2dStaticSamePadding(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding applied in ``forward`` (not in the layer)."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((ow - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SwishImplementation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i: Tensor) -> Tensor:
        ctx.save_for_backward(i)
        return i * torch.sigmoid(i)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (i,) = ctx.saved_tensors
        s = torch.sigmoid(i)
        return grad_output * (s * (1 + i * (1 - s)))


class MemoryEfficientSwish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return SwishImplementation.apply(x)


class MBConvBlock(nn.Module):
    def __init__(self, inp: int, oup: int, expand_ratio: int, kernel_size: int, stride: int,
                 se_ratio: float = 0.25) -> None:
        super().__init__()
        self.id_skip = stride == 1 and inp == oup
        self.expand_ratio = expand_ratio
        hidden = inp * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = Conv2dStaticSamePadding(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._depthwise_conv = Conv2dStaticSamePadding(hidden, hidden, kernel_size, stride=stride,
                                                       groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM, eps=BN_EPS)
        squeezed = max(1, int(inp * se_ratio))
        self._se_reduce = Conv2dStaticSamePadding(hidden, squeezed, 1)
        self._se_expand = Conv2dStaticSamePadding(squeezed, hidden, 1)
        self._project_conv = Conv2dStaticSamePadding(hidden, oup, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(oup, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._swish = nn.SiLU(inplace=True)

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x_squeezed = F.adaptive_avg_pool2d(x, 1)
        x_squeezed = self._se_expand(self._swish(self._se_reduce(x_squeezed)))
        x = torch.sigmoid(x_squeezed) * x
        x = self._bn2(self._project_conv(x))
        if self.id_skip:
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    # expand_ratio, out width, kernel, stride
    BLOCKS = ((1, 8, 3, 1), (4, 12, 3, 2), (4, 12, 3, 1), (4, 16, 5, 2))

    def __init__(self, num_classes: int = 10, stem: int = 8, head: int = 48) -> None:
        super().__init__()
        self._conv_stem = Conv2dStaticSamePadding(3, stem, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM, eps=BN_EPS)
        blocks, width = [], stem
        for t, c, k, s in self.BLOCKS:
            blocks.append(MBConvBlock(width, c, t, k, s))
            width = c
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dStaticSamePadding(width, head, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(head, num_classes)
        self._swish = MemoryEfficientSwish()
        self._stem_act = nn.SiLU(inplace=True)

    def extract_features(self, inputs: Tensor) -> Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(inputs)))
        for block in self._blocks:
            x = block(x)
        return self._swish(self._bn1(self._conv_head(x)))

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.extract_features(inputs)
        x = self._avg_pooling(x).flatten(start_dim=1)
        return self._fc(self._dropout(x))


def efficientnet_style(num_classes: int = 10) -> EfficientNet:
    return EfficientNet(num_classes=num_classes)

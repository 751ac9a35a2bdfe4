"""A reduced MobileNetV2 written the way torchvision writes it.

Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", 2018, arXiv:1801.04381. Structure follows ``torchvision.models.mobilenetv2``:
``ConvBNActivation`` is an ``nn.Sequential`` of Conv2d (no bias), BatchNorm2d and
``nn.ReLU6(inplace=True)``; ``InvertedResidual`` expands with a 1x1 ConvBNReLU, filters with
a depthwise 3x3 (``groups=channels``), projects with a linear bottleneck (conv1x1 + BN, no
activation) held in ``self.conv``, and adds the input back when stride is 1 and the width
is kept (``self.use_res_connect``).
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNActivation(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_planes


ConvBNReLU = ConvBNActivation  # torchvision keeps this alias


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend([
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (width), n (repeats), s (stride of the first repeat)
    SETTING = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2))

    def __init__(self, num_classes: int = 10, input_channel: int = 8,
                 last_channel: int = 64) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        features.append(ConvBNReLU(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # torchvision pools functionally, not with a module
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).reshape(x.shape[0], -1)
        return self.classifier(x)


def mobilenet_v2_style(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes)

"""The standardization loss in two lines on a torchvision-style ResNet (in-place ReLU,
``out += identity``, a strided downsample), without its BatchNorm layers.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925. He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", 2015, arXiv:1512.03385 (the block, as ``torchvision.models.resnet`` writes it).

Usage: ``python docs/examples/two_lines_resnet.py`` (random data, a few SGD steps).
"""

import torch
import torch.nn.functional as F
from torch import nn

import normlab


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = None if stride == 1 and inplanes == planes else nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride, bias=False))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(32, num_classes)  # registered first; it still runs last
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main(steps: int = 5) -> dict[str, float]:
    torch.manual_seed(0)
    model = ResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    std = normlab.StandardizationLoss(model, weight=1.0, reduction="mean")  # line 1
    for _ in range(steps):
        x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
        loss = F.cross_entropy(model(x), y) + std()                      # line 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print([name for name, _ in std.layers])  # every conv; not fc, the logit layer
    print(std.values())                      # per-layer values of the last step
    return std.values()


if __name__ == "__main__":
    main()

"""A user's CNN with BatchNorm, for ``normlab compare --model examples/cnn_bn.py:cnn``."""

from torch import nn


def cnn(num_classes: int = 10) -> nn.Module:
    """Two conv-BN-ReLU stages with max pooling, then a linear classifier (1x28x28 input)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )

"""A zoo of small models written the way torchvision, timm and model-zoo packages write them.

Tests parametrize over :data:`ZOO` to check that normlab works on real-world code: in-place
activations right after convs, ``out += identity``, BN inside blocks, ``self.downsample``
submodules, depthwise convs, squeeze-excite, padding in ``forward``, LayerNorm on (N, T, C)
tokens, ``nn.MultiheadAttention``, LSTMs/GRUs (also packed), ConvTranspose2d with skip
concatenation. Every model is small: a forward+backward at batch 4 is milliseconds on one
CPU thread.

Example:
    >>> entry = ZOO["resnet18_style"]
    >>> model = entry.build()
    >>> x, y = make_batch(entry, 4, seed=0)
    >>> loss = F.cross_entropy(model(x), y)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .efficientnet import efficientnet_style
from .mobilenet import mobilenet_v2_style
from .recurrent import gru_classifier, lstm_classifier, packed_lstm_classifier
from .resnet import resnet18_style
from .transformers import mlp_mixer_style, vit_style
from .unet import unet_style

TARGETS = ("class", "segment")


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    Attributes:
        name: the registry key.
        factory: ``factory(num_classes)`` builds a fresh model.
        input_shape: one sample's shape, without the batch dimension.
        target: ``"class"`` (y is (N,)) or ``"segment"`` (y is (N, H, W)).
        num_classes: classes of the output.
        norm_types: the normalization layer types the model has (empty: none).
        inplace_types: activation types that appear with ``inplace=True`` (empty: none).
        variable_length: sequences padded with trailing zero rows of random length.
    """

    name: str
    factory: Callable[[int], nn.Module]
    input_shape: tuple[int, ...]
    target: str
    num_classes: int
    norm_types: tuple[type[nn.Module], ...] = ()
    inplace_types: tuple[type[nn.Module], ...] = ()
    variable_length: bool = False

    @property
    def has_norm(self) -> bool:
        return bool(self.norm_types)

    def build(self) -> nn.Module:
        return self.factory(self.num_classes)

    def output_shape(self, n: int) -> tuple[int, ...]:
        if self.target == "segment":
            return (n, self.num_classes, *self.input_shape[1:])
        return (n, self.num_classes)


IMAGE = (3, 32, 32)
ROWS = (28, 28)  # a 28x28 image read row by row: T=28 steps of F=28 features
BN = (nn.BatchNorm2d,)
LN = (nn.LayerNorm,)

ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("resnet18_style", resnet18_style, IMAGE, "class", 10, BN, (nn.ReLU,)),
    ZooEntry("mobilenet_v2_style", mobilenet_v2_style, IMAGE, "class", 10, BN, (nn.ReLU6,)),
    ZooEntry("efficientnet_style", efficientnet_style, IMAGE, "class", 10, BN, (nn.SiLU,)),
    ZooEntry("vit_style", vit_style, IMAGE, "class", 10, LN),
    ZooEntry("mlp_mixer_style", mlp_mixer_style, IMAGE, "class", 10, LN),
    ZooEntry("lstm_classifier", lstm_classifier, ROWS, "class", 10),
    ZooEntry("gru_classifier", gru_classifier, ROWS, "class", 10),
    ZooEntry("packed_lstm_classifier", packed_lstm_classifier, ROWS, "class", 10,
             variable_length=True),
    ZooEntry("unet_style", unet_style, IMAGE, "segment", 4, BN, (nn.ReLU,)),
)}


def make_batch(entry: ZooEntry | str, n: int = 4, seed: int = 0) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """A reproducible random batch ``(x, y)`` for ``entry`` (an entry or its name).

    ``x`` is standard normal of shape ``(n, *entry.input_shape)``; ``y`` holds class indices,
    shape ``(n,)`` or ``(n, H, W)`` for segmentation. Variable-length entries get trailing
    zero rows (each sample keeps at least half its steps; the first keeps all, so the padded
    batch keeps its full length).

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if isinstance(entry, str):
        if entry not in ZOO:
            raise KeyError(f"unknown zoo model {entry!r}; known: {', '.join(ZOO)}")
        entry = ZOO[entry]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *entry.input_shape, generator=g)
    if entry.variable_length:
        steps = entry.input_shape[0]
        keep = torch.randint(steps // 2, steps + 1, (n,), generator=g)
        keep[0] = steps
        x[torch.arange(steps)[None, :] >= keep[:, None]] = 0
    y_shape = (n, *entry.input_shape[1:]) if entry.target == "segment" else (n,)
    y = torch.randint(entry.num_classes, y_shape, generator=g)
    return x, y


__all__ = ["ZOO", "ZooEntry", "TARGETS", "make_batch"]

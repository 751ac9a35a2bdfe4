"""What every lab model shares: the ``MODELS`` registry and :func:`build_model`.

A model factory ``f(method, in_shape, num_classes)`` asks its method only for the block after
each weight layer (``method.block``) and whether weight layers keep their bias
(``method.conv_bias``); :func:`build_model` applies the method's weight hook, and the trainer
its other hooks.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ...methods import Method
from ...registry import Registry
from ..init import initialize

__all__ = ["MODELS", "ModelFactory", "build_model"]

ModelFactory = Callable[[Method, Sequence[int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, method: Method, in_shape: Sequence[int], num_classes: int,
                init: str = "torch") -> nn.Module:
    """Build model ``name`` for ``method``, initialize it with ``init`` (see
    :mod:`normlab.lab.init`), then apply the method's weight hook (``prepare``)."""
    model = initialize(MODELS.get(name)(method, tuple(in_shape), num_classes), init)
    return method.prepare(model)

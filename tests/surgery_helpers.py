"""Helpers shared by the surgery tests."""

from __future__ import annotations

import torch
from torch import nn

WEIGHTS = (nn.Conv2d, nn.Linear)


def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copy the Conv/Linear weights of ``src`` into ``dst`` in order; a bias ``src`` lacks
    is zeroed in ``dst`` (the two models then compute the same weight layers)."""
    a = [m for m in src.modules() if isinstance(m, WEIGHTS)]
    b = [m for m in dst.modules() if isinstance(m, WEIGHTS)]
    assert len(a) == len(b)
    with torch.no_grad():
        for s, d in zip(a, b):
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias if s.bias is not None else torch.zeros_like(d.bias))
    return dst

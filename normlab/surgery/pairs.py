"""Find the weight layer whose output feeds only a given normalization layer.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", 2018, arXiv:1712.05877 (section 3.2, batch normalization folding): a norm can
be folded into the weight layer before it only when that layer's output goes nowhere else.

Strategy:

1. ``torch.fx`` symbolic tracing (normalization and weight layers kept as leaves): a pair is a
   ``call_module`` node of a Conv1d/2d/3d or Linear whose only user is the norm's node, with
   both modules called exactly once. This sees ResNet-style modules whose ``forward`` calls
   ``self.conv`` then ``self.bn``.
2. A module that cannot be traced (data-dependent control flow, ...) is not given up on: if it
   is a plain ``nn.Sequential``, a child's last layer and the next child's first layer are a
   pair (nested Sequentials are looked into), and every child is searched the same way, from
   step 1. This fallback assumes a Sequential's children are called only through it.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch.fx as fx
from torch import nn

from ..nn_types import WEIGHT_LAYERS
from .detect import is_norm_layer

__all__ = ["Pair", "find_pairs"]


class Pair(NamedTuple):
    """A weight layer (by qualified name and module) whose output feeds only ``norm``."""

    weight_name: str
    weight: nn.Module
    norm_name: str
    norm: nn.Module


class _LeafTracer(fx.Tracer):
    """Keeps norm layers (normlab's included) and weight layers as opaque call sites."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (is_norm_layer(m) or isinstance(m, WEIGHT_LAYERS)
                or super().is_leaf_module(m, module_qualified_name))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _traced_pairs(module: nn.Module, prefix: str) -> list[Pair]:
    graph = _LeafTracer().trace(module)
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        norm = module.get_submodule(node.target)
        prev = node.args[0]
        if not is_norm_layer(norm) or not isinstance(prev, fx.Node) or prev.op != "call_module":
            continue
        weight = module.get_submodule(prev.target)
        if (isinstance(weight, WEIGHT_LAYERS) and len(prev.users) == 1
                and calls[prev.target] == 1 and calls[node.target] == 1):
            pairs.append(Pair(_join(prefix, prev.target), weight, _join(prefix, node.target), norm))
    return pairs


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _end(name: str, module: nn.Module, last: bool) -> tuple[str, nn.Module]:
    """The first (or last) module a plain Sequential runs, looking into nested ones."""
    while _plain_sequential(module) and len(module):
        index = len(module) - 1 if last else 0
        name, module = _join(name, str(index)), module[index]
    return name, module


def _sequential_pairs(seq: nn.Sequential, prefix: str) -> list[Pair]:
    children = [(_join(prefix, n), c) for n, c in seq.named_children()]
    pairs = []
    for (a_name, a), (b_name, b) in zip(children, children[1:]):
        w_name, weight = _end(a_name, a, last=True)
        n_name, norm = _end(b_name, b, last=False)
        if isinstance(weight, WEIGHT_LAYERS) and is_norm_layer(norm):
            pairs.append(Pair(w_name, weight, n_name, norm))
    return pairs


def find_pairs(model: nn.Module, prefix: str = "") -> list[Pair]:
    """Every (weight layer, norm layer) pair in ``model`` where the norm reads only the
    weight layer's output, found by fx tracing with the Sequential fallback (module doc)."""
    try:
        return _traced_pairs(model, prefix)
    except Exception:  # any tracing failure: fall back to what the structure alone tells
        pass
    pairs = _sequential_pairs(model, prefix) if _plain_sequential(model) else []
    for name, child in model.named_children():
        if not (is_norm_layer(child) or isinstance(child, WEIGHT_LAYERS)):
            pairs += find_pairs(child, _join(prefix, name))
    return pairs

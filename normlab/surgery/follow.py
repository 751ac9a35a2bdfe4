"""Find the activation module that directly follows a normalization layer.

Methods whose block changes the activation (FRN's TLU replaces it: Singh & Krishnan 2020,
arXiv:1911.09737; Proxy Norm wraps it: Labatie et al. 2021, arXiv:2106.03743; the IC layer
goes after it: Chen et al. 2019, arXiv:1905.05928) replace a norm *and* its activation, so
:func:`normlab.surgery.replace_norm` needs the activation that reads only that norm's output.

Strategy, as for folding (:mod:`normlab.surgery.pairs`): ``torch.fx`` tracing with norm and
activation modules as leaves (the norm node's only user is a ``call_module`` of an
activation, both called exactly once), else adjacency in plain ``nn.Sequential`` children.
An activation called at several places (torchvision's shared ``self.relu``) cannot be
replaced at one of them, so it does not count.
"""

from __future__ import annotations

from collections import Counter

import torch.fx as fx
from torch import nn

from .detect import is_norm_layer
from .pairs import end_of, join, plain_sequential

__all__ = ["ACTIVATIONS", "find_activations"]

#: the activation modules a block-changing method may take over.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus,
)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (is_norm_layer(m) or isinstance(m, ACTIVATIONS)
                or super().is_leaf_module(m, module_qualified_name))


def _traced(module: nn.Module, prefix: str) -> dict[str, tuple[str, nn.Module]]:
    graph = _Tracer().trace(module)
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or not is_norm_layer(module.get_submodule(node.target)):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or len(users[0].args) != 1:
            continue
        act = module.get_submodule(users[0].target)
        if isinstance(act, ACTIVATIONS) and calls[users[0].target] == 1 \
                and calls[node.target] == 1:
            found[join(prefix, node.target)] = (join(prefix, users[0].target), act)
    return found


def _sequential(seq: nn.Sequential, prefix: str) -> dict[str, tuple[str, nn.Module]]:
    children = [(join(prefix, n), c) for n, c in seq.named_children()]
    found = {}
    for (a_name, a), (b_name, b) in zip(children, children[1:]):
        n_name, norm = end_of(a_name, a, last=True)
        act_name, act = end_of(b_name, b, last=False)
        if is_norm_layer(norm) and isinstance(act, ACTIVATIONS):
            found[n_name] = (act_name, act)
    return found


def find_activations(model: nn.Module, prefix: str = "") -> dict[str, tuple[str, nn.Module]]:
    """``{norm_name: (activation_name, activation)}`` for every norm layer of ``model``
    whose output goes only to an activation module called once (module docstring)."""
    try:
        return _traced(model, prefix)
    except Exception:  # any tracing failure: fall back to what the structure alone tells
        pass
    found = _sequential(model, prefix) if plain_sequential(model) else {}
    for name, child in model.named_children():
        if not (is_norm_layer(child) or isinstance(child, ACTIVATIONS)):
            found.update(find_activations(child, join(prefix, name)))
    return found

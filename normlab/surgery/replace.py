"""Swap or remove every normalization layer of any ``nn.Module``.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, measure the standardization loss against batch normalization
and the bare network on the same architecture: :func:`replace_norm` puts any registered
method's layer where a network has its normalization, and :func:`remove_norm` gives the bare
network (the starting point for the standardization loss).

The converters walk ``named_children`` recursively and return the new root, as timm's
``freeze_batch_norm_2d`` does; a layer shared at several places stays shared. They deep-copy
the model first unless ``inplace=True``.

State carry-over rule of :func:`replace_norm`: every entry of the new layer's ``state_dict``
whose name and shape match an entry of the old layer's is copied (``weight``/``bias``,
``running_mean``/``running_var``, ``num_batches_tracked``, ...); nothing else is. The new
layer keeps its own ``requires_grad`` flags: the method decides what is learned.

Layers that carry a nonlinearity (FRN with its TLU, Proxy Norm's activation) say what stays
without their normalization through :meth:`NormLayer.without_norm
<normlab.layers.base.NormLayer.without_norm>`: :func:`remove_norm` puts that in their place
(FRN+TLU -> ReLU, Proxy Norm -> its activation) and :func:`replace_norm` puts the new norm
followed by it, so no nonlinearity is silently deleted.

Only methods whose block is "norm, then the activation" (those that do not override
:meth:`Method.block <normlab.methods.base.Method.block>`) can be inserted by
:func:`replace_norm`: a method that changes the activation or the order (``frn`` replaces the
activation, ``proxy_norm`` puts its own around it, ``ic_layer`` goes after it) needs to see
the activation, which a norm layer's place in a network does not tell. Such methods raise
``ValueError``: build the model with the method instead.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..layers.base import NormLayer
from ..methods import Method, MethodSpec, create_method
from .detect import SpatialDims, is_norm_layer, norm_features, norm_spatial_dims

__all__ = ["Replaced", "replace_norm", "remove_norm", "convert_norm_layers", "working_copy"]


class Replaced(NamedTuple):
    """One replaced layer: its qualified name, old and new class names, carried state keys.

    ``new`` is ``"A+B"`` when the layer became ``nn.Sequential(A, B)`` (a new norm followed by
    the nonlinearity the old layer carried).
    """

    name: str
    old: str
    new: str
    carried: tuple[str, ...]


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def working_copy(model: nn.Module, inplace: bool) -> nn.Module:
    """What a converter changes: ``model`` itself when ``inplace``, else a deep copy (after
    checking that ``model`` is a module)."""
    _check_module(model)
    return model if inplace else copy.deepcopy(model)


def convert_norm_layers(
    model: nn.Module, convert: Callable[[str, nn.Module], nn.Module]
) -> nn.Module:
    """Replace, in place, every normalization layer by ``convert(qualified_name, layer)``.

    The root itself may be a normalization layer; the new root is returned. A layer reachable
    under several names is converted once and stays shared. Children of a normalization
    layer are not visited.
    """
    _check_module(model)
    memo: dict[int, nn.Module] = {}

    def walk(module: nn.Module, prefix: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        if is_norm_layer(module):
            memo[id(module)] = convert(prefix, module)
            return memo[id(module)]
        memo[id(module)] = module
        for name, child in list(module.named_children()):
            new = walk(child, f"{prefix}.{name}" if prefix else name)
            if new is not child:
                setattr(module, name, new)
        return module

    return walk(model, "")


def _carry_state(old: nn.Module, new: nn.Module) -> tuple[str, ...]:
    """Copy the state entries of ``old`` whose names and shapes match ``new``'s."""
    old_state = old.state_dict()
    carried = []
    with torch.no_grad():
        for key, value in new.state_dict().items():
            source = old_state.get(key)
            if source is not None and source.shape == value.shape:
                value.copy_(source)  # state_dict tensors share storage with the module
                carried.append(key)
    return tuple(carried)


def _like(old: nn.Module, new: nn.Module) -> nn.Module:
    """Put ``new`` on the device, floating dtype and train/eval mode of ``old``."""
    tensors = [t for t in list(old.parameters()) + list(old.buffers())
               if t.is_floating_point() and not nn.parameter.is_lazy(t)]
    if tensors:
        new.to(device=tensors[0].device, dtype=tensors[0].dtype)
    return new.train(old.training)


def _kept(layer: nn.Module) -> nn.Module:
    """What stays of a norm layer without its normalization (``nn.Identity`` for torch's)."""
    return layer.without_norm() if isinstance(layer, NormLayer) else nn.Identity()


def _check_insertable(method: Method) -> None:
    """Raise unless ``method``'s block is its norm followed by the model's activation."""
    if type(method).block is not Method.block:
        raise ValueError(
            f"replace_norm can only insert methods whose block is norm-then-activation; "
            f"{method.name or type(method).__name__!r} overrides block() (it changes the "
            f"activation or where the norm goes), which a norm layer's place does not "
            f"allow: build the model with that method instead"
        )


def replace_norm(
    model: nn.Module,
    method: MethodSpec,
    inplace: bool = False,
    spatial_dims: SpatialDims = None,
    *,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, list[Replaced]]:
    """Every normalization layer becomes ``create_method(method).norm(C, spatial_dims)``.

    ``C`` and ``spatial_dims`` are read from each old layer without running a forward (see
    :mod:`normlab.surgery.detect`). State entries whose names and shapes match are carried
    over (module docstring); the new layer takes the old one's device, dtype and mode. A
    method whose ``norm`` returns ``None`` (``none``, ``std_loss``) gives ``nn.Identity``.

    A layer that carries a nonlinearity keeps it: it becomes ``nn.Sequential(new_norm,
    layer.without_norm())`` (FRN+TLU: the new norm then ReLU). A layer with
    ``follows_norm`` (Proxy Norm's activation after its GN/LN) becomes
    ``layer.without_norm()`` alone: the norm before it is replaced too.

    Args:
        model: any module.
        method: a registered method name, a Method, a Method class or a partial.
        inplace: change ``model`` itself instead of a deep copy.
        spatial_dims: for layers whose class does not tell their input's shape (GroupNorm,
            SyncBatchNorm, ...): an int for all of them, or a mapping from qualified names to
            spatial dims, whose entries also override the class (e.g. ``{"0.1": 1}`` for a
            BatchNorm1d on ``(N, C, L)``).
        return_report: also return one :class:`Replaced` per replaced layer.

    Returns:
        The new root (``model`` itself when ``inplace`` and the root is not a norm layer),
        and the report list when ``return_report``.

    Raises:
        TypeError: ``model`` is not a module.
        KeyError: an unknown method name (the message lists the known ones).
        ValueError: a layer whose channel count or spatial dims cannot be told, or a method
            whose block is not norm-then-activation (``frn``, ``proxy_norm``, ``ic_layer``;
            module docstring).
    """
    _check_module(model)
    built = create_method(method)
    _check_insertable(built)
    report: list[Replaced] = []

    def convert(name: str, layer: nn.Module) -> nn.Module:
        kept = _kept(layer)
        if getattr(layer, "follows_norm", False):
            report.append(Replaced(name, type(layer).__name__, type(kept).__name__, ()))
            return kept
        new = built.norm(norm_features(name, layer), norm_spatial_dims(name, layer, spatial_dims))
        if new is None:
            new = nn.Identity()
        new = _like(layer, new)
        carried = _carry_state(layer, new)
        label = type(new).__name__
        if not isinstance(kept, nn.Identity):
            if isinstance(new, nn.Identity):  # e.g. "none": only the nonlinearity stays
                new, label = kept, type(kept).__name__
            else:
                new, label = nn.Sequential(new, kept), f"{label}+{type(kept).__name__}"
        report.append(Replaced(name, type(layer).__name__, label, carried))
        return new

    root = convert_norm_layers(working_copy(model, inplace), convert)
    return (root, report) if return_report else root


def remove_norm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Every normalization layer becomes ``nn.Identity`` (the bare network), except that a
    layer carrying a nonlinearity becomes that nonlinearity (``layer.without_norm()``:
    FRN+TLU -> ``nn.ReLU``, Proxy Norm -> its activation; module docstring).

    Args:
        model: any module.
        inplace: change ``model`` itself instead of a deep copy.

    Raises:
        TypeError: ``model`` is not a module.
    """
    return convert_norm_layers(working_copy(model, inplace), lambda name, layer: _kept(layer))

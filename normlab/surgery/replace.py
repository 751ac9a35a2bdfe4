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

Methods whose block is not "norm, then the activation" (they override :meth:`Method.block
<normlab.methods.base.Method.block>`: ``frn`` replaces the activation with its TLU,
``proxy_norm`` puts its own around it, ``ic_layer`` goes after it) replace a norm *and* the
activation module that reads only its output (found by :mod:`normlab.surgery.follow`): the
norm's place gets ``method.block(C, spatial_dims, activation)`` and the activation's place
``nn.Identity``. A norm with no such activation (a linear bottleneck, a norm before a
residual sum, an activation module shared by several call sites) makes the call raise one
``ValueError`` naming it, before anything is changed.

Channels: a ``LayerNorm(C)`` normalizes the last dim of ``(N, *, C)`` inputs (tokens, rows);
its replacement is ``ChannelsLast(method.norm(C, 0))`` (:mod:`normlab.surgery.channels`),
which normalizes per channel on the last dim. Every other layer takes channels on dim 1.

Methods that insert no layer are refused with what to call instead: ``none`` (use
:func:`remove_norm`), ``std_loss`` (``remove_norm`` then ``StandardizationLoss``), ``bnp``
(``remove_norm`` then ``normlab.BNP`` around the optimizer), and every gradient or weight
method likewise.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..methods import Method, MethodSpec, create_method
from .channels import ChannelsLast
from .detect import SpatialDims, channels_last, is_norm_layer, norm_features, norm_spatial_dims
from .follow import find_activations
from .norm_act import check_kept, kept_after_norm
from .records import note

__all__ = ["replace_norm", "remove_norm", "convert_norm_layers", "working_copy",
           "norm_layers", "changes_block", "method_for_layers", "to_rows"]


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def working_copy(model: nn.Module, inplace: bool) -> nn.Module:
    """What a converter changes: ``model`` itself when ``inplace``, else a deep copy (after
    checking that ``model`` is a module)."""
    _check_module(model)
    return model if inplace else copy.deepcopy(model)


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(first qualified name, layer)`` of every norm layer, not looking inside norm layers
    (a :class:`ChannelsLast` wrapper counts once) and listing a shared layer once."""
    found, seen = [], set()

    def walk(module: nn.Module, prefix: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if is_norm_layer(module):
            found.append((prefix, module))
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return found


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
        # ``_modules``, not ``named_children()``: that lists a child registered under two
        # names once, and the second name would keep the old layer.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
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


def _kept(layer: nn.Module, name: str = "") -> nn.Module:
    """What stays of a norm layer without its normalization (:func:`.norm_act.kept_after_norm`:
    ``nn.Identity`` for torch's, the activation a timm ``BatchNormAct2d`` carries)."""
    return kept_after_norm(name, layer)


def changes_block(method: Method) -> bool:
    """Whether ``method``'s block is not its norm then the model's activation (it overrides
    :meth:`Method.block`: FRN, Proxy Norm, the IC layer)."""
    return type(method).block is not Method.block


def method_for_layers(method: MethodSpec, caller: str, **method_options) -> Method:
    """``create_method(method, **method_options)``, refused with what to call instead when
    the method puts no normalization layer in a model (its ``kind`` is not ``"layer"``).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ValueError: a method that is not a layer method.
    """
    built = create_method(method, **method_options)
    if built.kind == "layer":
        return built
    name = built.name or type(built).__name__
    instead = {
        "none": "call normlab.remove_norm(model) for the bare network",
        "loss": (f"call bare = normlab.remove_norm(model), then attach "
                 f"normlab.StandardizationLoss(bare) (create_method({name!r})"
                 f".auxiliary_loss(bare)) and add it to the task loss"),
        "gradient": (f"call bare = normlab.remove_norm(model), then wrap the optimizer: "
                     + ("normlab.BNP(optimizer, bare)" if name == "bnp" else
                        f"create_method({name!r}).wrap_optimizer(optimizer, bare)")),
        "weight": (f"call bare = normlab.remove_norm(model), then "
                   f"create_method({name!r}).prepare(bare)"),
    }.get(built.kind, "build the model with the method instead")
    raise ValueError(f"{caller}(model, {name!r}) has no layer to put in: {name!r} is a "
                     f"{built.kind!r} method; {instead}")


def to_rows(module: nn.Module, features: int) -> nn.Module:
    """``module`` (a norm or a block) with each norm layer in it run on channel-last rows
    (:class:`ChannelsLast`); activations are elementwise and stay as they are."""
    return convert_norm_layers(module, lambda name, layer: ChannelsLast(layer, features))


def _new_norm(built: Method, name: str, layer: nn.Module, spatial_dims: SpatialDims,
              activation: nn.Module | None) -> tuple[nn.Module, tuple[str, ...]]:
    """The replacement of ``layer`` (its block when ``activation`` is given) and the state
    keys carried into it (into the block's first norm layer)."""
    features = norm_features(name, layer)
    rows = channels_last(layer)
    dims = 0 if rows else norm_spatial_dims(name, layer, spatial_dims)
    new = built.norm(features, dims) if activation is None \
        else built.block(features, dims, activation)
    inner = norm_layers(new)
    source = layer.norm if isinstance(layer, ChannelsLast) else layer
    carried = _carry_state(source, inner[0][1]) if inner else ()
    if rows:
        new = to_rows(new, features)
    return _like(layer, new), carried


def _block_activations(model: nn.Module, built: Method) -> dict[str, tuple[str, nn.Module]]:
    """For a block-changing method: the activation each norm takes over; raises naming the
    first norm that has none (nothing is changed yet)."""
    found = find_activations(model)
    name = built.name or type(built).__name__
    for norm_name, layer in norm_layers(model):
        carried = not isinstance(_kept(layer, norm_name), nn.Identity) \
            or getattr(layer, "follows_norm", False)
        if norm_name not in found and not carried:
            raise ValueError(
                f"replace_norm(model, {name!r}) replaces each norm and the activation after "
                f"it, but {norm_name or 'the root'} ({type(layer).__name__}) is not followed "
                f"by an activation module used only there (a norm before a residual sum or a "
                f"linear bottleneck, or a shared or functional activation)")
    return found


def replace_norm(
    model: nn.Module,
    method: MethodSpec,
    inplace: bool = False,
    spatial_dims: SpatialDims = None,
    *,
    report: list | None = None,
    **method_options,
) -> nn.Module:
    """Every normalization layer becomes ``create_method(method, **method_options).norm(C,
    spatial_dims)`` (its ``block`` for a block-changing method; module docstring).

    ``C`` and ``spatial_dims`` are read from each old layer without running a forward (see
    :mod:`normlab.surgery.detect`); a ``LayerNorm(C)`` is channel-last (module docstring).
    State entries whose names and shapes match are carried over; the new layer takes the old
    one's device, dtype and mode.

    A layer that carries a nonlinearity keeps it: it becomes ``nn.Sequential(new_norm,
    layer.without_norm())`` (FRN+TLU: the new norm then ReLU), or the new method's block
    around it. A layer with ``follows_norm`` (Proxy Norm's activation after its GN/LN)
    becomes ``layer.without_norm()`` alone: the norm before it is replaced too.

    Args:
        model: any module.
        method: a registered layer-method name, a Method, a Method class or a partial.
        inplace: change ``model`` itself instead of a deep copy.
        spatial_dims: for layers whose class does not tell their input's shape (GroupNorm,
            SyncBatchNorm, ...): an int for all of them, or a mapping from qualified names to
            spatial dims, whose entries also override the class (e.g. ``{"0.1": 1}`` for a
            BatchNorm1d on ``(N, C, L)``).
        report: a list to append one :class:`~normlab.surgery.records.SurgeryRecord` to per
            replaced layer (``action="replaced"``, ``detail`` the carried state keys) and per
            activation taken into a block (``"removed"``).
        **method_options: the method's constructor options (``num_groups=8``).

    Returns:
        The new root (``model`` itself when ``inplace`` and the root is not a norm layer).

    Raises:
        TypeError: ``model`` is not a module, or a bad method option.
        KeyError: an unknown method name (the message lists the known ones).
        ValueError: a method that puts no layer in (``none``, ``std_loss``, ``bnp``, ...;
            the message says what to call instead), a layer whose channel count or spatial
            dims cannot be told, or a block-changing method on a norm not followed by an
            activation module.
    """
    _check_module(model)
    built = method_for_layers(method, "replace_norm", **method_options)
    check_kept(norm_layers(model))  # refuse before anything is changed
    block = changes_block(built)
    activations = _block_activations(model, built) if block else {}
    root = working_copy(model, inplace)
    taken: list[str] = []

    def convert(name: str, layer: nn.Module) -> nn.Module:
        kept = _kept(layer, name)
        if getattr(layer, "follows_norm", False):
            note(report, name, type(layer).__name__, type(kept).__name__, "replaced", "")
            return kept
        activation = None
        if block:
            activation = kept
            if isinstance(kept, nn.Identity):  # found on ``model``; the same name in the copy
                taken.append(activations[name][0])
                activation = root.get_submodule(activations[name][0])
        new, carried = _new_norm(built, name, layer, spatial_dims, activation)
        label = type(new).__name__
        if not block and not isinstance(kept, nn.Identity):
            new, label = nn.Sequential(new, kept), f"{label}+{type(kept).__name__}"
        note(report, name, type(layer).__name__, label, "replaced", ",".join(carried))
        return new

    root = convert_norm_layers(root, convert)
    for act_name in taken:  # the activation now inside the norm's block
        parent, _, attr = act_name.rpartition(".")
        owner = root.get_submodule(parent)
        note(report, act_name, type(getattr(owner, attr)).__name__, "Identity", "removed",
             "taken into the block before it")
        setattr(owner, attr, nn.Identity().train(owner.training))
    return root


def remove_norm(model: nn.Module, inplace: bool = False, *,
                report: list | None = None) -> nn.Module:
    """Every normalization layer becomes ``nn.Identity`` (the bare network), except that a
    layer carrying a nonlinearity becomes that nonlinearity (``layer.without_norm()``:
    FRN+TLU -> ``nn.ReLU``, Proxy Norm -> its activation; module docstring).

    Args:
        model: any module.
        inplace: change ``model`` itself instead of a deep copy.
        report: a list to append one ``SurgeryRecord(action="removed")`` to per layer.

    Returns:
        The new root (``model`` itself when ``inplace`` and the root is not a norm layer).

    Raises:
        TypeError: ``model`` is not a module.
    """
    def convert(name: str, layer: nn.Module) -> nn.Module:
        kept = _kept(layer, name)
        note(report, name, type(layer).__name__, type(kept).__name__, "removed", "")
        return kept

    _check_module(model)
    check_kept(norm_layers(model))  # refuse before anything is changed
    return convert_norm_layers(working_copy(model, inplace), convert)

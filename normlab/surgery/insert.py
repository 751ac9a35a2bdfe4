"""Give a model without normalization a registered method's layers: after every weight layer.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare each normalization with the bare network on the same
architecture, with the norm before each nonlinearity, i.e. after each weight layer but the
logit layer (Ioffe & Szegedy 2015, arXiv:1502.03167, section 3.2). :func:`insert_norm` builds
that network from a user's norm-free model, so every layer method can be measured on it.

Rules (one forward of ``example_input``, under ``torch.no_grad``, learns what the model's
code does; nothing is guessed from the order of registration):

- weight layers: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear (and subclasses) and
  :class:`~normlab.nn_types.PreActivation` markers, the layers the standardization loss
  hooks; a layer its model never calls (``nn.MultiheadAttention.out_proj``, used
  functionally) is skipped with a record.
- the logit layer is the weight layer executed last; it gets no norm.
- channels: dim 1 of a convolution's output (``spatial_dims = ndim - 2``), the last dim of a
  Linear's (``(N, C)`` plain; ``(N, *, C)`` through
  :class:`~normlab.surgery.channels.ChannelsLast`), ``channel_dim`` of a PreActivation.
- each weight layer ``W`` becomes ``nn.Sequential(W, method.norm(C, spatial_dims))`` (state
  keys ``W.0.*``); its bias is kept.
- a block-changing method (FRN+TLU, Proxy Norm, the IC layer) takes over the activation
  module that directly reads ``W``'s output (that module becomes ``nn.Identity``): the
  place gets ``nn.Sequential(W, method.block(C, spatial_dims, activation))``.

One ``ValueError`` line, before anything is changed: a model that already has normalization
layers (use :func:`normlab.surgery.replace_norm`), a method that is not a layer method, no
weight layer before the logit layer, a layer called with outputs of different channel layout,
or, for a block-changing method, a weight layer with no activation module of its own after it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..methods import MethodSpec
from ..nn_types import PreActivation
from .detect import is_norm_layer
from .follow import ACTIVATIONS
from .pairs import FOLD_LAYERS
from .records import note
from .replace import (
    _like, changes_block, method_for_layers, norm_layers, to_rows, working_copy,
)

__all__ = ["insert_norm"]

_CONV = tuple(t for t in FOLD_LAYERS if t is not nn.Linear)


class _Site(NamedTuple):
    """Where a norm goes: after weight layer ``name``, with ``features`` channels."""

    name: str
    module: nn.Module
    features: int
    spatial_dims: int
    rows: bool  # channel-last output: the norm runs on its (M, C) rows


def _layout(name: str, module: nn.Module, out: Tensor) -> tuple[int, int, bool]:
    """``(features, spatial_dims, rows)`` of one output of weight layer ``module``."""
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise ValueError(f"insert_norm: {name} ({type(module).__name__}) returned "
                         f"{type(out).__name__ if not isinstance(out, Tensor) else tuple(out.shape)}"
                         f", not an (N, C, *) or (N, *, C) tensor")
    if isinstance(module, _CONV):
        return out.shape[1], out.dim() - 2, False
    dim = module.channel_dim if isinstance(module, PreActivation) else -1
    dim = dim % out.dim()
    if dim == out.dim() - 1:
        return out.shape[-1], 0, out.dim() > 2
    if dim == 1:
        return out.shape[1], out.dim() - 2, False
    raise ValueError(f"insert_norm: {name} has its channels on dim {dim} of a "
                     f"{out.dim()}-D output; only dim 1 or the last dim can be normalized")


def _record(model: nn.Module, example_input) -> tuple[list, dict[int, list], dict]:
    """One forward: ``calls`` [(name, module, output)] of weight layers in execution order,
    ``inputs`` {id(input tensor): [activation names]}, and activation call counts."""
    calls: list[tuple[str, nn.Module, Tensor]] = []
    act_inputs: dict[int, list[str]] = {}
    act_calls: dict[str, int] = {}
    keep: list[Tensor] = []  # keeps every recorded tensor alive, so ids stay unique
    handles = []

    def weight_hook(name):
        def hook(module, args, out):
            calls.append((name, module, out))
            keep.append(out)
        return hook

    def act_hook(name):
        def hook(module, args):
            act_calls[name] = act_calls.get(name, 0) + 1
            if args and isinstance(args[0], Tensor):
                act_inputs.setdefault(id(args[0]), []).append(name)
                keep.append(args[0])
        return hook

    for name, module in model.named_modules():
        if isinstance(module, FOLD_LAYERS + (PreActivation,)):
            handles.append(module.register_forward_hook(weight_hook(name)))
        elif isinstance(module, ACTIVATIONS):
            handles.append(module.register_forward_pre_hook(act_hook(name)))
    try:
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
    return calls, act_inputs, act_calls


def _replace_module(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put ``new`` at every place ``target`` is a child of a module of ``model``."""
    for _, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            if child is target:
                setattr(module, child_name, new)


def insert_norm(model: nn.Module, method: MethodSpec, example_input, inplace: bool = False,
                report: list | None = None, **method_options) -> nn.Module:
    """Put ``method``'s normalization after every weight layer of a norm-free model but the
    logit layer (rules in the module docstring).

    Args:
        model: a module without normalization layers.
        method: a registered layer-method name, a Method, a Method class or a partial.
        example_input: a batch the model accepts (a tuple is unpacked into arguments); one
            forward of it under ``torch.no_grad`` learns the order of the weight layers and
            the shape of each output. Use a batch of more than one sample: BN-like layers
            inserted later train on batch statistics.
        inplace: change ``model`` itself instead of a deep copy.
        report: a list to append one ``SurgeryRecord`` to per inserted norm (``"inserted"``,
            ``detail`` the weight layer), per activation taken into a block (``"removed"``)
            and per weight layer left alone (``"skipped"``, with the reason).
        **method_options: the method's constructor options (``num_groups=8``).

    Returns:
        The model with the norms inserted (``model`` itself when ``inplace``).

    Raises:
        TypeError: ``model`` is not a module, or a bad method option.
        KeyError: an unknown method name.
        ValueError: the cases of the module docstring.
    """
    built = method_for_layers(method, "insert_norm", **method_options)
    name = built.name or type(built).__name__
    root = working_copy(model, inplace)
    existing = norm_layers(root)
    if existing:
        raise ValueError(f"insert_norm needs a model without normalization layers, but "
                         f"{existing[0][0] or 'the root'} is a {type(existing[0][1]).__name__}: "
                         f"use normlab.replace_norm(model, {name!r}) instead")
    calls, act_inputs, act_calls = _record(root, example_input)
    if not calls:
        raise ValueError("insert_norm: the forward of example_input called no Conv, "
                         "ConvTranspose, Linear or PreActivation layer")
    logit = calls[-1][1]
    sites: dict[int, _Site] = {}
    activation_of: dict[int, str] = {}
    block = changes_block(built)
    for w_name, module, out in calls:
        if module is logit:
            continue
        site = _Site(w_name, module, *_layout(w_name, module, out))
        seen = sites.setdefault(id(module), site)
        if seen[2:] != site[2:]:
            raise ValueError(f"insert_norm: {w_name} is called with outputs of different "
                             f"channel layout ({seen.features} channels, {seen.spatial_dims} "
                             f"spatial dims vs {site.features}, {site.spatial_dims})")
        if block:
            readers = act_inputs.get(id(out), [])
            own = [a for a in readers if act_calls[a] == 1]
            if len(own) != 1 or len(readers) != 1:
                raise ValueError(
                    f"insert_norm(model, {name!r}) puts its block in place of each weight "
                    f"layer's activation, but {w_name} ({type(module).__name__}) is not "
                    f"followed by an activation module used only there")
            activation_of[id(module)] = own[0]
    if not sites:
        raise ValueError(f"insert_norm: the only weight layer the forward calls is the logit "
                         f"layer {calls[-1][0]}; there is no place for a normalization")
    called = {id(m) for _, m, _ in calls}
    for w_name, module in root.named_modules():
        if isinstance(module, FOLD_LAYERS + (PreActivation,)) and id(module) not in called:
            note(report, w_name, type(module).__name__, type(module).__name__, "skipped",
                 "never called in the forward of example_input (used functionally?)")
    note(report, calls[-1][0], type(logit).__name__, type(logit).__name__, "skipped",
         "the logit layer (executed last)")
    for key, site in sites.items():
        activation = None
        if block:
            activation = root.get_submodule(activation_of[key])
            note(report, activation_of[key], type(activation).__name__, "Identity", "removed",
                 f"taken into the block after {site.name}")
            _replace_module(root, activation, nn.Identity().train(activation.training))
            new = built.block(site.features, site.spatial_dims, activation)
        else:
            new = built.norm(site.features, site.spatial_dims)
        if site.rows:
            new = to_rows(new, site.features)
        new = _like(site.module, new)
        note(report, f"{site.name}.1", "", type(new).__name__, "inserted", site.name)
        _replace_module(root, site.module, nn.Sequential(site.module, new))
    return root

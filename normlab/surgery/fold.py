"""Fold inference-time normalization into the preceding convolution or linear layer.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167, section 3.1: with population statistics the
normalization is a fixed per-channel linear transform at inference. Jacob et al. 2018,
arXiv:1712.05877, section 3.2, fold it into the weights: for a weight layer ``z = W x + b``
followed by ``y = z * s + t`` per output channel,

    W' = W * s (along the output dim),    b' = b * s + t.

The output dim is dim 0 of a Conv/Linear weight and dim 1 of a ConvTranspose weight, whose
layout is ``(in, out / groups, *kernel)`` (grouped: output channel ``g * out/groups + j`` is
``weight[g * in/groups : (g+1) * in/groups, j]``), as torch's FX fuser folds it.

Foldability rule: a norm is folded into the weight layer (a Conv1d/2d/3d, ConvTranspose1d/2d/3d
or Linear, or any subclass) whose output feeds only that norm, when the layer's weight is a
plain parameter (not parametrized, no forward hooks) and a probe forward shows that the layer
uses its weight and bias unchanged: on a random input, the folded layer must give the
original layer's output times ``s`` plus ``t``. A subclass that only pads in ``forward``
(EfficientNet's ``Conv2dStaticSamePadding``) passes; one that standardizes or otherwise
transforms its weight in ``forward`` does not and is left as it was, with the reason.

Refused with one ``ValueError`` line: a model in training mode (folding reads the running
statistics and gives the eval function, as ``fuse_conv_bn_eval`` asserts), and a foldable norm
whose eval map is not finite (NaN or inf running statistics, zero variance with ``eps=0``):
its unfolded eval output is not finite either, and folding would hide that in the weights.

Layout as in PyTorch's ``torch/nn/utils/fusion.py``: :func:`fold_weights` does the math,
:func:`eval_affine` reads ``(s, t)`` off a layer, :func:`fold_batch_norm` finds the pairs
(:mod:`normlab.surgery.pairs`), validates and writes. The math runs in float64 and is cast
back to the weight's dtype, so float32 models fold to about one rounding of their weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.utils import parametrize

from ..layers.base import NormLayer
from .detect import frozen_affine, is_frozen_batch_norm
from .norm_act import check_kept, kept_after_norm
from .pairs import find_pairs
from .records import note
from .replace import norm_layers, working_copy

__all__ = ["fold_weights", "eval_affine", "fold_batch_norm"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fold_weights(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, *,
                 transposed: bool = False, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Weights of a layer ``x -> (W x + b) * scale + shift`` (per output channel) as one layer.

    Formula: ``W' = W * scale`` along the output dim, ``b' = b * scale + shift`` (``b = 0``
    if None).

    Args:
        weight: Conv/Linear weight ``(C, ...)``, or with ``transposed`` a ConvTranspose
            weight ``(in, C / groups, ...)``.
        bias: shape ``(C,)`` or None.
        scale, shift: shape ``(C,)``.
        transposed: ``weight`` is a transposed convolution's (output channels on dim 1).
        groups: the transposed convolution's groups.

    Returns:
        ``(W', b')`` in ``weight``'s dtype and device.

    Raises:
        ValueError: a scale, shift or bias whose shape is not ``(C,)``.
    """
    channels = weight.shape[1] * groups if transposed else weight.shape[0]
    for what, t in (("scale", scale), ("shift", shift), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"{what} must have shape ({channels},) to match the weight's "
                             f"output dim, got {tuple(t.shape)}")
    wide = torch.float64
    s = scale.to(weight.device, wide)
    b = torch.zeros(channels, dtype=wide, device=weight.device) if bias is None \
        else bias.to(wide)
    w = weight.to(wide)
    kernel = (1,) * (weight.dim() - 2)
    if transposed:  # (in, out/g, *k) -> (g, in/g, out/g, *k), scale as (g, 1, out/g, 1...)
        grouped = w.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
        new_weight = (grouped * s.reshape(groups, 1, channels // groups, *kernel)
                      ).reshape(weight.shape)
    else:
        new_weight = w * s.reshape((channels,) + (1,) * (weight.dim() - 1))
    new_bias = b * s + shift.to(weight.device, wide)
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def eval_affine(layer: nn.Module) -> tuple[Tensor, Tensor] | str:
    """``(scale, shift)`` of the eval-mode map of ``layer``, or why it is not per-channel affine.

    torch's BatchNorm (and InstanceNorm with ``track_running_stats``):
    ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``.
    FrozenBatchNorm2d the same from its buffers. A :class:`~normlab.layers.base.NormLayer`
    answers through its ``eval_affine()``.
    """
    if is_frozen_batch_norm(layer):
        return frozen_affine(layer)
    if isinstance(layer, NormLayer):
        affine = layer.eval_affine()
        if affine is None:
            return (f"{type(layer).__name__}.eval_affine() is None: "
                    f"eval output is not per-channel affine")
        return affine
    if isinstance(layer, _NormBase):
        if layer.running_mean is None or layer.running_var is None:
            return (f"{type(layer).__name__} has track_running_stats=False: "
                    f"it uses batch statistics at eval")
        if nn.parameter.is_lazy(layer.running_mean):
            return f"{type(layer).__name__} is an uninitialized lazy layer"
        var = layer.running_var.to(torch.float64)
        scale = torch.rsqrt(var + layer.eps)
        shift = -layer.running_mean.to(torch.float64) * scale
        if layer.affine:
            gamma = layer.weight.detach().to(torch.float64)
            scale, shift = scale * gamma, shift * gamma + layer.bias.detach().to(torch.float64)
        return scale, shift
    return (f"{type(layer).__name__} normalizes with per-sample statistics: "
            f"eval output is not per-channel affine")


def _out_channels(module: nn.Module) -> int:
    w = module.weight
    return w.shape[1] * module.groups if isinstance(module, _TRANSPOSED) else w.shape[0]


def _blocker(module: nn.Module) -> str | None:
    """Why ``module``'s weights cannot be rewritten in place, if they cannot."""
    if parametrize.is_parametrized(module):
        return "its weight is parametrized (computed from other tensors)"
    if not isinstance(getattr(module, "weight", None), nn.Parameter):
        return "its weight is not a parameter"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks that folding would change the view of"
    return None


def _probe_input(module: nn.Module) -> Tensor:
    """A small random input ``module`` accepts (seeded: the global RNG is not touched)."""
    w = module.weight
    g = torch.Generator(device="cpu").manual_seed(0)
    if isinstance(module, nn.Linear):
        shape: tuple[int, ...] = (2, module.in_features)
    else:
        reach = [(k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation)]
        shape = (2, module.in_channels) + tuple(r + 2 * s + 1 for r, s in
                                                zip(reach, module.stride))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(w.device, w.dtype)


def _fold_into(module: nn.Module, scale: Tensor, shift: Tensor) -> str | None:
    """Fold ``(scale, shift)`` into ``module`` in place; ``None``, or why it was left as it
    was (the probe forward disagreed: ``forward`` transforms the weight)."""
    x = _probe_input(module)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    with torch.no_grad():
        expected = module(x) * scale.to(x.dtype).reshape(shape) + \
            shift.to(x.dtype).reshape(shape)
        old_weight = module.weight.detach().clone()
        old_bias = None if module.bias is None else module.bias.detach().clone()
        new_weight, new_bias = fold_weights(
            module.weight, module.bias, scale, shift,
            transposed=isinstance(module, _TRANSPOSED), groups=module.groups
            if isinstance(module, _TRANSPOSED) else 1)
        module.weight.copy_(new_weight)
        if module.bias is None:
            module.bias = nn.Parameter(new_bias, requires_grad=module.weight.requires_grad)
        else:
            module.bias.copy_(new_bias)
        got = module(x)
        tol = 1e-8 if x.dtype == torch.float64 else 1e-3
        err = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
        if got.shape == expected.shape and err <= tol:
            return None
        module.weight.copy_(old_weight)  # undo: this layer does not use its weight as is
        if old_bias is None:
            module.bias = None
        else:
            module.bias.copy_(old_bias)
    return (f"{type(module).__name__}.forward does not use its weight unchanged (a probe "
            f"forward of the folded layer is off by {err:.1e} relative)")


def _set_kept(model: nn.Module, target: nn.Module, kept: nn.Module) -> None:
    """Replace every occurrence of submodule ``target`` by ``kept`` (what stays of it once
    folded: ``nn.Identity``, or the activation a timm ``BatchNormAct2d`` carries)."""
    for _, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            if child is target:
                setattr(module, child_name, kept)


def _check_eval(model: nn.Module) -> None:
    training = [name or "the root" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"fold_batch_norm needs a model in eval mode (it folds the running statistics "
            f"into the weights, giving the eval function), but {training[0]} is in training "
            f"mode: call model.eval() first")


def _check_finite(name: str, layer: nn.Module, affine: tuple[Tensor, Tensor]) -> None:
    if not all(torch.isfinite(t).all() for t in affine):
        raise ValueError(
            f"cannot fold {name} ({type(layer).__name__}): its eval map is not finite (NaN or "
            f"inf running statistics, or zero variance with eps=0), so the model's eval "
            f"output is not finite either; fix or reset its statistics first")


def fold_batch_norm(model: nn.Module, inplace: bool = False, *,
                    report: list | None = None) -> nn.Module:
    """Fold every eval-affine normalization into the weight layer that feeds it.

    Folded: torch's BatchNorm1d/2d/3d and SyncBatchNorm with running statistics (and
    InstanceNorm with ``track_running_stats``), FrozenBatchNorm2d (torchvision, detectron2,
    timm), and every NormLayer whose ``eval_affine()`` returns ``(scale, shift)``, when the
    preceding Conv, ConvTranspose or Linear (or a subclass that passes the probe of the module
    docstring) feeds only that norm (found by ``torch.fx`` tracing, or adjacency in
    ``nn.Sequential`` where tracing fails; see :mod:`normlab.surgery.pairs`). The weight layer's
    ``weight`` is rewritten in place (on the copy) and it gets a ``bias`` if it had none; the
    norm becomes ``nn.Identity`` (or the activation it carries, :mod:`.norm_act`). The model
    keeps its classes; its outputs equal the unfolded model's eval outputs up to rounding.

    Other normalization layers (GroupNorm, LayerNorm, FRN, a norm after a weight layer whose
    output also goes elsewhere, ...) are left in place, each with a ``"skipped"`` record.

    A Linear followed by a norm is folded along its output features (its last dim): the
    norm's channel dim for ``(N, C)`` inputs and for a channel-last
    :class:`~normlab.surgery.channels.ChannelsLast` norm on ``(N, *, C)``.

    Args:
        model: any module, in eval mode.
        inplace: change ``model`` itself instead of a deep copy.
        report: a list to append one ``SurgeryRecord`` to per norm layer: ``"folded"``
            (``detail`` the weight layer) or ``"skipped"`` (``detail`` the reason).

    Returns:
        The folded model (``model`` itself when ``inplace``).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a module in training mode, or a foldable norm whose eval map is not
            finite (module docstring); nothing is changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_eval(model)
    check_kept(norm_layers(model))
    pairs = find_pairs(model)
    for pair in pairs:  # refuse before anything is copied or changed
        affine = eval_affine(pair.norm)
        if not isinstance(affine, str):
            _check_finite(pair.norm_name, pair.norm, affine)
    if not inplace:
        model = working_copy(model, inplace)
        pairs = find_pairs(model)
    norms = {id(m): (name, m) for name, m in norm_layers(model)}
    reasons = {i: "no preceding Conv/ConvTranspose/Linear whose output feeds only this layer"
               for i in norms}
    used: set[int] = set()
    folded: dict[int, tuple[str, str]] = {}
    for pair in pairs:
        key = id(pair.norm)
        if key not in reasons or key in folded:
            continue  # not a top-level norm, already folded, or seen twice by the fallback
        affine = eval_affine(pair.norm)
        if isinstance(affine, str):
            reasons[key] = affine
            continue
        channels = _out_channels(pair.weight)
        blocker = _blocker(pair.weight)
        if blocker is None and id(pair.weight) in used:
            blocker = "it is already folded with another norm"
        if blocker is None and any(tuple(t.shape) != (channels,) for t in affine):
            blocker = f"its {channels} output channels do not match scale/shift"
        if blocker is None:
            blocker = _fold_into(pair.weight, *affine)
        if blocker is not None:
            reasons[key] = f"cannot fold into {pair.weight_name}: {blocker}"
            continue
        kept = kept_after_norm(pair.norm_name, pair.norm)
        _set_kept(model, pair.norm, kept)
        used.add(id(pair.weight))
        folded[key] = (pair.weight_name, type(kept).__name__)
    for key, (name, layer) in norms.items():
        if key in folded:
            note(report, name, type(layer).__name__, folded[key][1], "folded", folded[key][0])
        else:
            affine_reason = eval_affine(layer)
            reason = affine_reason if isinstance(affine_reason, str) else reasons[key]
            note(report, name, type(layer).__name__, type(layer).__name__, "skipped", reason)
    return model

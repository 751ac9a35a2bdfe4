"""Fold inference-time normalization into the preceding convolution or linear layer.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167, section 3.1: with population statistics the
normalization is a fixed per-channel linear transform at inference. Jacob et al. 2018,
arXiv:1712.05877, section 3.2, fold it into the weights: for a weight layer ``z = W x + b``
followed by ``y = z * s + t`` per output channel,

    W' = W * s (along the output dim, dim 0 of a Conv/Linear weight),    b' = b * s + t.

Layout as in PyTorch's ``torch/nn/utils/fusion.py``: :func:`fold_weights` does the math,
:func:`eval_affine` reads ``(s, t)`` off a layer, :func:`fold_batch_norm` finds the pairs
(:mod:`normlab.surgery.pairs`), validates and writes. The math runs in float64 and is cast
back to the weight's dtype, so float32 models fold to about one rounding of their weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.utils import parametrize

from ..layers.base import NormLayer
from ..nn_types import WEIGHT_LAYERS
from .detect import is_norm_layer
from .pairs import find_pairs
from .replace import working_copy

__all__ = ["FoldResult", "fold_weights", "eval_affine", "fold_batch_norm"]


class FoldResult(NamedTuple):
    """What :func:`fold_batch_norm` did.

    Attributes:
        model: the folded model (eval mode).
        folded: ``(norm_name, weight_layer_name)`` for each folded norm layer.
        skipped: ``(norm_name, reason)`` for each normalization layer left in place.
    """

    model: nn.Module
    folded: list[tuple[str, str]]
    skipped: list[tuple[str, str]]


def fold_weights(weight: Tensor, bias: Tensor | None, scale: Tensor,
                 shift: Tensor) -> tuple[Tensor, Tensor]:
    """Weights of a layer ``x -> (W x + b) * scale + shift`` (per output channel) as one layer.

    Formula: ``W' = W * scale[:, None, ...]``, ``b' = b * scale + shift`` (``b = 0`` if None).

    Args:
        weight: Conv/Linear weight, output channels along dim 0, shape ``(C, ...)``.
        bias: shape ``(C,)`` or None.
        scale, shift: shape ``(C,)``.

    Returns:
        ``(W', b')`` in ``weight``'s dtype and device.

    Raises:
        ValueError: a scale, shift or bias whose shape is not ``(C,)``.
    """
    channels = weight.shape[0]
    for what, t in (("scale", scale), ("shift", shift), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"{what} must have shape ({channels},) to match the weight's "
                             f"output dim, got {tuple(t.shape)}")
    wide = torch.float64
    s = scale.to(weight.device, wide)
    b = torch.zeros(channels, dtype=wide, device=weight.device) if bias is None \
        else bias.to(wide)
    new_weight = weight.to(wide) * s.reshape((channels,) + (1,) * (weight.dim() - 1))
    new_bias = b * s + shift.to(weight.device, wide)
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def eval_affine(layer: nn.Module) -> tuple[Tensor, Tensor] | str:
    """``(scale, shift)`` of the eval-mode map of ``layer``, or why it is not per-channel affine.

    torch's BatchNorm (and InstanceNorm with ``track_running_stats``):
    ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``.
    A :class:`~normlab.layers.base.NormLayer` answers through its ``eval_affine()``.
    """
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


def _blocker(module: nn.Module) -> str | None:
    """Why ``module``'s weights cannot be rewritten in place, if they cannot."""
    if parametrize.is_parametrized(module):
        return "its weight is parametrized (computed from other tensors)"
    if type(module) not in WEIGHT_LAYERS:
        return f"{type(module).__name__} may transform its weight in forward"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks that folding would change the view of"
    return None


def _set_identity(model: nn.Module, target: nn.Module) -> None:
    """Replace every occurrence of submodule ``target`` by one ``nn.Identity``."""
    identity = nn.Identity()
    for name, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            if child is target:
                setattr(module, child_name, identity)


def fold_batch_norm(model: nn.Module, inplace: bool = False) -> FoldResult:
    """Fold every eval-affine normalization into the Conv/Linear layer that feeds it.

    Folded: torch's BatchNorm1d/2d/3d and SyncBatchNorm with running statistics (and
    InstanceNorm with ``track_running_stats``), and every NormLayer whose ``eval_affine()``
    returns ``(scale, shift)``, when the preceding Conv1d/2d/3d or Linear feeds only that norm
    (found by ``torch.fx`` tracing, or adjacency in ``nn.Sequential`` where tracing fails; see
    :mod:`normlab.surgery.pairs`). The weight layer's ``weight`` is rewritten in place (on the
    copy) and it gets a ``bias`` if it had none; the norm becomes ``nn.Identity``. The model
    keeps its classes and is returned in eval mode, where its outputs equal the unfolded
    model's eval outputs up to rounding.

    Other normalization layers (GroupNorm, LayerNorm, FRN, a norm after a weight layer whose
    output also goes elsewhere, ...) are left in place and reported in ``skipped``.

    A Linear followed by a norm is folded along its output features, which is the norm's
    channel dim for ``(N, C)`` inputs (the MLP case); ``(N, L, C)`` inputs are not told apart.

    Args:
        model: any module.
        inplace: change ``model`` itself instead of a deep copy.

    Raises:
        TypeError: ``model`` is not a module.
    """
    model = working_copy(model, inplace)
    norms = {}  # id -> (first name, module); named_modules() skips repeats of shared modules
    for name, module in model.named_modules():
        if is_norm_layer(module):
            norms[id(module)] = (name, module)
    reasons: dict[int, str] = {i: "no preceding Conv/Linear whose output feeds only this layer"
                               for i in norms}
    folded: list[tuple[str, str]] = []
    used: set[int] = set()
    for pair in find_pairs(model):
        key = id(pair.norm)
        if key not in reasons:
            continue  # already folded, or seen twice by the Sequential fallback
        affine = eval_affine(pair.norm)
        if isinstance(affine, str):
            reasons[key] = affine
            continue
        channels = pair.weight.weight.shape[0]
        blocker = _blocker(pair.weight)
        if blocker is None and id(pair.weight) in used:
            blocker = "it is already folded with another norm"
        if blocker is None and any(tuple(t.shape) != (channels,) for t in affine):
            blocker = f"its {channels} output channels do not match scale/shift"
        if blocker is not None:
            reasons[key] = f"cannot fold into {pair.weight_name}: {blocker}"
            continue
        weight = pair.weight
        with torch.no_grad():
            new_weight, new_bias = fold_weights(weight.weight, weight.bias, *affine)
            weight.weight.copy_(new_weight)
            if weight.bias is None:
                weight.bias = nn.Parameter(new_bias, requires_grad=weight.weight.requires_grad)
            else:
                weight.bias.copy_(new_bias)
        _set_identity(model, pair.norm)
        used.add(id(weight))
        del reasons[key]
        folded.append((norms[key][0], pair.weight_name))
    skipped = []
    for key, reason in reasons.items():
        affine_reason = eval_affine(norms[key][1])
        skipped.append((norms[key][0], affine_reason if isinstance(affine_reason, str) else reason))
    return FoldResult(model.eval(), folded, skipped)

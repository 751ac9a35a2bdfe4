"""What a normalization layer keeps of itself when surgery takes its normalization away.

Used by :func:`~normlab.surgery.remove_norm`, :func:`~normlab.surgery.replace_norm` and
:func:`~normlab.surgery.fold_batch_norm` (Ioffe & Szegedy 2015, arXiv:1502.03167, section 3.1:
only the normalization is an affine map at inference; what comes after it is not).

- A normlab :class:`~normlab.layers.base.NormLayer` says so itself (``without_norm()``:
  FRN+TLU keeps a ReLU).
- torch's own norm layers keep nothing (``nn.Identity``).
- A foreign norm layer with submodules carries its activation: timm's ``BatchNormAct2d`` (a
  ``BatchNorm2d`` whose forward is the batch norm, then ``self.drop``, then ``self.act``),
  ``GroupNormAct``, ``LayerNormAct``, ``FrozenBatchNormAct2d``. It keeps those submodules, in
  registration order, as one ``nn.Sequential`` (``nn.Identity`` ones left out). Its class
  cannot tell that they simply follow the normalization, so one eval-mode forward of a copy
  of the layer on a small random input decides: it must equal the submodules applied to the
  layer's normalization alone (a norm base class's ``forward``, or a FrozenBatchNorm2d's
  buffers). A layer that fails the probe is refused with its name.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.base import NormLayer
from .detect import (
    NORM_TYPES, channels_last, frozen_affine, is_frozen_batch_norm, norm_features,
    norm_spatial_dims,
)

__all__ = ["kept_after_norm", "check_kept"]


def _normalizations(layer: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """``layer``'s normalization of ``x`` without its submodules: from a FrozenBatchNorm2d's
    buffers, else the forward of each norm base class in method-resolution order (timm's
    ``LayerNormAct2d`` -> ``LayerNorm2d``, which permutes, before ``nn.LayerNorm``), skipping
    those that refuse ``x``."""
    if is_frozen_batch_norm(layer):
        affine = frozen_affine(layer)
        if not isinstance(affine, str):
            view = (1, -1) + (1,) * (x.dim() - 2)
            scale, shift = (t.to(x.dtype).reshape(view) for t in affine)
            yield x * scale + shift
        return
    if isinstance(layer, (nn.LayerNorm, nn.RMSNorm)) and x.dim() > 2 \
            and not channels_last(layer):  # permutes channel-first maps in its own forward
        rows = x.movedim(1, -1)
        if isinstance(layer, nn.LayerNorm):
            out = F.layer_norm(rows, layer.normalized_shape, layer.weight, layer.bias, layer.eps)
        else:
            out = F.rms_norm(rows, layer.normalized_shape, layer.weight, layer.eps)
        yield out.movedim(-1, 1)
    own = type(layer).forward
    for base in type(layer).__mro__[1:]:
        if not (isinstance(base, type) and issubclass(base, NORM_TYPES)) or base.forward is own:
            continue
        try:
            yield base.forward(layer, x.clone())
        except (RuntimeError, ValueError, TypeError):
            continue


def kept_after_norm(name: str, layer: nn.Module) -> nn.Module:
    """What stays in ``layer``'s place without its normalization, in its train/eval mode.

    Raises:
        ValueError: ``layer`` has submodules that do not simply follow its normalization
            (module docstring).
    """
    if isinstance(layer, NormLayer) or hasattr(layer, "without_norm"):
        return layer.without_norm().train(layer.training)
    children = _submodules(layer)
    if not children:
        return nn.Identity().train(layer.training)
    kept = nn.Sequential(*children).train(layer.training) if len(children) > 1 else children[0]
    if not _follows(name, layer, kept):
        raise ValueError(
            f"{name or 'the root'} ({type(layer).__name__}) is a norm layer with submodules "
            f"({', '.join(type(c).__name__ for c in children)}) whose forward is not its "
            f"normalization followed by them, so surgery cannot tell what to keep of it")
    return kept


def _submodules(layer: nn.Module) -> list[nn.Module]:
    """The children that run after the normalization: not ``nn.Identity`` ones, and not the
    ``parametrizations`` a ``torch.nn.utils.parametrize`` registration adds."""
    return [c for n, c in layer.named_children()
            if n != "parametrizations" and not isinstance(c, nn.Identity)]


def check_kept(layers: list[tuple[str, nn.Module]]) -> None:
    """Run :func:`kept_after_norm`'s check on every ``(name, layer)`` before anything changes."""
    for name, layer in layers:
        if _submodules(layer):
            kept_after_norm(name, layer)


def _randomize(probe: nn.Module) -> None:
    """Random statistics and affine on the probe copy: a fresh BatchNorm in eval mode is
    ``x / sqrt(1 + eps)``, which an elementwise submodule applied *before* it would pass."""
    gen = torch.Generator().manual_seed(1)
    state = dict(probe.named_parameters(recurse=False)) | dict(probe.named_buffers(recurse=False))
    for key, t in state.items():
        if not t.is_floating_point() or key not in ("weight", "bias", "running_mean",
                                                    "running_var"):
            continue
        low = 0.5 if key in ("weight", "running_var") else -1.0
        values = torch.rand(t.shape, generator=gen, dtype=torch.float64) * 1.5 + low
        t.data.copy_(values.to(t.dtype))


def _follows(name: str, layer: nn.Module, kept: nn.Module) -> bool:
    """One eval forward of copies: ``layer(x) == kept(normalization(x))``."""
    probe = copy.deepcopy(layer).eval()
    rest = copy.deepcopy(kept).eval()
    _randomize(probe)
    c = norm_features(name, layer)
    dims = 0 if channels_last(layer) else norm_spatial_dims(name, layer, 2)
    shape = (2, 3, c) if channels_last(layer) else (2, c, *[5 + i for i in range(dims)])
    ref = next(iter(list(probe.parameters()) + list(probe.buffers())), None)
    like = {"dtype": ref.dtype, "device": ref.device} if ref is not None and \
        ref.is_floating_point() else {}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(**like)
    with torch.no_grad():
        try:
            want = probe(x.clone())
        except (RuntimeError, ValueError, TypeError):
            return False
        if not isinstance(want, torch.Tensor):
            return False
        for normalized in _normalizations(probe, x):
            try:
                got = rest(normalized)
            except (RuntimeError, ValueError, TypeError):
                continue
            if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return True
    return False

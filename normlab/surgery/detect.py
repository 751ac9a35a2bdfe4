"""Which modules are normalization layers, and what shape of activation each one expects.

Used by the converters of :mod:`normlab.surgery` (Collins, Ballé & Shlens, "Accelerating
Training of Deep Neural Networks with a Standardization Loss", 2019, arXiv:1903.00925, compare
normalizations on one architecture: surgery swaps the normalization of any built network).

Nothing here runs a forward pass: the channel count and the number of spatial dimensions are
read from the layer's class and attributes.

==========================  ============================  =================================
layer                       num_features                  spatial_dims
==========================  ============================  =================================
BatchNorm1d                 ``num_features``              0 (the ``(N, C)`` case of MLPs;
                                                          torch's BatchNorm1d also takes
                                                          ``(N, C, L)``: ask for 1 by name)
BatchNorm2d / 3d            ``num_features``              2 / 3
InstanceNorm1d / 2d / 3d    ``num_features``              1 / 2 / 3
LayerNorm, RMSNorm          ``normalized_shape[0]``       ``len(normalized_shape) - 1``
GroupNorm                   ``num_channels``              not told by the class
SyncBatchNorm               ``num_features``              not told by the class
normlab NormLayer           ``num_features``              its ``spatial_dims`` attribute if
                                                          it has one, else not told
FrozenBatchNorm2d           its buffers' length           2
==========================  ============================  =================================

``FrozenBatchNorm2d`` (torchvision's detection backbones, detectron2, timm's
``freeze_batch_norm_2d``) is BatchNorm with its statistics and affine stored as buffers; it
subclasses ``nn.Module``, not torch's BatchNorm, so it is recognised by its class name and its
four equal-length buffers ``weight``, ``bias``, ``running_mean``, ``running_var``
(:func:`is_frozen_batch_norm`). Norm layers that carry an activation submodule (timm's
``BatchNormAct2d``) keep it through surgery (:mod:`normlab.surgery.norm_act`).

A LayerNorm or RMSNorm with a 1-D ``normalized_shape`` (``LayerNorm(C)``) normalizes the
*last* dim of whatever it is given: ``(N, C)`` features, ``(N, T, C)`` tokens, ``(N, H, W, C)``
maps. :func:`channels_last` says so; its replacement runs on the rows ``(M, C)`` of its input
(:class:`normlab.surgery.channels.ChannelsLast`), so the table's ``spatial_dims = 0`` is the
rows' shape. ``LayerNorm((C, H, W))`` is read as channel-first: it normalizes the whole sample
of an ``(N, C, H, W)`` input.

A *subclass* of LayerNorm/RMSNorm with its own ``forward`` may take channel-first maps and
permute them itself (timm's ``LayerNorm2d``/``LayerNorm3d``, ConvNeXt's
``data_format="channels_first"`` LayerNorm): its class cannot tell, so one forward of the
layer on a small random ``(2, C, H, W)`` (then 3-D, then 1-D) map decides
(:func:`channel_first_dims`); a layer that accepts one is channel-first with that many
spatial dims, and its replacement takes the same maps.
"""

from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..layers.base import NormLayer
from .channels import ChannelsLast

__all__ = ["NORM_TYPES", "is_norm_layer", "is_frozen_batch_norm", "frozen_affine", "norm_features",
           "norm_spatial_dims", "channels_last", "channel_first_dims"]

#: torch's normalization layers (the first entry covers BatchNorm1d/2d/3d, SyncBatchNorm and
#: the lazy variants; the second InstanceNorm1d/2d/3d).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, NormLayer,
)

_SPATIAL_BY_CLASS: dict[type[nn.Module], int] = {
    nn.BatchNorm1d: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3,
    nn.LazyBatchNorm1d: 0, nn.LazyBatchNorm2d: 2, nn.LazyBatchNorm3d: 3,
    nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3,
    nn.LazyInstanceNorm1d: 1, nn.LazyInstanceNorm2d: 2, nn.LazyInstanceNorm3d: 3,
}

SpatialDims = Union[int, Mapping[str, int], None]


def is_norm_layer(module: object) -> bool:
    """Whether ``module`` is a normalization layer surgery acts on.

    True for torch's BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d, GroupNorm,
    LayerNorm, RMSNorm (and their subclasses), for every
    :class:`~normlab.layers.base.NormLayer` and for FrozenBatchNorm2d
    (:func:`is_frozen_batch_norm`).
    """
    return isinstance(module, NORM_TYPES) or is_frozen_batch_norm(module)


_FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batch_norm(module: object) -> bool:
    """Whether ``module`` is a FrozenBatchNorm2d (torchvision, detectron2, timm; also timm's
    ``FrozenBatchNormAct2d``, whose activation submodules :mod:`.norm_act` keeps): a class
    named ``*FrozenBatchNorm*2d`` without parameters of its own, whose ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are buffers of one length ``C``."""
    if not isinstance(module, nn.Module):
        return False
    name = type(module).__name__
    if "FrozenBatchNorm" not in name or not name.endswith("2d"):
        return False
    if next(module.parameters(recurse=False), None) is not None:
        return False
    buffers = dict(module.named_buffers(recurse=False))
    if not all(isinstance(buffers.get(k), torch.Tensor) for k in _FROZEN_BUFFERS):
        return False
    shapes = {buffers[k].shape for k in _FROZEN_BUFFERS}
    return len(shapes) == 1 and len(next(iter(shapes))) == 1


def frozen_affine(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A FrozenBatchNorm2d's eval map in float64, ``scale = weight / sqrt(running_var + eps)``,
    ``shift = bias - running_mean * scale``, or why it has none (no numeric ``eps``)."""
    eps = getattr(layer, "eps", None)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        return f"{type(layer).__name__} has no numeric eps attribute"
    scale = torch.rsqrt(layer.running_var.to(torch.float64) + eps)
    scale = scale * layer.weight.to(torch.float64)
    return scale, layer.bias.to(torch.float64) - layer.running_mean.to(torch.float64) * scale


def _one_dim(layer: nn.Module) -> bool:
    """A LayerNorm/RMSNorm over one dim (``LayerNorm(C)``)."""
    shape = layer.normalized_shape
    return not isinstance(shape, (tuple, list)) or len(shape) == 1


def channel_first_dims(layer: nn.Module) -> int | None:
    """For a one-dim LayerNorm/RMSNorm subclass with its own ``forward``: the spatial dims of
    the channel-first ``(N, C, *spatial)`` maps it takes, found by running it once on small
    random maps (2, then 3, then 1 spatial dims, sizes unequal to C); ``None`` when it takes
    none of them (channel-last input, like the base class) or is not such a subclass."""
    base = nn.LayerNorm if isinstance(layer, nn.LayerNorm) else nn.RMSNorm
    if not isinstance(layer, (nn.LayerNorm, nn.RMSNorm)) or not _one_dim(layer) \
            or type(layer).forward is base.forward:
        return None
    c = norm_features("", layer)
    ref = next(iter(layer.parameters()), None)
    like = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    for dims in (2, 3, 1):
        x = torch.randn(2, c, *[c + 1 + i for i in range(dims)], **like)
        try:
            with torch.no_grad():
                out = type(layer).forward(layer, x)  # the layer alone: no hooks of the model
        except (RuntimeError, ValueError):
            continue
        if isinstance(out, torch.Tensor) and out.shape == x.shape:
            return dims
    return None


def channels_last(layer: nn.Module) -> bool:
    """Whether ``layer`` normalizes the last dim of any-rank input (``LayerNorm(C)``,
    ``RMSNorm(C)``, a :class:`~normlab.surgery.channels.ChannelsLast` replacement of one):
    its channels are on the last dim, not on dim 1. A subclass that takes channel-first maps
    (:func:`channel_first_dims`) is not."""
    if isinstance(layer, ChannelsLast):
        return True
    if not isinstance(layer, (nn.LayerNorm, nn.RMSNorm)):
        return False
    return _one_dim(layer) and channel_first_dims(layer) is None


def norm_features(name: str, layer: nn.Module) -> int:
    """The channel count of normalization layer ``layer`` (dim 1 of its input, or the last
    dim where :func:`channels_last`).

    Raises:
        ValueError: a lazy layer not yet initialized, or a layer without a channel count.
    """
    if isinstance(layer, nn.GroupNorm):
        features = layer.num_channels
    elif is_frozen_batch_norm(layer):
        features = layer.running_mean.numel()
    elif isinstance(layer, (nn.LayerNorm, nn.RMSNorm)):
        shape = layer.normalized_shape
        features = shape[0] if isinstance(shape, (tuple, list)) else int(shape)
    else:
        features = getattr(layer, "num_features", None)
    if not isinstance(features, int) or features <= 0:
        raise ValueError(
            f"cannot read the channel count of {name or 'the root'} ({type(layer).__name__}): "
            f"got num_features={features!r} (an uninitialized lazy layer? run one forward first)"
        )
    return features


def norm_spatial_dims(name: str, layer: nn.Module, spatial_dims: SpatialDims = None) -> int:
    """The number of spatial dims of the input ``layer`` normalizes (0 for ``(N, C)``).

    Args:
        name: qualified name of ``layer`` in its model (for ``spatial_dims`` maps and errors).
        layer: a normalization layer.
        spatial_dims: a mapping from qualified names to spatial dims (an entry wins over what
            the class says), or an int used for layers whose class does not tell (GroupNorm,
            SyncBatchNorm, NormLayers without a ``spatial_dims`` attribute).

    Raises:
        ValueError: the class does not tell and ``spatial_dims`` gives no answer.
    """
    if isinstance(spatial_dims, Mapping) and name in spatial_dims:
        return int(spatial_dims[name])
    for cls, dims in _SPATIAL_BY_CLASS.items():
        # exact class first: SyncBatchNorm subclasses _BatchNorm, not BatchNorm2d, so it
        # falls through to "not told"
        if type(layer) is cls:
            return dims
    if is_frozen_batch_norm(layer):
        return 2
    if isinstance(layer, (nn.LayerNorm, nn.RMSNorm)):
        first = channel_first_dims(layer)
        if first is not None:
            return first
        shape = layer.normalized_shape
        return len(shape) - 1 if isinstance(shape, (tuple, list)) else 0
    for cls, dims in _SPATIAL_BY_CLASS.items():
        if isinstance(layer, cls):
            return dims
    attr = getattr(layer, "spatial_dims", None)
    if isinstance(attr, int) and not isinstance(attr, bool):
        return attr
    if isinstance(spatial_dims, int) and not isinstance(spatial_dims, bool):
        return spatial_dims
    raise ValueError(
        f"cannot tell the input shape of {name or 'the root'} ({type(layer).__name__}) from its "
        f"class: pass spatial_dims=<0 for (N, C), 2 for (N, C, H, W), ...> or a mapping "
        f"{{{name!r}: dims}}"
    )

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
==========================  ============================  =================================

LayerNorm is read as channel-first: ``LayerNorm(C)`` normalizes the features of ``(N, C)``
inputs (an MLP) and ``LayerNorm((C, H, W))`` the whole sample of an ``(N, C, H, W)`` input.
A transformer's ``LayerNorm(C)`` on ``(N, T, C)`` tokens has its channels last, a layout the
channel-first layers of normlab do not take; replacing it is not supported.
"""

from __future__ import annotations

from typing import Mapping, Union

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..layers.base import NormLayer

__all__ = ["NORM_TYPES", "is_norm_layer", "norm_features", "norm_spatial_dims"]

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
    LayerNorm, RMSNorm (and their subclasses) and for every
    :class:`~normlab.layers.base.NormLayer`.
    """
    return isinstance(module, NORM_TYPES)


def norm_features(name: str, layer: nn.Module) -> int:
    """The channel count (dim 1 of the input) of normalization layer ``layer``.

    Raises:
        ValueError: a lazy layer not yet initialized, or a layer without a channel count.
    """
    if isinstance(layer, nn.GroupNorm):
        features = layer.num_channels
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
    if isinstance(layer, (nn.LayerNorm, nn.RMSNorm)):
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

"""What every normlab normalization layer shares, so surgery can find, swap and fold it.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations on one architecture and deploy without
any: :mod:`normlab.surgery` reads what it needs from the attributes and hooks of
:class:`NormLayer` defined here. Also here: the input check every layer shares and the
float32-statistics rule for half-precision inputs (as torch's BatchNorm does under autocast).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

__all__ = ["NormLayer", "with_spatial_dims", "check_channels", "stats_dtype", "autocast_off"]


class NormLayer(nn.Module):
    """Marker base class of normlab's normalization layers.

    :func:`normlab.surgery.replace_norm` and :func:`normlab.surgery.remove_norm` treat every
    ``NormLayer`` (and torch's BatchNorm/InstanceNorm/GroupNorm/LayerNorm) as a normalization.
    A layer whose eval-mode output is a per-channel affine map of its input overrides
    :meth:`eval_affine`; :func:`normlab.surgery.fold_batch_norm` then folds it into the
    preceding convolution or linear layer. A layer that carries a nonlinearity (FRN's TLU,
    Proxy Norm's activation) overrides :meth:`without_norm`, so that surgery keeps the
    nonlinearity when it takes the normalization out.

    Attributes:
        num_features: channels (dim 1 of the input).
        spatial_dims: the number of spatial dims of the input the layer is built for (0 for
            ``(N, C)``, 2 for ``(N, C, H, W)``), or ``None`` when not told. Read by
            :func:`normlab.surgery.norm_spatial_dims` when ``replace_norm`` builds the
            replacement (which, unlike most normlab layers, may need to know: torch's
            BatchNorm1d vs 2d). Methods record it on the layers they build
            (:func:`with_spatial_dims`); layers that check their input's rank against it
            (the L1/top-k/Range BN family) take it as a constructor argument.
        follows_norm: ``True`` for a layer that completes a block begun by another
            normalization right before it (:class:`ProxyNormActivation` after a GN/LN without
            affine map). ``replace_norm`` replaces such a layer by :meth:`without_norm` alone:
            the preceding layer's replacement already normalizes.
    """

    num_features: int
    spatial_dims: int | None = None
    follows_norm: bool = False

    def eval_affine(self) -> tuple[Tensor, Tensor] | None:
        """``(scale, shift)`` of shape ``(C,)`` with ``eval output = x * scale + shift`` per
        channel, or ``None`` when the eval-mode map is not per-channel affine."""
        return None

    def without_norm(self) -> nn.Module:
        """What stays of this layer when its normalization is taken out.

        ``nn.Identity()`` for a pure normalization (the default); the nonlinearity for a layer
        that carries one. Used by :func:`normlab.surgery.remove_norm` (the layer becomes
        this) and :func:`normlab.surgery.replace_norm` (the layer becomes the new norm
        followed by this).
        """
        return nn.Identity()


def with_spatial_dims(layer: NormLayer, spatial_dims: int) -> NormLayer:
    """Record on ``layer`` the number of spatial dims of its input (see
    :attr:`NormLayer.spatial_dims`) and return it; for ``Method.norm`` implementations."""
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims < 0:
        raise ValueError(f"spatial_dims must be an int >= 0, got {spatial_dims!r}")
    layer.spatial_dims = spatial_dims
    return layer


def check_channels(x: Tensor, num_features: int, layer: str) -> None:
    """Raise a clear error unless ``x`` is a floating ``(N, num_features, *spatial)`` tensor.

    Raises:
        TypeError: ``x`` is not a tensor, or not floating point.
        ValueError: fewer than 2 dims, or ``x.shape[1] != num_features``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{layer} expects an (N, C, *spatial) input, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != num_features:
        raise ValueError(
            f"{layer} was built for {num_features} channels (dim 1) but got an input of shape "
            f"{tuple(x.shape)} with {x.shape[1]} channels"
        )
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point input, got dtype {x.dtype}")


_HALF = (torch.float16, torch.bfloat16)


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype batch statistics of ``x`` are computed in: float32 for float16/bfloat16
    inputs (whose 8- or 11-bit mantissas lose the mean and variance of a few thousand values,
    torch's BatchNorm makes the same choice), else ``x.dtype``."""
    return torch.float32 if x.dtype in _HALF else x.dtype


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``x``'s device (a no-op where it is off).

    Layers whose statistics use matrix products (whitening, Kalman prediction) run them
    inside it: autocast would otherwise recast them to bfloat16 and mix dtypes with the
    float32 buffers.
    """
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()

"""What every normlab normalization layer shares, so surgery can find, swap and fold it.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations on one architecture and deploy without
any: :mod:`normlab.surgery` reads what it needs from the attributes and hooks of
:class:`NormLayer` defined here. Also here: the input check every layer shares, the
float32-statistics rule for half-precision inputs (as torch's BatchNorm does under autocast),
the constructor pieces (argument checks, affine parameters, running averages) that the
torch-compatible ``(num_features, eps, momentum, affine, ...)`` layers have in common, and the
base classes built from them (:class:`RunningStatsNorm`, :class:`ChannelMatrixNorm`,
:class:`BatchStatNorm`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..checks import check_count, check_eps, check_momentum
from ..functional.whitening import channel_matrix, from_channel_matrix

__all__ = ["NormLayer", "with_spatial_dims", "check_channels", "stats_dtype", "autocast_off",
           "check_norm_args", "channel_parameters", "init_affine", "reset_affine",
           "channel_affine", "update_running_", "check_batch_values", "channel_matrix_forward",
           "running_affine", "RunningStatsNorm", "ChannelMatrixNorm", "BatchStatNorm"]


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


def check_norm_args(num_features: int, eps: float, momentum: float, *,
                    zero_eps: bool = False) -> None:
    """Raise a clear ``ValueError`` for a bad ``num_features``, ``eps`` or ``momentum``.

    Args:
        num_features: must be an int >= 1 (a bool is not a channel count).
        eps: must be > 0, or >= 0 when ``zero_eps`` (layers whose divisor cannot reach 0
            without it, e.g. a dispersion plus eps, allow eps = 0).
        momentum: must be in ``[0, 1]`` (torch's convention: the weight of the new batch).
    """
    check_count(num_features, "num_features")
    check_eps(eps, zero_ok=zero_eps)
    check_momentum(momentum)


def channel_parameters(module: nn.Module, num_features: int, factory: Mapping[str, object],
                       **wanted: bool) -> None:
    """Give ``module`` an uninitialized ``(num_features,)`` parameter for each name in
    ``wanted`` whose flag is true, and register ``None`` under the others (as torch's
    BatchNorm does for a missing affine map, so ``state_dict`` and surgery see the same
    names). Registered in the order given.

    Args:
        factory: ``{"device": ..., "dtype": ...}`` for the new tensors.
        wanted: parameter name -> whether the layer has it (e.g. ``tau=tlu``).
    """
    for name, flag in wanted.items():
        if flag:
            setattr(module, name, nn.Parameter(torch.empty(num_features, **factory)))
        else:
            module.register_parameter(name, None)


def init_affine(module: nn.Module, num_features: int, affine: bool,
                factory: Mapping[str, object], *, scale: bool = True) -> None:
    """Give ``module`` its per-channel ``weight`` (when ``affine and scale``) and ``bias``
    (when ``affine``) as uninitialized ``(num_features,)`` parameters, or register ``None``
    in their place (as torch's BatchNorm does, so ``state_dict`` and surgery see the same
    names). :func:`reset_affine` gives them their initial values.

    Args:
        factory: ``{"device": ..., "dtype": ...}`` for the new tensors.
        scale: ``False`` for a shift-only layer (no ``weight`` even when ``affine``).
    """
    channel_parameters(module, num_features, factory, weight=affine and scale, bias=affine)


def reset_affine(module: nn.Module) -> None:
    """``weight`` to 1 and ``bias`` to 0, each where the module has it (the identity map)."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * y + bias`` per row of a ``(C, M)`` channel matrix, in ``y``'s dtype;
    ``y`` itself when the layer has no affine map (``weight is None``)."""
    if weight is None:
        return y
    return y * weight.to(y.dtype)[:, None] + bias.to(y.dtype)[:, None]


@torch.no_grad()
def update_running_(running: Tensor, batch: Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place, in the buffer's
    own dtype (a half-precision batch statistic does not change the buffer's dtype)."""
    running.lerp_(batch.detach().to(running.dtype), momentum)


def running_affine(inv_std: Tensor, running_mean: Tensor, weight: Tensor | None,
                   bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of the eval map ``weight * (x - running_mean) * inv_std + bias`` of
    a BN-like layer (for :meth:`NormLayer.eval_affine`); a missing ``weight`` or ``bias`` is
    left out."""
    scale = inv_std
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def check_batch_values(xm: Tensor, x: Tensor) -> None:
    """Raise ``ValueError`` unless the ``(C, M)`` channel matrix ``xm`` of input ``x`` has
    more than one value per channel (training statistics of one value are degenerate)."""
    if xm.shape[1] < 2:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input "
            f"shape {tuple(x.shape)}"
        )


def channel_matrix_forward(x: Tensor, num_features: int,
                           normalize: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Run ``normalize(xm, x)`` on the ``(C, M)`` channel matrix of ``x`` and reshape back.

    For layers whose statistics are matrix products or iterations over the channel matrix
    (whitening, mixtures, Kalman prediction): half-precision inputs (autocast) are handled
    in float32 with autocast off, since those products lose too much in bfloat16 and would
    mix dtypes with the float32 buffers; the output has the input's dtype, as torch's BN.

    Raises:
        ValueError: ``x`` is not ``(N, num_features, *)``.
    """
    if x.dim() < 2 or x.shape[1] != num_features:
        raise ValueError(
            f"expected input (N, {num_features}, *), got shape {tuple(x.shape)}"
        )
    with autocast_off(x):
        y = normalize(channel_matrix(x).to(stats_dtype(x)), x)
    return from_channel_matrix(y.to(x.dtype), x)


class RunningStatsNorm(NormLayer):
    """Base of the torch-style ``(num_features, eps, momentum, affine, ..., device, dtype)``
    layers that normalize with batch statistics in training and running averages in eval:
    the argument checks, the attributes of those names, the affine parameters
    (:func:`init_affine`) and ``reset_parameters``.

    A subclass registers its running buffers after ``super().__init__`` and ends its own
    constructor with ``self.reset_parameters()``. The default :meth:`reset_running_stats`
    is for ``running_mean`` / ``running_var`` buffers; a layer with others overrides it.
    """

    def __init__(self, num_features: int, eps: float, momentum: float, affine: bool,
                 device: torch.device | str | None, dtype: torch.dtype | None, *,
                 zero_eps: bool = False, scale: bool = True) -> None:
        super().__init__()
        check_norm_args(num_features, eps, momentum, zero_eps=zero_eps)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        init_affine(self, num_features, affine, {"device": device, "dtype": dtype},
                    scale=scale)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def reset_parameters(self) -> None:
        """Running statistics and then the affine map to their initial values."""
        self.reset_running_stats()
        reset_affine(self)


class ChannelMatrixNorm(RunningStatsNorm):
    """Base of the layers whose statistics are matrix products or iterations over the
    ``(C, M)`` channel matrix (whitening, mixtures, Kalman prediction).

    ``forward`` runs :func:`channel_matrix_forward` (float32 with autocast off for
    half-precision inputs), checks that a training batch has more than one value per
    channel, and applies the per-channel affine map to what the subclass's
    :meth:`_normalize` returns.
    """

    def forward(self, x: Tensor) -> Tensor:
        return channel_matrix_forward(x, self.num_features, self._normalize_affine)

    def _normalize_affine(self, xm: Tensor, x: Tensor) -> Tensor:
        if self.training:
            check_batch_values(xm, x)
        return channel_affine(self._normalize(xm), self.weight, self.bias)

    def _normalize(self, xm: Tensor) -> Tensor:
        """The normalized ``(C, M)`` channel matrix (before the affine map), in ``xm``'s
        dtype; in training also updates the running statistics."""
        raise NotImplementedError


class BatchStatNorm(RunningStatsNorm):
    """Base of the batch-statistics layers with a running mean and a running dispersion
    (:mod:`.dispersion_batch_norm`, :mod:`.batch_renorm`): their parameters, buffers, input
    check and eval affine map.

    ``_disp_buffer`` names the running dispersion buffer (``running_disp``, or
    ``running_var`` for Batch Renorm), whose eval-mode std is given by ``_running_std``.
    """

    _disp_buffer = "running_disp"

    def __init__(self, num_features: int, eps: float, momentum: float, affine: bool,
                 scale: bool, spatial_dims: int | None, device, dtype) -> None:
        super().__init__(num_features, eps, momentum, affine, device, dtype, zero_eps=True,
                         scale=scale)
        if spatial_dims is not None and spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims must be None or 0-3, got {spatial_dims}")
        factory = {"device": device, "dtype": dtype}
        self.scale = scale and affine
        self.spatial_dims = spatial_dims
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer(self._disp_buffer, torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                 device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        getattr(self, self._disp_buffer).fill_(1.0)
        self.num_batches_tracked.zero_()

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a Tensor, got {type(x).__name__}")
        if self.spatial_dims is None:
            if x.dim() < 2:
                raise ValueError(f"{type(self).__name__} expects (N, C, *) input, "
                                 f"got shape {tuple(x.shape)}")
        elif x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} with spatial_dims={self.spatial_dims} expects "
                f"{self.spatial_dims + 2}-D input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects {self.num_features} channels "
                             f"(dim 1), got shape {tuple(x.shape)}")

    def _running_std(self) -> Tensor:
        """The eval-mode divisor (including eps)."""
        return self.running_disp + self.eps

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)``, each ``(C,)``: the eval output is ``x * scale + shift``."""
        return running_affine(1.0 / self._running_std(), self.running_mean, self.weight,
                              self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, scale={self.scale}, spatial_dims={self.spatial_dims}")

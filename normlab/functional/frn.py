"""Filter Response Normalization and the Thresholded Linear Unit, as pure functions.

Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch Dependence in the
Training of Deep Neural Networks", 2020, arXiv:1911.09737 (section 3, eq. 1-4).

For each sample ``n`` and channel ``c`` FRN divides the filter response by the root of its
mean square over the spatial dimensions (no mean is subtracted)::

    nu2[n, c] = mean_{h, w} x[n, c, h, w]^2
    y = gamma_c * x / sqrt(nu2[n, c] + eps) + beta_c
    z = max(y, tau_c)                                   (TLU)

Nothing is shared across the batch, so a sample's output never depends on its batch mates.
On ``(N, C)`` inputs ``nu2 = x^2`` and ``x / sqrt(x^2 + eps)`` is a soft sign of ``x``: the
paper makes ``eps`` learnable for such 1x1 activation maps, which the layer does
(:class:`normlab.layers.frn.FilterResponseNorm`); here ``eps`` may be a float or a
per-channel tensor already made positive by the caller.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = ["filter_response_norm", "tlu"]


def _per_channel(v: Tensor, x: Tensor, what: str) -> Tensor:
    """``v`` of shape ``(C,)`` viewed to broadcast over ``x``'s dim 1."""
    if v.dim() != 1 or v.numel() != x.shape[1]:
        raise ValueError(
            f"{what} must have shape ({x.shape[1]},) to match the {x.shape[1]} channels of an "
            f"input of shape {tuple(x.shape)}, got {tuple(v.shape)}"
        )
    return v.view([1, -1] + [1] * (x.dim() - 2))


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"expected an (N, C, *spatial) input, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: Union[float, Tensor] = 1e-6,
) -> Tensor:
    """FRN without the TLU: ``weight * x / sqrt(mean_spatial(x^2) + eps) + bias``.

    Args:
        x: pre-activation.
        weight: per-channel scale gamma, or ``None`` for 1.
        bias: per-channel shift beta, or ``None`` for 0.
        eps: a positive float, or a positive tensor of shape ``(C,)`` (one per channel).

    Shape:
        x: ``(N, C, *spatial)`` with any number (also zero) of spatial dims; output the same.
    """
    _check_input(x)
    dims = tuple(range(2, x.dim()))
    # mean over no dims must be the element itself, which x * x already is.
    nu2 = (x * x).mean(dim=dims, keepdim=True) if dims else x * x
    if isinstance(eps, Tensor):
        eps = _per_channel(eps, x, "eps")
    elif not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    # Fold gamma into the (N, C, 1, ...) scale first: one full-size pass instead of three.
    scale = torch.rsqrt(nu2 + eps)
    if weight is not None:
        scale = scale * _per_channel(weight, x, "weight")
    if bias is None:
        return x * scale
    return torch.addcmul(_per_channel(bias, x, "bias"), x, scale)


def tlu(x: Tensor, tau: Tensor) -> Tensor:
    """Thresholded Linear Unit ``max(x, tau_c)`` (= ``relu(x - tau) + tau``).

    Shape:
        x: ``(N, C, *spatial)``; tau: ``(C,)``; output like ``x``.
    """
    _check_input(x)
    return torch.maximum(x, _per_channel(tau, x, "tau"))

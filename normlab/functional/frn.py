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

:func:`filter_response_norm_tlu` computes FRN+TLU in one :class:`torch.autograd.Function`
with an analytic backward (same maths, far fewer full-size passes than the composite
``tlu(filter_response_norm(...))``, which stays as the reference). With ``r = (nu2+eps)^-1/2``,
``z = gamma x r + beta``, ``g = dL/dy``, ``gz = g [z > tau]``, ``A = sum_hw gz x``, ``M = HW``::

    dL/dx     = gamma r gz - (gamma r^3 A / M) x        (d r / d x_i = -r^3 x_i / M)
    dL/dgamma = sum_n r A          dL/dbeta = sum_{n,hw} gz
    dL/dtau   = sum_{n,hw} g [z <= tau]
    dL/deps_c = sum_n -gamma r^3 A / 2                  (eps a (C,) tensor)

Ties ``z == tau`` send the gradient to ``tau`` (normlab's choice, the ReLU convention: with
``tau = 0`` the gradient is exactly ``torch.relu``'s; ``torch.maximum`` in the composite path
splits it 1/2 : 1/2 instead, so the two paths differ only on exact ties).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = ["filter_response_norm", "tlu", "filter_response_norm_tlu", "frn_fusable"]


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


def _spatial_dot(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``sum_{dims} a * b`` with keepdim; one pass without a temporary when both are dense."""
    if not dims:
        return a * b
    if a.is_contiguous() and b.is_contiguous():
        # vecdot over (N*C, M) rows reads both operands once and writes nothing full-size.
        rows = a.shape[0] * a.shape[1]
        out = torch.linalg.vecdot(a.reshape(rows, -1), b.reshape(rows, -1))
        return out.view(list(a.shape[:2]) + [1] * len(dims))
    return (a * b).sum(dim=dims, keepdim=True)


class _FRNTLUFunction(torch.autograd.Function):
    """FRN (+ TLU when ``tau`` is given) with the analytic backward of the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor | None,
                eps: Union[float, Tensor]) -> Tensor:
        dims = tuple(range(2, x.dim()))
        m = 1
        for d in dims:
            m *= x.shape[d]
        shape = [1, -1] + [1] * len(dims)
        # ||x||^2 / M is the spatial mean square; vector_norm reads x once, allocates nothing.
        nu2 = (torch.linalg.vector_norm(x, dim=dims, keepdim=True).square_().div_(m)
               if dims else x * x)
        eps_v = eps.view(shape) if isinstance(eps, Tensor) else eps
        r = torch.rsqrt(nu2 + eps_v)
        y = (x * (r * weight.view(shape))).add_(bias.view(shape))
        if tau is not None:
            y.clamp_min_(tau.view(shape))
        ctx.dims, ctx.m, ctx.shape = dims, m, shape
        ctx.eps_is_tensor = isinstance(eps, Tensor)
        ctx.save_for_backward(x, weight, r, tau, y if tau is not None else None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x, weight, r, tau, y = ctx.saved_tensors
        dims, m, shape = ctx.dims, ctx.m, ctx.shape
        need_x, need_w, need_b, need_t, need_e = ctx.needs_input_grad
        if tau is not None:
            # y - tau >= 0, and is exactly 0 iff z <= tau (IEEE subtraction of distinct floats
            # is nonzero), so its sign is the 0/1 mask [z > tau]: cheaper than a bool mask.
            gz = y.sub(tau.view(shape)).sign_().mul_(g)
            own_gz = True
        else:
            gz, own_gz = g, False
        sum_nd = (0,) + dims
        grad_x = grad_w = grad_b = grad_t = grad_e = None
        # Sums of gz first: the grad_x step below overwrites gz in place.
        gz_sum = gz.sum(dim=sum_nd) if (need_b or need_t) else None
        if need_b:
            grad_b = gz_sum
        if need_t and tau is not None:
            grad_t = g.sum(dim=sum_nd) - gz_sum
        if need_x or need_w or need_e:
            a_sum = _spatial_dot(gz, x, dims)  # (N, C, 1...): sum_hw gz x
            w = weight.view(shape)
            coef_x = (w * r.pow(3)).mul_(a_sum).div_(-m)  # -gamma r^3 A / M
            if need_w:
                grad_w = (r * a_sum).sum(dim=0).reshape(-1)
            if need_e and ctx.eps_is_tensor:
                grad_e = (coef_x * (m / 2)).sum(dim=0).reshape(-1)
            if need_x:
                scale = r * w
                grad_x = gz.mul_(scale) if own_gz else gz * scale
                grad_x.addcmul_(x, coef_x)
        return grad_x, grad_w, grad_b, grad_t, grad_e


def frn_fusable(x: Tensor, *params: Tensor | float | None) -> bool:
    """Whether :func:`filter_response_norm_tlu` may take its fused path for these inputs.

    Fused: ``x`` float32/float64 on CPU or CUDA, non-empty, every tensor parameter of the same
    dtype and device, autocast off (under autocast the composite path lets autocast pick
    dtypes op by op).
    """
    if x.dtype not in (torch.float32, torch.float64) or x.device.type not in ("cpu", "cuda"):
        return False
    if x.numel() == 0 or torch.is_autocast_enabled(x.device.type):
        return False
    return all(not isinstance(p, Tensor) or (p.dtype == x.dtype and p.device == x.device)
               for p in params)


def filter_response_norm_tlu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    tau: Tensor | None = None,
    eps: Union[float, Tensor] = 1e-6,
    fused: bool | None = None,
) -> Tensor:
    """FRN then TLU, ``max(weight * x / sqrt(mean_spatial(x^2) + eps) + bias, tau)``.

    Args:
        x: pre-activation.
        weight: per-channel scale gamma ``(C,)``.
        bias: per-channel shift beta ``(C,)``.
        tau: per-channel TLU threshold ``(C,)``, or ``None`` for FRN alone.
        eps: a positive float, or a positive ``(C,)`` tensor (gradients flow into it).
        fused: ``None`` picks the fused autograd Function when :func:`frn_fusable`, ``False``
            forces the composite reference ``tlu(filter_response_norm(...))``, ``True``
            requires the fused path (``ValueError`` if the inputs do not allow it). The fused
            backward is not differentiable twice (no ``create_graph`` through it).

    Shape:
        x: ``(N, C, *spatial)`` with any number (also zero) of spatial dims; output the same.
    """
    _check_input(x)
    if fused is None:
        fused = frn_fusable(x, weight, bias, tau, eps)
    if not fused:
        y = filter_response_norm(x, weight, bias, eps)
        return tlu(y, tau) if tau is not None else y
    if not frn_fusable(x, weight, bias, tau, eps):
        raise ValueError(
            "fused FRN needs a non-empty float32/float64 CPU/CUDA input with parameters of "
            f"its dtype and device and autocast off; got x {x.dtype} on {x.device}")
    for v, what in ((weight, "weight"), (bias, "bias"), (tau, "tau"), (eps, "eps")):
        if isinstance(v, Tensor):
            _per_channel(v, x, what)
        elif v is None and what != "tau":
            raise TypeError(f"{what} must be a tensor of shape ({x.shape[1]},), got None")
    if not isinstance(eps, Tensor) and not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return _FRNTLUFunction.apply(x, weight, bias, tau, eps)

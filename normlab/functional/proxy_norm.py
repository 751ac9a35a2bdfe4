"""Proxy Normalization of post-activations, as pure functions.

Labatie, Masters, Eaton-Rosen & Luschi, "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence", 2021, arXiv:2106.03743.

After a batch-independent normalization (LN or GN) has made a pre-activation ``z`` roughly
standard per channel, Proxy Norm applies the affine map and the activation ``phi``, then
normalizes the post-activation with the moments of a *proxy*: the same map applied to a
standard normal variable ``Z ~ N(0, 1)`` instead of the data::

    y      = phi(gamma_c * z + beta_c)
    mu_c   = E[phi(gamma_c * Z + beta_c)]
    var_c  = Var[phi(gamma_c * Z + beta_c)]
    y_hat  = (y - mu_c) / sqrt(var_c + eps)

The proxy moments are functions of ``gamma`` and ``beta`` only, so they cost nothing per
sample, need no batch, and pass gradients to ``gamma`` and ``beta``.

**How the expectations are computed (normlab's choice).** In float64, then cast back:

- Piecewise-linear activations have closed forms, used whenever the activation is one of
  them: ``nn.ReLU`` (and ``torch.relu``, ``F.relu``), ``nn.LeakyReLU`` and ``nn.Hardtanh``
  (so ``nn.ReLU6``). With ``X = gamma Z + beta``, ``s = |gamma|``, ``m(c) = E[relu(X - c)] =
  (beta - c) Phi(t) + s phi(t)`` and ``q(c) = E[relu(X - c)^2] = ((beta - c)^2 + s^2) Phi(t)
  + (beta - c) s phi(t)`` (``t = (beta - c) / s``); leaky ReLU is ``relu(X) - a relu(-X)``
  (the cross term vanishes) and ``hardtanh = lo + relu(X - lo) - relu(X - hi)`` (cross term
  ``E[relu(X - lo) relu(X - hi)] = q(hi) + (hi - lo) m(hi)``). Their gradients in ``gamma``
  and ``beta`` are exact (a quadrature's derivative is not: for ReLU the 513-node rule below
  moves in steps as the kink crosses a node, up to 1.6% off).
- Any other activation: a Gaussian-weighted trapezoid rule on a fixed uniform grid, nodes
  ``t_k`` evenly spaced on ``[-8, 8]``, weights ``w_k ∝ exp(-t_k^2 / 2)`` normalized to sum
  to one, ``E[f(Z)] ≈ sum_k w_k f(t_k)``. For an activation analytic in a strip around the
  real axis (sigmoid, tanh, GELU, SiLU) the error falls like ``exp(-2 pi d / h)`` (``d`` the
  strip's half-width over ``|gamma|``, ``h = 1/32``): below float32 rounding for ``|gamma|``
  up to about 20, gradients included. Gauss-Hermite quadrature would do as well there but
  not at a kink; at a kink the trapezoid rule is ``O(h^2)`` (about 6e-5 in the mean), which
  is why kinked activations get closed forms.

The grid is deterministic, so training is reproducible and the layer has no sampling noise.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["gaussian_grid", "proxy_moments", "proxy_norm", "DEFAULT_NUM_NODES",
           "DEFAULT_HALF_WIDTH"]

DEFAULT_NUM_NODES = 513
DEFAULT_HALF_WIDTH = 8.0


def gaussian_grid(
    num_nodes: int = DEFAULT_NUM_NODES,
    half_width: float = DEFAULT_HALF_WIDTH,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the Gaussian-weighted trapezoid rule for ``E[f(Z)], Z ~ N(0, 1)``.

    Args:
        num_nodes: grid points (odd counts put a node at 0).
        half_width: the grid spans ``[-half_width, half_width]``; the N(0,1) mass beyond 8 is
            about 1e-15.

    Returns:
        ``(nodes, weights)``, each of shape ``(num_nodes,)``; the weights sum to 1.
    """
    if not isinstance(num_nodes, int) or num_nodes < 3:
        raise ValueError(f"num_nodes must be an int >= 3, got {num_nodes!r}")
    if not half_width > 0:
        raise ValueError(f"half_width must be positive, got {half_width!r}")
    # Built in float64 and cast once, so float32 weights still sum to 1 to rounding.
    nodes = torch.linspace(-half_width, half_width, num_nodes, dtype=torch.float64)
    weights = torch.exp(-0.5 * nodes * nodes)
    weights = weights / weights.sum()
    dtype = dtype or torch.get_default_dtype()
    return nodes.to(device=device, dtype=dtype), weights.to(device=device, dtype=dtype)


def proxy_moments(
    activation: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor,
    nodes: Tensor,
    weights: Tensor,
) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``activation(weight * Z + bias)`` per channel, ``Z ~ N(0, 1)``.

    Closed forms for ReLU, leaky ReLU and hardtanh (ReLU6), the quadrature rule otherwise;
    computed in float64 and returned in ``weight``'s dtype.

    Args:
        activation: an elementwise function (``nn.ReLU()``, ``torch.sigmoid``, ...).
        weight, bias: per-channel gamma and beta, shape ``(C,)``.
        nodes, weights: a quadrature rule from :func:`gaussian_grid`.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``; differentiable in ``weight`` and ``bias``.
    """
    if weight.dim() != 1 or bias.shape != weight.shape:
        raise ValueError(
            f"weight and bias must both have shape (C,), got {tuple(weight.shape)} and "
            f"{tuple(bias.shape)}"
        )
    if nodes.dim() != 1 or nodes.shape != weights.shape:
        raise ValueError("nodes and weights must be 1-D tensors of the same length")
    dtype = weight.dtype
    weight, bias = weight.double(), bias.double()
    closed = _closed_form_moments(activation, weight, bias)
    if closed is not None:
        return closed[0].to(dtype), closed[1].to(dtype)
    nodes, weights = nodes.double(), weights.double()
    weights = weights / weights.sum()  # float32 weights summed to 1 only to rounding
    proxy = activation(weight[:, None] * nodes[None, :] + bias[:, None])  # (C, K)
    mean = proxy @ weights
    dev = proxy - mean[:, None]
    var = (dev * dev) @ weights  # two passes: exact when |mean| >> std (e.g. sigmoid)
    return mean.to(dtype), var.to(dtype)


def _relu_moments(shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``E[relu(X)]`` and ``E[relu(X)^2]`` for ``X ~ N(shift, scale^2)``."""
    t = shift / scale
    cdf = torch.special.ndtr(t)
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return shift * cdf + scale * pdf, (shift * shift + scale * scale) * cdf + shift * scale * pdf


def _closed_form_moments(activation: Callable[[Tensor], Tensor], weight: Tensor,
                         bias: Tensor) -> tuple[Tensor, Tensor] | None:
    """Mean and variance of a piecewise-linear ``activation(weight Z + bias)``, or ``None``
    for an activation without a closed form here (see the module docstring)."""
    # |gamma| floored so that gamma = 0 (a constant pre-activation) stays finite: t = +-inf
    # gives the constant's moments, and beta = 0 gives t = 0 with a vanishing scale.
    scale = weight.abs().clamp_min(1e-30)
    if isinstance(activation, nn.ReLU) or activation in (torch.relu, F.relu):
        mean, second = _relu_moments(bias, scale)
    elif isinstance(activation, nn.LeakyReLU):
        a = activation.negative_slope
        m_pos, q_pos = _relu_moments(bias, scale)
        m_neg, q_neg = _relu_moments(-bias, scale)
        mean, second = m_pos - a * m_neg, q_pos + a * a * q_neg
    elif isinstance(activation, nn.Hardtanh):  # nn.ReLU6 included
        lo, hi = float(activation.min_val), float(activation.max_val)
        m_lo, q_lo = _relu_moments(bias - lo, scale)
        m_hi, q_hi = _relu_moments(bias - hi, scale)
        u_mean = m_lo - m_hi
        u_var = q_lo - q_hi - 2.0 * (hi - lo) * m_hi - u_mean * u_mean
        return lo + u_mean, u_var.clamp_min(0.0)
    else:
        return None
    return mean, (second - mean * mean).clamp_min(0.0)


def proxy_norm(
    x: Tensor,
    activation: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor,
    nodes: Tensor,
    weights: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """``(activation(weight * x + bias) - mu) / sqrt(var + eps)`` with the proxy moments.

    Args:
        x: a pre-activation already normalized by a batch-independent norm (LN/GN).
        activation: elementwise nonlinearity.
        weight, bias: per-channel gamma, beta of shape ``(C,)``.
        nodes, weights: quadrature rule from :func:`gaussian_grid`.
        eps: added to the proxy variance (guards channels whose activation is ~constant).

    Shape:
        x: ``(N, C, *spatial)``; output the same.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"expected an (N, C, *spatial) tensor, got {getattr(x, 'shape', x)}")
    if weight.dim() != 1 or weight.numel() != x.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but the input of shape {tuple(x.shape)} "
            f"has {x.shape[1]} channels"
        )
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    mean, var = proxy_moments(activation, weight, bias, nodes, weights)
    view = [1, -1] + [1] * (x.dim() - 2)
    post = activation(x * weight.view(view) + bias.view(view))
    return (post - mean.view(view)) * torch.rsqrt(var.view(view) + eps)

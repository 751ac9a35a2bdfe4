"""Sparse standardization targets: a Laplace target and a Bernoulli target on activity.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, suggest replacing the standard normal target by a
sparse one (a Laplace, or a Bernoulli distribution on post-activations) for representational
ability and unsupervised learning. Both terms below keep the paper's recipe: fit a two-
parameter family to each channel by its moments, and take the closed-form KL divergence of
the fit from the target. Summed over channels.

Laplace (:func:`laplace_kl`). Fit ``Laplace(m, s)`` with ``m`` the channel mean and ``s`` its
mean absolute deviation ``E|x - m|`` (the maximum-likelihood scale given the location). For
``p = Laplace(m, s)`` and the target ``q = Laplace(0, b)``::

    KL(p || q) = E_p[log p - log q]
               = (-log(2 s) - 1) - (-log(2 b) - E_p|x| / b)
    E_p|x|     = |m| + s exp(-|m| / s)          (the Laplace's mean absolute value about 0)
    KL         = log(b / s) + |m| / b + (s / b) exp(-|m| / s) - 1

zero exactly at ``m = 0, s = b``. The default ``b = 1/sqrt(2)`` is the unit-variance Laplace.
The penalty acts on the mean absolute deviation instead of the variance: for a fixed ``E|x|``
a peaked, heavy-tailed (sparse) channel is not pushed back to Gaussian tails, as the
variance-based target would push it. ``eps`` is added to ``s`` inside the log.

Bernoulli (:func:`bernoulli_activity_kl`). For a ReLU-family unit ``h = relu(z)`` whether it
is active is Bernoulli with ``p = P(z > 0)``. With the paper's Gaussian fit ``N(mu, var)`` of
``z``, ``p = Phi(mu / sqrt(var + eps))`` (differentiable, unlike the fraction of positive
values), and the target is a sparsity level ``rho``::

    KL(Bern(p) || Bern(rho)) = p log(p / rho) + (1 - p) log((1 - p) / (1 - rho))

(the sparse-autoencoder penalty on mean activity). It fixes only the location relative to the
scale, so the term adds the scale part of the paper's loss,
``0.5 (var - log(var + eps) - 1)``, which keeps ``var`` at 1. At ``rho = 0.5`` the whole term
is minimized by ``mu = 0, var = 1``, the paper's target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .standardization import DEFAULT_EPS, channel_moments, check_floating, reduction_dims

__all__ = ["laplace_kl", "bernoulli_activity_kl", "LAPLACE_UNIT_SCALE"]

#: the scale of the unit-variance Laplace (variance ``2 b^2 = 1``)
LAPLACE_UNIT_SCALE = 1.0 / math.sqrt(2.0)


def laplace_kl(x: Tensor, channel_dim: int = 1, scale: float = LAPLACE_UNIT_SCALE,
               eps: float = DEFAULT_EPS) -> Tensor:
    """Sum over channels of ``KL(Laplace(m_c, s_c) || Laplace(0, scale))`` (module docstring).

    Args:
        x: a pre-activation; statistics over every dim but ``channel_dim``.
        channel_dim: the channel dimension.
        scale: the target's scale ``b`` (> 0).
        eps: added to the fitted scale inside the log and the exponent.

    Raises:
        ValueError: non-floating ``x``, bad ``channel_dim``, ``scale <= 0``, or one value per
            channel.
    """
    check_floating(x)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    cd, dims = reduction_dims(x, channel_dim)
    if x.numel() // x.shape[cd] < 2:
        raise ValueError(f"expected more than 1 value per channel, got shape {tuple(x.shape)}")
    m = x.mean(dim=dims, keepdim=True)
    s = (x - m).abs().mean(dim=dims) + eps
    m = m.reshape(-1)
    am = m.abs()
    kl = math.log(scale) - torch.log(s) + am / scale + (s / scale) * torch.exp(-am / s) - 1.0
    return kl.sum()


def bernoulli_activity_kl(x: Tensor, channel_dim: int = 1, rho: float = 0.25,
                          eps: float = DEFAULT_EPS) -> Tensor:
    """Sum over channels of ``KL(Bern(Phi(mu/sigma)) || Bern(rho))`` plus the paper's scale
    term ``0.5 (var - log(var + eps) - 1)`` (module docstring).

    Args:
        x: a pre-activation (of a ReLU-family unit); statistics over every dim but
            ``channel_dim``.
        channel_dim: the channel dimension.
        rho: the target probability that a unit is active, in ``(0, 1)``.
        eps: inside the variance's log and square root.

    Raises:
        ValueError: ``rho`` outside ``(0, 1)``, and what :func:`channel_moments` raises.
    """
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    check_floating(x)
    cd, _ = reduction_dims(x, channel_dim)
    if x.numel() // x.shape[cd] < 2:
        raise ValueError(f"expected more than 1 value per channel, got shape {tuple(x.shape)}")
    mean, var = channel_moments(x, channel_dim)
    p = torch.special.ndtr(mean * torch.rsqrt(var + eps))
    # clamp keeps log(0) out when a channel is (numerically) always on or always off
    tiny = torch.finfo(p.dtype).tiny
    p = p.clamp(tiny, 1.0 - torch.finfo(p.dtype).eps)
    bern = p * torch.log(p / rho) + (1.0 - p) * torch.log((1.0 - p) / (1.0 - rho))
    scale_part = 0.5 * (var - torch.log(var + eps) - 1.0)
    return (bern + scale_part).sum()

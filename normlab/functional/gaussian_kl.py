"""The decorrelation target: KL divergence of groups of channels' full Gaussian from N(0, I).

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, propose a decorrelation loss as an extension of the
per-channel standardization loss. Fitting the ``G`` channels of a group with their mean
``mu`` and biased covariance ``Sigma`` (over the batch and every spatial position), the KL
divergence of ``N(mu, Sigma)`` from ``N(0, I)`` is (the Gaussian KL closed form with
``Sigma_2 = I``, ``mu_2 = 0``)::

    KL = 0.5 * (tr Sigma + mu^T mu - log det Sigma - G)

It is zero exactly when the group is standardized *and* uncorrelated. With ``G = 1`` it is
the paper's per-channel term ``0.5 (var + mu^2 - log var - 1)``, and since
``log det Sigma <= sum_c log Sigma_cc`` (Hadamard's inequality) the grouped loss is the
per-channel loss plus ``0.5 (sum_c log Sigma_cc - log det Sigma) >= 0``, the correlation
penalty. Summed over groups, as the per-channel loss is summed over channels.

Cost: the ``(G, G)`` covariances are one batched product of the centred ``(M, C)`` data
(``C * G`` multiply-adds per value, the price of groups: ``G = C`` would be ``C^2``).
Precision: the covariance is accumulated in the input's dtype (float32 products of centred
data are exact to a few ulps for moderate ``G``); the tiny ``(k, G, G)`` matrices are then
taken to float64 for the Cholesky log-determinant, where float32 would lose digits of
``log det`` as the condition number grows. ``eps`` is added to the covariance diagonal (it
keeps a constant or collinear channel finite, as ``eps`` inside the log of the per-channel
loss does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .standardization import DEFAULT_EPS, check_floating, reduction_dims

__all__ = ["grouped_gaussian_kl", "channel_groups"]


def channel_groups(channels: int, group_size: int) -> list[int]:
    """Contiguous group sizes covering ``channels``: as many of ``group_size`` as fit, then the
    remainder (one smaller last group).

    Raises:
        ValueError: ``group_size`` is not a positive int.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    full, rest = divmod(channels, group_size)
    return [group_size] * full + ([rest] if rest else [])


def _group_kl(xc: Tensor, mean: Tensor, eps: float) -> Tensor:
    """KL of ``k`` groups: ``xc`` centred ``(M, k, G)``, ``mean`` ``(k, G)``."""
    m, _, g = xc.shape
    cov = torch.einsum("mkg,mkh->kgh", xc, xc) / m
    eye = torch.eye(g, dtype=torch.float64, device=xc.device)
    wide = cov.to(torch.float64) + eps * eye
    logdet = 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky(wide), dim1=-2, dim2=-1)).sum()
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum().to(torch.float64)
    sq = (mean * mean).sum().to(torch.float64)
    return 0.5 * (trace + sq - logdet - g * mean.shape[0])


def grouped_gaussian_kl(x: Tensor, channel_dim: int = 1, group_size: int = 16,
                        eps: float = DEFAULT_EPS) -> Tensor:
    """Sum over channel groups of ``KL(N(mu_g, Sigma_g) || N(0, I))`` (module docstring).

    Args:
        x: a pre-activation, channels along ``channel_dim``, statistics over every other dim.
        channel_dim: the channel dimension.
        group_size: channels per group (contiguous; the last group takes the remainder).
        eps: added to each covariance diagonal before the log-determinant.

    Returns:
        A scalar in ``x``'s dtype, differentiable in ``x``.

    Raises:
        ValueError: a bad ``channel_dim`` / ``group_size``, a non-floating ``x``, or a single
            value per channel (no covariance to fit).
    """
    check_floating(x)
    cd, _ = reduction_dims(x, channel_dim)
    channels = x.shape[cd]
    rows = x.movedim(cd, -1).reshape(-1, channels)
    if rows.shape[0] < 2:
        raise ValueError(f"expected more than 1 value per channel, got shape {tuple(x.shape)}")
    mean = rows.mean(0)
    xc = rows - mean
    total = x.new_zeros((), dtype=torch.float64)
    start = 0
    sizes = channel_groups(channels, group_size)
    # groups of equal size go through one batched product; the remainder through another
    for size in sorted(set(sizes), reverse=True):
        count = sizes.count(size)
        width = size * count
        part = xc[:, start:start + width].reshape(-1, count, size)
        total = total + _group_kl(part, mean[start:start + width].reshape(count, size), eps)
        start += width
    return total.to(x.dtype)

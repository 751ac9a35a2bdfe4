"""Group-wise ZCA whitening over channels: the math of Decorrelated Batch Normalization.

Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization", 2018, arXiv:1804.08450.
The inverse square root of each group's covariance is computed by Newton-Schulz iterations,
the "Iterative Normalization" form of Huang, Yang, Liu, Zhu & Shao, "Iterative Normalization:
Beyond Standardization towards Efficient Whitening", 2019, arXiv:1904.03441 (Algorithm 1).

For the channels ``c`` of one group (``d`` of them) and the ``m`` values each channel takes
over the batch (and the spatial positions)::

    mu    = mean_j x_j                                  (d,)
    Sigma = 1/m sum_j (x_j - mu)(x_j - mu)^T + eps I    (d, d)
    W     = Sigma^{-1/2}    (ZCA: U diag(lambda)^{-1/2} U^T)
    y_j   = W (x_j - mu)    so that cov(y) = W (Sigma - eps I) W ~ I

``eps`` is added to the covariance diagonal (the DBN paper's regulariser); it bounds the
gain of a dead or constant direction at ``eps^{-1/2}``.

Why Newton-Schulz rather than the DBN paper's eigendecomposition: it uses only matrix
products, so its backward is plain autograd and stays finite when eigenvalues repeat (the
eigendecomposition backward divides by eigenvalue gaps, which vanish for dead ReLU
channels), and it is cheap on CPU. With the trace normalisation ``Sigma_N = Sigma / tr Sigma``
the iteration ``P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2`` from ``P_0 = I`` converges to
``Sigma_N^{-1/2}`` (all eigenvalues of ``Sigma_N`` lie in ``(0, 1]``); ``W = P_T / sqrt(tr
Sigma)``. It is run in its coupled (Denman-Beavers-like) form, which is stable in floating
point where the plain recursion is not. Directions with tiny variance converge last, so a few iterations whiten the
dominant directions and only partly amplify the near-degenerate ones (IterNorm's argument);
enough iterations give ZCA.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "whitening_groups",
    "newton_schulz_inv_sqrt",
    "channel_matrix",
    "from_channel_matrix",
    "group_whitening",
]


def whitening_groups(num_features: int, group_size: int) -> list[int]:
    """Sizes of the channel groups: as many ``group_size`` groups as fit, then the remainder.

    ``group_size`` larger than ``num_features`` gives one group of all channels.

    Example:
        >>> whitening_groups(100, 16)
        [16, 16, 16, 16, 16, 16, 4]
    """
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    size = min(group_size, num_features)
    full, rest = divmod(num_features, size)
    return [size] * full + ([rest] if rest else [])


def newton_schulz_inv_sqrt(cov: Tensor, iterations: int) -> Tensor:
    """``cov^{-1/2}`` of symmetric positive definite matrices by Newton-Schulz iterations.

    Formula (IterNorm, arXiv:1904.03441, Algorithm 1, computed in the coupled form
    ``T_k = (3 I - Z_k Y_k) / 2, Y_{k+1} = Y_k T_k, Z_{k+1} = T_k Z_k`` from ``Y_0 = Sigma_N``,
    ``Z_0 = I``; Higham, "Functions of Matrices", 2008, sec. 6.7)::

        Sigma_N = cov / tr(cov);  P_0 = I;  P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2
        cov^{-1/2} ~ P_T / sqrt(tr(cov))      (P_k = Z_k)

    Args:
        cov: symmetric positive definite matrices.
        iterations: ``T``, at least 1.

    Shape:
        cov: ``(..., d, d)``; returns the same shape.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must be (..., d, d), got shape {tuple(cov.shape)}")
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).unsqueeze(-1)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    # Coupled form: Y_k = Sigma_N P_k, Z_k = P_k. The same iterates as IterNorm's
    # P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2 in exact arithmetic, but stable in floating
    # point: the uncoupled recursion amplifies round-off once cond(Sigma) is large (it
    # diverged in float32 on a covariance of condition 1e7 within 10 iterations).
    y, z = cov / trace, eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / trace.sqrt()


def channel_matrix(x: Tensor) -> Tensor:
    """``(N, C, *)`` -> ``(C, M)``: every value of a channel in one row (``M = N * prod(*)``)."""
    if x.dim() < 2:
        raise ValueError(f"expected (N, C, *) input, got shape {tuple(x.shape)}")
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def from_channel_matrix(y: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`channel_matrix` for an input shaped like ``like``."""
    c = like.shape[1]
    rest = (like.shape[0],) + tuple(like.shape[2:])
    return y.reshape((c,) + rest).transpose(0, 1)


def group_whitening(xc: Tensor, groups: list[int], eps: float, iterations: int) -> list[Tensor]:
    """Whitening matrix of each channel group of centred data.

    Args:
        xc: centred channel matrix (rows = channels, each of mean zero).
        groups: group sizes summing to ``C`` (:func:`whitening_groups`).
        eps: added to each covariance diagonal.
        iterations: Newton-Schulz iterations.

    Returns:
        One ``(d, d)`` matrix per group, in channel order.

    Shape:
        xc: ``(C, M)``.
    """
    if sum(groups) != xc.shape[0]:
        raise ValueError(f"groups {groups} do not sum to the {xc.shape[0]} channels")
    m = xc.shape[1]
    out: list[Tensor] = []
    start = 0
    # Groups of one size are whitened in one batched call (all but the remainder).
    for size in dict.fromkeys(groups):
        count = sum(1 for g in groups if g == size)
        block = xc[start:start + size * count].reshape(count, size, m)
        cov = block @ block.transpose(1, 2) / m
        cov = cov + eps * torch.eye(size, dtype=xc.dtype, device=xc.device)
        out.extend(newton_schulz_inv_sqrt(cov, iterations).unbind(0))
        start += size * count
    return out

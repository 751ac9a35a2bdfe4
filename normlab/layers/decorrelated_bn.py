"""Decorrelated Batch Normalization: group-wise ZCA whitening of the channels.

Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization", 2018, arXiv:1804.08450.
Whitening matrix by Newton-Schulz iterations as in Huang et al., "Iterative Normalization:
Beyond Standardization towards Efficient Whitening", 2019, arXiv:1904.03441 (see
:mod:`normlab.functional.whitening` for the math and why).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..checks import check_count
from ..functional.whitening import group_whitening, whitening_groups
from .base import ChannelMatrixNorm, update_running_

__all__ = ["DecorrelatedBatchNorm"]


class DecorrelatedBatchNorm(ChannelMatrixNorm):
    """ZCA-whitens each group of channels over the batch, then a per-channel affine map.

    Formula, for each group ``g`` of channels and each sample/position ``j``::

        y_j[g] = Sigma_g^{-1/2} (x_j[g] - mu_g)
        out    = weight * y + bias        (per channel)

    with ``Sigma_g`` the group's biased batch covariance plus ``eps I``. Channels are split
    into ``C // group_size`` groups of ``group_size`` and, when ``group_size`` does not
    divide ``C``, one last group of the remaining ``C % group_size`` channels;
    ``group_size >= C`` whitens all channels together.

    Training uses batch statistics and updates ``running_mean`` and ``running_whitening``
    (the block-diagonal ``(C, C)`` whitening matrix) by exponential moving averages with
    ``momentum``: ``running = (1 - momentum) * running + momentum * batch``. Eval mode uses
    them: ``out = weight * W_run (x - mean_run) + bias``.

    Args:
        num_features: ``C``.
        eps: added to every covariance diagonal (DBN paper's regulariser); default ``1e-5``.
        momentum: of the running averages.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0).
        group_size: channels per whitening group; default 16 (the DBN paper's choice for
            its CNNs).
        iterations: Newton-Schulz iterations. The default 10 whitens groups whose
            covariance has condition number up to about 100 to within a few per cent
            (``tests/test_decorrelated_bn.py``); more iterations approach exact ZCA,
            fewer leave low-variance directions partly unwhitened (IterNorm uses 5). The
            count also caps the gain on near-degenerate directions at about ``1.5^T``.

    A training batch needs more values per channel than the largest group has channels
    (``N * H * W > group size``): otherwise the batch covariance is singular, the whitening
    matrix has a very large gain in directions the batch does not span, and its running
    average makes eval outputs explode. The layer warns once when that happens.

    Shape:
        Input ``(N, C, *)`` (``(N, C)`` for MLPs, ``(N, C, H, W)`` for CNNs); output alike.

    Example:
        >>> layer = DecorrelatedBatchNorm(32, group_size=16)
        >>> y = layer(torch.randn(8, 32, 7, 7))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, group_size: int = 16, iterations: int = 10,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, device, dtype)
        self.groups = whitening_groups(num_features, group_size)
        check_count(iterations, "iterations")
        factory = {"device": device, "dtype": dtype}
        self.group_size = group_size
        self.iterations = iterations
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_whitening", torch.eye(num_features, **factory))
        self._warned = False
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running whitening matrix the identity."""
        self.running_mean.zero_()
        self.running_whitening.copy_(torch.eye(self.num_features))

    def _blocks(self, matrix: Tensor) -> list[Tensor]:
        """The diagonal blocks of a block-diagonal ``(C, C)`` matrix, one per group."""
        out, start = [], 0
        for size in self.groups:
            out.append(matrix[start:start + size, start:start + size])
            start += size
        return out

    def _normalize(self, xm: Tensor) -> Tensor:
        """Whitened ``(C, M)`` channel matrix, in ``xm``'s dtype."""
        dtype = xm.dtype
        if self.training:
            if xm.shape[1] <= self.groups[0] and not self._warned:
                warnings.warn(
                    f"DecorrelatedBatchNorm: {xm.shape[1]} values per channel for groups of "
                    f"{self.groups[0]} channels; the batch covariance is singular and the "
                    f"running whitening matrix will be unreliable (use larger batches or a "
                    f"smaller group_size)", RuntimeWarning, stacklevel=4)
                self._warned = True
            mean = xm.mean(dim=1)
            xc = xm - mean[:, None]
            whitening = group_whitening(xc, self.groups, self.eps, self.iterations)
            update_running_(self.running_mean, mean, self.momentum)
            update_running_(self.running_whitening,
                            torch.block_diag(*[w.detach() for w in whitening]), self.momentum)
        else:
            xc = xm - self.running_mean.to(dtype)[:, None]
            whitening = self._blocks(self.running_whitening.to(dtype))
        parts, start = [], 0
        for w in whitening:
            size = w.shape[0]
            parts.append(w @ xc[start:start + size])
            start += size
        return torch.cat(parts, dim=0)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, group_size={self.group_size}, "
            f"iterations={self.iterations}, groups={self.groups}"
        )

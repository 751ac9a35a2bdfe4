"""Per-channel statistics of the global batch, from each rank's shard.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167; Collins, Ballé & Shlens, "Accelerating Training of
Deep Neural Networks with a Standardization Loss", 2019, arXiv:1903.00925; Hoffer, Banner,
Golan & Soudry, "Norm matters", 2018, arXiv:1803.01814 (L1, top-k); Banner, Hubara, Hoffer &
Soudry, "Scalable methods for 8-bit training of neural networks", 2018, arXiv:1805.11046
(range).

Each function returns what its single-process counterpart in :mod:`normlab.functional` returns
for the concatenation of every rank's input along the batch dimension (ranks may hold
different batch sizes), with the gradient convention of
:mod:`normlab.distributed.collectives`. ``n`` is always the global number of elements per
channel, so the Gaussian constants of L-inf and Range BN are those of the global batch.

- mean and variance: two passes, each one all-reduce (the sum and the count, then the sum of
  squared deviations from the global mean): as exact as the single-process two-pass moments,
  where sum/sum-of-squares would cancel when ``|mean| >> std``.
- top-k: "global" means the ``k`` largest ``|x - mu|`` of the whole global batch, not an
  average of per-rank top-k's. It is exact: the global top ``k`` lie among the ranks' local
  top ``k``, so each rank contributes its ``k`` largest per channel (``W * k * C`` numbers).
- range: global max and min (an all-reduce MAX), the gradient routed to the rank holding each.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from ..functional.dispersion_autograd import L1_CONSTANT, TOPK_PAPER_CONSTANT
from ..functional.dispersion_batch_norm import CORRECTIONS, gaussian_topk_abs_mean
from ..functional.range_constant import gaussian_range_unit_variance
from ..functional.standardization import DEFAULT_EPS, reduction_dims
from .collectives import all_gather_cat, all_reduce_max, all_reduce_sum

__all__ = ["global_mean_var", "global_l1_moments", "global_linf_moments",
           "global_range_moments", "global_standardization_loss"]

def _check(x: Tensor, channel_dim: int, what: str) -> tuple[int, tuple[int, ...]]:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} expects a floating-point tensor, got dtype {x.dtype}")
    return reduction_dims(x, channel_dim)


def _stats_input(x: Tensor) -> Tensor:
    """Half-precision inputs are reduced in float32 (as torch's BatchNorm does): the
    statistics come back float32 and callers cast their output to ``x.dtype``."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _view(v: Tensor, x: Tensor, cd: int) -> Tensor:
    shape = [1] * x.dim()
    shape[cd] = -1
    return v.view(shape)


def _first_pass(x: Tensor, cd: int, dims: tuple[int, ...], what: str,
                group) -> tuple[Tensor, int]:
    """Global per-channel mean and element count: one all-reduce of ``[sums..., count]``."""
    local = x.numel() // max(x.shape[cd], 1)
    sums = x.sum(dim=dims)
    packed = all_reduce_sum(torch.cat([sums, sums.new_full((1,), float(local))]), group)
    n = int(round(float(packed[-1].detach())))
    if n < 2:
        raise ValueError(f"{what} needs more than 1 value per channel over all ranks, got "
                         f"{n} (this rank's shard has shape {tuple(x.shape)})")
    return packed[:-1] / n, n


def global_mean_var(x: Tensor, channel_dim: int = 1,
                    group: dist.ProcessGroup | None = None) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance per channel of the global batch.

    Args:
        x: this rank's shard, e.g. ``(N_r, C, H, W)``.
        channel_dim: the channel dimension; statistics over every other one.
        group: the process group (default: the world).

    Returns:
        ``(mean, var, n)``: ``(C,)`` tensors (float32 for half inputs) and the global element
        count per channel.

    Raises:
        ValueError: fewer than 2 elements per channel in the global batch.
    """
    cd, dims = _check(x, channel_dim, "global_mean_var")
    x = _stats_input(x)
    mean, n = _first_pass(x, cd, dims, "global_mean_var", group)
    dev = x - _view(mean, x, cd)
    var = all_reduce_sum((dev * dev).sum(dim=dims), group) / n
    return mean, var, n


def _global_mean(x: Tensor, what: str, group) -> tuple[Tensor, Tensor, int]:
    """``(mean, x - mean, n)`` for the channels (dim 1) of the global batch."""
    _, dims = _check(x, 1, what)
    x = _stats_input(x)
    mean, n = _first_pass(x, 1, dims, what, group)
    return mean, x - _view(mean, x, 1), n


def global_l1_moments(x: Tensor, group: dist.ProcessGroup | None = None
                      ) -> tuple[Tensor, Tensor, int]:
    """Global mean and L1 dispersion ``sqrt(pi/2) * mean|x - mu|`` per channel (dim 1), and n."""
    mean, dev, n = _global_mean(x, "global_l1_moments", group)
    dims = tuple(d for d in range(x.dim()) if d != 1)
    disp = all_reduce_sum(dev.abs().sum(dim=dims), group) * (L1_CONSTANT / n)
    return mean, disp, n


def global_linf_moments(x: Tensor, k: int = 10, correction: str = "exact",
                        group: dist.ProcessGroup | None = None) -> tuple[Tensor, Tensor, int]:
    """Global mean and top-k dispersion per channel (dim 1), and n.

    The ``k`` (capped at the global ``n``) largest ``|x - mu|`` of the global batch, averaged
    and scaled as :func:`normlab.functional.dispersion_batch_norm.linf_moments` scales them
    for ``n``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    mean, dev, n = _global_mean(x, "global_linf_moments", group)
    k = min(k, n)
    rows = dev.abs().transpose(0, 1).reshape(x.shape[1], -1)
    local_k = min(k, rows.shape[1])
    top = rows.topk(local_k, dim=1, sorted=False).values if local_k else rows[:, :0]
    if local_k < k:  # pad with -1: never among the k largest of values >= 0
        top = torch.cat([top, top.new_full((top.shape[0], k - local_k), -1.0)], dim=1)
    best = all_gather_cat(top, dim=1, group=group).topk(k, dim=1, sorted=False).values
    if correction == "exact":
        disp = best.mean(dim=1) / gaussian_topk_abs_mean(n, k)
    else:
        disp = best.mean(dim=1) * (TOPK_PAPER_CONSTANT / math.sqrt(2.0 * math.log(n)))
    return mean, disp, n


def global_range_moments(x: Tensor, correction: str = "exact",
                         group: dist.ProcessGroup | None = None) -> tuple[Tensor, Tensor, int]:
    """Global mean and range dispersion ``(max - min) / C(n)`` per channel (dim 1), and n
    (``C(n)``: :func:`normlab.functional.range_constant.gaussian_range_unit_variance`)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    mean, _, n = _global_mean(x, "global_range_moments", group)
    dims = tuple(d for d in range(x.dim()) if d != 1)
    x = _stats_input(x)
    spread = (all_reduce_max(x.amax(dim=dims), group)
              + all_reduce_max(-x.amin(dim=dims), group))
    scale = (gaussian_range_unit_variance(n) if correction == "exact"
             else math.sqrt(2.0 * math.log(n)))
    return mean, spread / scale, n


def global_standardization_loss(x: Tensor, channel_dim: int = 1, eps: float = DEFAULT_EPS,
                                group: dist.ProcessGroup | None = None) -> Tensor:
    """The standardization loss of the global batch, the same value on every rank.

    ``0.5 * sum_c (mu_c^2 + var_c - log(var_c + eps) - 1)`` with ``mu_c, var_c`` from
    :func:`global_mean_var`: equal to
    :func:`normlab.functional.standardization_loss` of the concatenated batch, and (with
    DDP's averaging, see :mod:`normlab.distributed.collectives`) so is its gradient.

    Args:
        x: this rank's pre-activations.
        channel_dim: the channel dimension.
        eps: inside the log, as in the single-process loss.
        group: the process group (default: the world).

    Returns:
        A float32 (or float64) scalar; half-precision inputs are reduced in float32.
    """
    _check(x, channel_dim, "global_standardization_loss")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    mean, var, _ = global_mean_var(x, channel_dim, group)
    return 0.5 * (mean * mean + var - torch.log(var + eps) - 1.0).sum()

"""Batch Renormalization: BN corrected towards the running statistics.

Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
Models", 2017, arXiv:1702.03275.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dispersion_batch_norm import _validate, dispersion_normalize
from .standardization import check_floating

__all__ = ["renorm_limits", "batch_renorm"]


def renorm_limits(step: int, rmax: float, dmax: float, start: int, rmax_steps: int,
                  dmax_steps: int) -> tuple[float, float]:
    """Batch Renorm's ``(r_max, d_max)`` at training step ``step``: linear warm-up.

    ``r_max`` is 1 and ``d_max`` 0 (plain BN) until ``start``; then they grow linearly to
    ``rmax`` over ``rmax_steps`` steps and to ``dmax`` over ``dmax_steps`` steps. A zero
    number of steps jumps at ``start``; ``start = 0`` with zero steps gives fixed limits.
    """
    def ramp(steps: int) -> float:
        if step < start:
            return 0.0
        return 1.0 if steps <= 0 else min(1.0, (step - start) / steps)

    return 1.0 + (rmax - 1.0) * ramp(rmax_steps), dmax * ramp(dmax_steps)


def batch_renorm(x: Tensor, running_mean: Tensor, running_var: Tensor,
                 weight: Tensor | None = None, bias: Tensor | None = None,
                 training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                 rmax: float = 3.0, dmax: float = 5.0) -> Tensor:
    """Batch Renormalization (Ioffe 2017, Algorithm 1).

    Training: ``y = ((x - mu_B) / sigma_B * r + d) * weight + bias`` with
    ``sigma_B = sqrt(var_B + eps)``, ``sigma = sqrt(running_var + eps)``,
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and ``d = clip((mu_B - mu) / sigma, -dmax,
    dmax)``, both treated as constants (no gradient). The running statistics are then updated
    as torch's BN does (``running_var`` with the unbiased batch variance), so that with
    ``rmax = 1, dmax = 0`` the layer is exactly ``torch.nn.BatchNorm`` in train mode.
    Evaluation: ``(x - running_mean) / sigma * weight + bias``.

    Args:
        x: ``(N, C, *)``.
        running_mean, running_var: ``(C,)`` buffers (required: r and d need them).
        rmax, dmax: the clipping limits at this step (see :func:`renorm_limits`).

    Returns:
        A tensor shaped like ``x``.
    """
    check_floating(x)
    if x.dim() < 2:
        raise ValueError(f"batch_renorm expects (N, C, *) input, got shape {tuple(x.shape)}")
    if rmax < 1.0 or dmax < 0.0:
        raise ValueError(f"need rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
    if not training:
        return dispersion_normalize(x, running_mean, torch.sqrt(running_var + eps), weight,
                                    bias, 0.0)
    dims, _ = _validate(x, True, "batch_renorm")
    with torch.no_grad():
        mean = x.mean(dim=dims, keepdim=True)
        dev = x - mean
        var = (dev * dev).mean(dim=dims)
        mean = mean.reshape(-1)
        run_std = torch.sqrt(running_var + eps)
        r = (torch.sqrt(var + eps) / run_std).clamp(1.0 / rmax, rmax).to(running_var.dtype)
        d = ((mean - running_mean) / run_std).clamp(-dmax, dmax).to(running_var.dtype)
    # y = ((x - mu_B) / sigma_B * r + d) * w + b is torch's BN with weight r w and bias
    # d w + b: its fused kernels give the gradient through mu_B and sigma_B (r, d constant)
    # and update the running statistics (unbiased variance) as documented above.
    scale, shift = (r, d) if weight is None else (r * weight, d * weight)
    if bias is not None:
        shift = shift + bias
    # torch.batch_norm, not F.batch_norm: the latter refuses eps = 0, which this function
    # (like the paper) allows.
    return torch.batch_norm(x, scale, shift, running_mean, running_var, True, momentum, eps,
                            torch.backends.cudnn.enabled)

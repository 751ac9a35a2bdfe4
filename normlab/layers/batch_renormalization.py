"""Batch Renormalization as a layer.

Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
Models", 2017, arXiv:1702.03275. A thin module over :mod:`normlab.functional.batch_renormalization`;
its eval-mode output is a per-channel affine map (``eval_affine()``), so
:func:`normlab.surgery.fold_batch_norm` can fold it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import batch_renormalization as F
from .base import BatchStatNorm

__all__ = ["BatchRenorm"]


class BatchRenorm(BatchStatNorm):
    """Batch Renormalization (Ioffe 2017): BN corrected towards the running statistics.

    Training: ``y = ((x - mu_B) / sigma_B * r + d) * gamma + beta`` with
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mu_B - mu) / sigma, -d_max,
    d_max)`` held constant in backprop; ``mu``, ``sigma = sqrt(running_var + eps)`` are the
    running statistics, which are also used at evaluation. ``(r_max, d_max)`` follow the
    paper's warm-up (:func:`normlab.functional.batch_renormalization.renorm_limits`) on the step
    counter ``num_batches_tracked``: plain BN (1, 0) for ``warmup_start`` steps, then linear growth to
    ``rmax`` over ``rmax_steps`` and to ``dmax`` over ``dmax_steps``. The defaults are the
    paper's ImageNet schedule (r_max 3 at step 40k, d_max 5 at step 25k); pass
    ``warmup_start=0, rmax_steps=0, dmax_steps=0`` for fixed limits.

    Args:
        num_features: channels ``C``.
        eps: added to the variances under the square roots.
        momentum: running-statistics update rate (torch's convention and default).
        affine, scale, spatial_dims: as :class:`L1BatchNorm`.
        rmax, dmax: the limits after warm-up.
        warmup_start, rmax_steps, dmax_steps: the warm-up schedule, in training steps.

    Shape:
        Input ``(N, C, *)``, output the same.
    """

    _disp_buffer = "running_var"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, scale: bool = True, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_start: int = 5000, rmax_steps: int = 35000, dmax_steps: int = 20000,
                 spatial_dims: int | None = None, device=None, dtype=None) -> None:
        if rmax < 1.0 or dmax < 0.0:
            raise ValueError(f"need rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
        if min(warmup_start, rmax_steps, dmax_steps) < 0:
            raise ValueError("warmup_start, rmax_steps and dmax_steps must be >= 0, got "
                             f"{warmup_start}, {rmax_steps}, {dmax_steps}")
        super().__init__(num_features, eps, momentum, affine, scale, spatial_dims, device, dtype)
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_start, self.rmax_steps, self.dmax_steps = warmup_start, rmax_steps, dmax_steps

    def limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` for the next training step."""
        return F.renorm_limits(int(self.num_batches_tracked), self.rmax, self.dmax,
                               self.warmup_start, self.rmax_steps, self.dmax_steps)

    def _running_std(self) -> Tensor:
        return torch.sqrt(self.running_var + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        rmax, dmax = self.limits()
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_renorm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=self.training, momentum=self.momentum, eps=self.eps,
                              rmax=rmax, dmax=dmax)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, "
                f"warmup_start={self.warmup_start}, rmax_steps={self.rmax_steps}, "
                f"dmax_steps={self.dmax_steps}")

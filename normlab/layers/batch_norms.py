"""Batch-statistics normalization layers beyond BatchNorm: L1, top-k, Range BN, Batch Renorm.

- :class:`L1BatchNorm`, :class:`LinfBatchNorm`: Hoffer, Banner, Golan & Soudry, "Norm matters:
  efficient and accurate normalization schemes in deep networks", 2018, arXiv:1803.01814.
- :class:`RangeBatchNorm`: Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit
  training of neural networks", 2018, arXiv:1805.11046.
- :class:`BatchRenorm`: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence
  in Batch-Normalized Models", 2017, arXiv:1702.03275.

Thin modules over :mod:`normlab.functional.batch_norms` (the math and the choice of constants
are documented there). Every layer's eval-mode output is a per-channel affine map, returned
by ``eval_affine()`` so :func:`normlab.surgery.fold_batch_norm` can fold it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import batch_norms as F
from .base import NormLayer, check_norm_args, init_affine, reset_affine, running_affine

__all__ = ["L1BatchNorm", "LinfBatchNorm", "RangeBatchNorm", "BatchRenorm"]


class _BatchStatNorm(NormLayer):
    """Shared parameters, buffers, checks and eval affine map of the layers in this file.

    ``_disp_buffer`` names the running dispersion buffer (``running_disp``, or
    ``running_var`` for Batch Renorm), whose eval-mode std is given by ``_running_std``.
    """

    _disp_buffer = "running_disp"

    def __init__(self, num_features: int, eps: float, momentum: float, affine: bool,
                 scale: bool, spatial_dims: int | None, device, dtype) -> None:
        super().__init__()
        check_norm_args(num_features, eps, momentum, zero_eps=True)
        if spatial_dims is not None and spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims must be None or 0-3, got {spatial_dims}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.scale = scale and affine
        self.spatial_dims = spatial_dims
        init_affine(self, num_features, affine, factory, scale=scale)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer(self._disp_buffer, torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                 device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        getattr(self, self._disp_buffer).fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a Tensor, got {type(x).__name__}")
        if self.spatial_dims is None:
            if x.dim() < 2:
                raise ValueError(f"{type(self).__name__} expects (N, C, *) input, "
                                 f"got shape {tuple(x.shape)}")
        elif x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} with spatial_dims={self.spatial_dims} expects "
                f"{self.spatial_dims + 2}-D input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects {self.num_features} channels "
                             f"(dim 1), got shape {tuple(x.shape)}")

    def _running_std(self) -> Tensor:
        """The eval-mode divisor (including eps)."""
        return self.running_disp + self.eps

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)``, each ``(C,)``: the eval output is ``x * scale + shift``."""
        return running_affine(1.0 / self._running_std(), self.running_mean, self.weight,
                              self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, scale={self.scale}, spatial_dims={self.spatial_dims}")


class _DispersionBatchNorm(_BatchStatNorm):
    """Base of L1/top-k/Range BN: ``forward`` calls ``_functional`` with the buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, scale: bool = True, spatial_dims: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, scale, spatial_dims, device, dtype)

    def _functional(self, x: Tensor, **common) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return self._functional(x, running_mean=self.running_mean,
                                running_disp=self.running_disp, weight=self.weight,
                                bias=self.bias, training=self.training,
                                momentum=self.momentum, eps=self.eps)


class L1BatchNorm(_DispersionBatchNorm):
    """L1 batch norm (Hoffer et al. 2018): the std replaced by ``sqrt(pi/2) mean|x - mu|``.

    ``y = (x - mu) / (sqrt(pi/2) * mean|x - mu| + eps) * gamma + beta``, per channel over
    every dimension but 1; running mean and dispersion (momentum as torch's BN) at eval.

    Args:
        num_features: channels ``C``.
        eps: added to the dispersion.
        momentum: running-statistics update rate.
        affine: learn a shift ``beta`` (and a scale ``gamma`` if ``scale``).
        scale: learn ``gamma``; ``scale=False`` is shift-only, like normlab's ``batch_norm``.
        spatial_dims: if given, the input must have exactly ``spatial_dims + 2`` dims.

    Shape:
        Input ``(N, C, *)``, output the same.

    Example:
        >>> layer = L1BatchNorm(8, spatial_dims=2)
        >>> y = layer(torch.randn(16, 8, 5, 5))
    """

    def _functional(self, x: Tensor, **common) -> Tensor:
        return F.l1_batch_norm(x, **common)


class LinfBatchNorm(_DispersionBatchNorm):
    """Top-k (L-inf) batch norm (Hoffer et al. 2018): the std replaced by a top-k mean.

    ``y = (x - mu) / (topk_mean|x - mu| / E_k(n) + eps) * gamma + beta`` where ``E_k(n)`` is
    the expected mean of the ``k`` largest of ``n`` absolute standard normals (see
    :func:`normlab.functional.batch_norms.linf_moments`).

    Args:
        num_features, eps, momentum, affine, scale, spatial_dims: as :class:`L1BatchNorm`.
        k: how many of the largest deviations are averaged per channel. Default 10, the
            paper's choice: the mean of ten extremes is far less noisy than the max alone.
            Capped at the number of elements per channel.
        correction: ``"exact"`` (unit variance on Gaussian data) or ``"paper"``
            (``0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n)``).

    Shape:
        Input ``(N, C, *)``, output the same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, scale: bool = True, k: int = 10,
                 correction: str = "exact", spatial_dims: int | None = None,
                 device=None, dtype=None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if correction not in F.CORRECTIONS:
            raise ValueError(f"correction must be one of {F.CORRECTIONS}, got {correction!r}")
        super().__init__(num_features, eps, momentum, affine, scale, spatial_dims, device, dtype)
        self.k = k
        self.correction = correction

    def _functional(self, x: Tensor, **common) -> Tensor:
        return F.linf_batch_norm(x, k=self.k, correction=self.correction, **common)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, correction={self.correction!r}"


class RangeBatchNorm(_DispersionBatchNorm):
    """Range batch norm (Banner et al. 2018): the std replaced by a scaled range.

    ``y = (x - mu) / ((max - min) / C(n) + eps) * gamma + beta`` where ``C(n)`` gives unit
    output variance on Gaussian data at every ``n`` (close to the expected range ``R(n)`` of
    ``n`` standard normals; see :mod:`normlab.functional.batch_norms`). The running dispersion
    averages ``(max - min) / R(n)``, an unbiased estimate of sigma.

    Args:
        num_features, eps, momentum, affine, scale, spatial_dims: as :class:`L1BatchNorm`.
        correction: ``"exact"`` (unit variance on Gaussian data) or ``"paper"``
            (``C(n) = 1 / sqrt(2 ln n)``, output std about 1/2).

    Shape:
        Input ``(N, C, *)``, output the same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, scale: bool = True, correction: str = "exact",
                 spatial_dims: int | None = None, device=None, dtype=None) -> None:
        if correction not in F.CORRECTIONS:
            raise ValueError(f"correction must be one of {F.CORRECTIONS}, got {correction!r}")
        super().__init__(num_features, eps, momentum, affine, scale, spatial_dims, device, dtype)
        self.correction = correction

    def _functional(self, x: Tensor, **common) -> Tensor:
        return F.range_batch_norm(x, correction=self.correction, **common)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, correction={self.correction!r}"


class BatchRenorm(_BatchStatNorm):
    """Batch Renormalization (Ioffe 2017): BN corrected towards the running statistics.

    Training: ``y = ((x - mu_B) / sigma_B * r + d) * gamma + beta`` with
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mu_B - mu) / sigma, -d_max,
    d_max)`` held constant in backprop; ``mu``, ``sigma = sqrt(running_var + eps)`` are the
    running statistics, which are also used at evaluation. ``(r_max, d_max)`` follow the
    paper's warm-up (:func:`normlab.functional.batch_norms.renorm_limits`) on the step counter
    ``num_batches_tracked``: plain BN (1, 0) for ``warmup_start`` steps, then linear growth to
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

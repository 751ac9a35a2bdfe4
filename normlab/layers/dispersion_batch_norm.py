"""Batch norms whose dispersion is not the standard deviation: L1, top-k (L-inf), Range BN.

- :class:`L1BatchNorm`, :class:`LinfBatchNorm`: Hoffer, Banner, Golan & Soudry, "Norm matters:
  efficient and accurate normalization schemes in deep networks", 2018, arXiv:1803.01814.
- :class:`RangeBatchNorm`: Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit
  training of neural networks", 2018, arXiv:1805.11046.

Thin modules over :mod:`normlab.functional.dispersion_batch_norm` (the math and the choice of
constants are documented there). Every layer's eval-mode output is a per-channel affine map,
returned by ``eval_affine()`` so :func:`normlab.surgery.fold_batch_norm` can fold it.
"""

from __future__ import annotations

from torch import Tensor

from ..functional import dispersion_batch_norm as F
from .base import BatchStatNorm

__all__ = ["L1BatchNorm", "LinfBatchNorm", "RangeBatchNorm"]


class _DispersionBatchNorm(BatchStatNorm):
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
    :func:`normlab.functional.dispersion_batch_norm.linf_moments`).

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
    ``n`` standard normals; see :mod:`normlab.functional.dispersion_batch_norm`). The running
    dispersion averages ``(max - min) / R(n)``, an unbiased estimate of sigma.

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

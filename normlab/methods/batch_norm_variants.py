"""Batch-statistics BN variants as methods: L1, top-k (L-inf) and Range BN, Batch Renorm.

- ``l1_batch_norm``, ``linf_batch_norm``: Hoffer, Banner, Golan & Soudry, "Norm matters:
  efficient and accurate normalization schemes in deep networks", 2018, arXiv:1803.01814.
- ``range_batch_norm``: Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit training
  of neural networks", 2018, arXiv:1805.11046.
- ``batch_renorm``: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
  Batch-Normalized Models", 2017, arXiv:1702.03275.

Each inserts its layer (:mod:`normlab.layers`) before every nonlinearity. The
layers learn scale and shift by default, as in these papers; ``scale=False`` makes them
shift-only like normlab's ``batch_norm``.
"""

from __future__ import annotations

from torch import nn

from ..layers.batch_renormalization import BatchRenorm
from ..layers.dispersion_batch_norm import L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from . import METHODS
from .base import BatchStatsMethod


class _BatchStatMethod(BatchStatsMethod):
    """Shared options of the methods in this file."""

    def __init__(self, scale: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> None:
        self.scale = scale
        self.momentum = momentum
        self.eps = eps

    def _common(self, spatial_dims: int) -> dict[str, object]:
        return {"eps": self.eps, "momentum": self.momentum, "scale": self.scale,
                "spatial_dims": spatial_dims}


@METHODS.register("l1_batch_norm")
class L1BatchNormMethod(_BatchStatMethod):
    """L1 batch norm before each nonlinearity (dispersion ``sqrt(pi/2) mean|x - mu|``).

    Args:
        scale: learn a per-channel scale as well as the shift.
        momentum, eps: running-statistics rate; added to the dispersion.
    """

    paper = "Hoffer, Banner, Golan & Soudry 2018, arXiv:1803.01814"

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return L1BatchNorm(num_features, **self._common(spatial_dims))


@METHODS.register("linf_batch_norm")
class LinfBatchNormMethod(_BatchStatMethod):
    """Top-k (L-inf) batch norm before each nonlinearity.

    Args:
        scale, momentum, eps: as ``l1_batch_norm``.
        k: the number of largest deviations averaged per channel (the paper's 10).
        correction: ``"exact"`` Gaussian constant (default) or the ``"paper"``'s asymptotic one.
    """

    paper = "Hoffer, Banner, Golan & Soudry 2018, arXiv:1803.01814"

    def __init__(self, scale: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                 k: int = 10, correction: str = "exact") -> None:
        super().__init__(scale, momentum, eps)
        self.k = k
        self.correction = correction

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return LinfBatchNorm(num_features, k=self.k, correction=self.correction,
                             **self._common(spatial_dims))


@METHODS.register("range_batch_norm")
class RangeBatchNormMethod(_BatchStatMethod):
    """Range batch norm before each nonlinearity.

    Args:
        scale, momentum, eps: as ``l1_batch_norm``.
        correction: ``"exact"`` Gaussian constant (default) or the ``"paper"``'s
            ``1 / sqrt(2 ln n)``.
    """

    paper = "Banner, Hubara, Hoffer & Soudry 2018, arXiv:1805.11046"

    def __init__(self, scale: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                 correction: str = "exact") -> None:
        super().__init__(scale, momentum, eps)
        self.correction = correction

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return RangeBatchNorm(num_features, correction=self.correction,
                              **self._common(spatial_dims))


@METHODS.register("batch_renorm")
class BatchRenormMethod(_BatchStatMethod):
    """Batch Renormalization before each nonlinearity.

    Args:
        scale, momentum, eps: as ``l1_batch_norm``.
        rmax, dmax: clipping limits after warm-up (the paper's 3 and 5).
        warmup_start, rmax_steps, dmax_steps: plain BN for ``warmup_start`` steps, then linear
            growth of the limits (the paper's ImageNet schedule by default; short runs may
            want e.g. ``warmup_start=500, rmax_steps=2000, dmax_steps=1500``).
    """

    paper = "Ioffe 2017, arXiv:1702.03275"

    def __init__(self, scale: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                 rmax: float = 3.0, dmax: float = 5.0, warmup_start: int = 5000,
                 rmax_steps: int = 35000, dmax_steps: int = 20000) -> None:
        super().__init__(scale, momentum, eps)
        self.rmax, self.dmax = rmax, dmax
        self.warmup_start, self.rmax_steps, self.dmax_steps = warmup_start, rmax_steps, dmax_steps

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return BatchRenorm(num_features, rmax=self.rmax, dmax=self.dmax,
                           warmup_start=self.warmup_start, rmax_steps=self.rmax_steps,
                           dmax_steps=self.dmax_steps, **self._common(spatial_dims))

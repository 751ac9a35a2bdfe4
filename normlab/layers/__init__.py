"""Normalization layers: thin nn.Module wrappers over :mod:`normlab.functional`.

Every normlab layer derives from :class:`NormLayer` (what surgery reads: ``eval_affine``,
``without_norm``, ``spatial_dims``); ``batch_norm`` builds torch's own BatchNorm.
"""

from .base import NormLayer
from .batch_norm import batch_norm
from .batch_norms import BatchRenorm, L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from .decorrelated_bn import DecorrelatedBatchNorm
from .frn import FilterResponseNorm
from .group_norms import GroupNorm, InstanceNorm, LayerNorm
from .ic_layer import ICLayer
from .kalman_norm import KalmanNorm
from .mixture_norm import MixtureNorm
from .proxy_norm import ProxyNormActivation

__all__ = [
    "NormLayer", "batch_norm",
    "BatchRenorm", "L1BatchNorm", "LinfBatchNorm", "RangeBatchNorm",
    "GroupNorm", "LayerNorm", "InstanceNorm",
    "FilterResponseNorm", "ProxyNormActivation", "ICLayer",
    "KalmanNorm", "MixtureNorm", "DecorrelatedBatchNorm",
]

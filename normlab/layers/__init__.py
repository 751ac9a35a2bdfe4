"""Normalization layers: thin nn.Module wrappers over :mod:`normlab.functional`.

Every normlab layer derives from :class:`NormLayer` (what surgery reads: ``eval_affine``,
``without_norm``, ``spatial_dims``); ``batch_norm`` builds torch's own BatchNorm.
"""

from .base import NormLayer
from .torch_batch_norm import batch_norm
from .batch_renormalization import BatchRenorm
from .dispersion_batch_norm import L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from .decorrelated_bn import DecorrelatedBatchNorm
from .frn import FilterResponseNorm
from .group_norms import GroupNorm, GroupNorm1, InstanceNorm
from .ic_layer import ICLayer
from .kalman_norm import KalmanNorm
from .mixture_norm import MixtureNorm
from .proxy_norm import ProxyNormActivation

__all__ = [
    "NormLayer", "batch_norm",
    "BatchRenorm", "L1BatchNorm", "LinfBatchNorm", "RangeBatchNorm",
    "GroupNorm", "GroupNorm1", "InstanceNorm",
    "FilterResponseNorm", "ProxyNormActivation", "ICLayer",
    "KalmanNorm", "MixtureNorm", "DecorrelatedBatchNorm",
]

"""Pure tensor functions, one family per file; the public ones are re-exported here."""

from .batch_renormalization import batch_renorm, renorm_limits
from .dispersion_batch_norm import (
    dispersion_normalize,
    gaussian_range,
    gaussian_topk_abs_mean,
    l1_batch_norm,
    l1_moments,
    linf_batch_norm,
    linf_moments,
    range_batch_norm,
    range_moments,
    range_running_factor,
)
from .range_constant import gaussian_range_unit_variance
from .frn import filter_response_norm, filter_response_norm_tlu, frn_fusable, tlu
from .proxy_norm import gaussian_grid, proxy_moments, proxy_norm
from .standardization import (
    DEFAULT_EPS, channel_moments, implementation, reduction_dims, set_implementation,
    standardization_loss,
)

__all__ = [
    "DEFAULT_EPS", "channel_moments", "reduction_dims", "standardization_loss",
    "set_implementation", "implementation",
    "l1_batch_norm", "linf_batch_norm", "range_batch_norm", "batch_renorm",
    "l1_moments", "linf_moments", "range_moments", "dispersion_normalize", "renorm_limits",
    "gaussian_topk_abs_mean", "gaussian_range", "gaussian_range_unit_variance",
    "range_running_factor",
    "filter_response_norm", "filter_response_norm_tlu", "frn_fusable", "tlu", "gaussian_grid", "proxy_moments", "proxy_norm",
]

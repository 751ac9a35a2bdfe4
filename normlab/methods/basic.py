"""The three methods of the standardization-loss paper's Figure 1: none, batch_norm, std_loss.

- ``none``: the bare network.
- ``batch_norm``: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
  Reducing Internal Covariate Shift", 2015, arXiv:1502.03167. Inserted before each
  nonlinearity. The standardization-loss paper's MNIST BN learns a shift but no scale
  (arXiv:1903.00925, appendix A.1), which is ``batch_norm``; ``batch_norm_affine`` learns both.
- ``std_loss``: Collins, Ballé & Shlens 2019, arXiv:1903.00925 — no layer; an auxiliary loss.
"""

from __future__ import annotations

from torch import nn

from ..layers.torch_batch_norm import batch_norm
from ..losses.standardization import REDUCTIONS, STATS, WEIGHT_LAYERS, StandardizationLoss
from . import METHODS
from .base import BatchStatsMethod, Method


@METHODS.register("none")
class NoNorm(Method):
    """No normalization: the baseline every speed-up is measured against."""

    kind = "none"
    paper = "-"
    inference = "none"


@METHODS.register("batch_norm")
class BatchNormMethod(BatchStatsMethod):
    """Batch Normalization before each nonlinearity.

    Args:
        scale: learn a per-channel scale (gamma). Off by default, as in the paper's MNIST nets.
        momentum, eps: as in ``torch.nn.BatchNorm2d``.
    """

    paper = "Ioffe & Szegedy 2015, arXiv:1502.03167"

    def __init__(self, scale: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> None:
        self.scale = scale
        self.momentum = momentum
        self.eps = eps

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return batch_norm(num_features, spatial_dims, scale=self.scale, eps=self.eps,
                          momentum=self.momentum)


@METHODS.register("batch_norm_affine")
class AffineBatchNormMethod(BatchNormMethod):
    """Batch Normalization with both scale and shift (the usual torch default).

    Args:
        momentum, eps: as in ``torch.nn.BatchNorm2d``; the scale is always learned, so it is
            not an option (and not among :meth:`options`).
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(scale=True, momentum=momentum, eps=eps)


@METHODS.register("std_loss")
class StandardizationLossMethod(Method):
    """The standardization loss on every weight layer's output except the logits.

    Args:
        weight: the loss weight (the paper uses 1.0 for its small MNIST networks).
        eps: inside the log of the per-channel KL divergence.
        stats: under data parallelism, moments of each rank's shard (``"replica"``, the
            paper's per-core choice) or of the global batch (``"global"``); see
            :class:`~normlab.losses.StandardizationLoss`.
        reduction: ``"sum"`` (the paper's) or ``"mean"`` over channels and layers (width-
            and depth-independent; a mean-weight ``w`` is a sum-weight ``w / channels``).
        logits: also standardize the logit layer's output (the paper's text hooks "each
            layer"; normlab's default leaves the classifier's logits free).
        bias: weight layers before each activation keep their bias (default). ``False``
            builds them bias-free, like the paper's BN network, whose only per-channel
            offset is BN's learned shift.
    """

    kind = "loss"
    paper = "Collins, Ballé & Shlens 2019, arXiv:1903.00925"
    batch_dependent = False
    inference = "none (loss dropped)"
    option_attributes = {"bias": "conv_bias"}

    def __init__(self, weight: float = 1.0, eps: float = 1e-5, stats: str = "replica",
                 reduction: str = "sum", logits: bool = False, bias: bool = True) -> None:
        if stats not in STATS:
            raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        for name, value in (("logits", logits), ("bias", bias)):
            if not isinstance(value, bool):
                raise ValueError(f"std_loss option {name} must be True or False, got {value!r}")
        self.weight = weight
        self.eps = eps
        self.stats = stats
        self.reduction = reduction
        self.logits = logits
        self.conv_bias = bias

    def auxiliary_loss(self, model: nn.Module) -> StandardizationLoss:
        layers = None  # every weight layer but the last executed (the logits)
        if self.logits:
            layers = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
        return StandardizationLoss(model, weight=self.weight, layers=layers, eps=self.eps,
                                   stats=self.stats, reduction=self.reduction)

"""Three statistically richer batch normalizations, one layer before each nonlinearity.

- ``kalman_norm``: Wang, Peng, Luo, Wang & Lin, "Batch Kalman Normalization: Towards
  Training Deep Neural Networks with Micro-Batches", 2018, arXiv:1802.03133
  (:mod:`normlab.layers.kalman_norm`).
- ``mixture_norm``: Kalayeh & Shah, "Training Faster by Separating Modes of Variation in
  Batch-normalized Models", 2019, arXiv:1806.02892 (:mod:`normlab.layers.mixture_norm`).
- ``decorrelated_batch_norm``: Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization",
  2018, arXiv:1804.08450, with the Newton-Schulz whitening of Huang et al. 2019, "Iterative
  Normalization", arXiv:1904.03441 (:mod:`normlab.layers.decorrelated_bn`).

All three learn a per-channel scale and shift after normalizing, so weight layers drop
their bias (``conv_bias = False``).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..layers.base import NormLayer, with_spatial_dims
from ..layers.decorrelated_bn import DecorrelatedBatchNorm
from ..layers.kalman_norm import KalmanNorm
from ..layers.mixture_norm import MixtureNorm
from . import METHODS
from .base import BatchStatsMethod, Method

__all__ = ["KalmanNormMethod", "MixtureNormMethod", "DecorrelatedBatchNormMethod"]


@METHODS.register("kalman_norm")
class KalmanNormMethod(BatchStatsMethod):
    """Batch Kalman Normalization: each layer fuses its batch statistics with a prediction
    from the previous normalization layer's statistics.

    The method links the layers of one model into a chain: models call ``block`` (hence
    ``norm``) once per weight layer in forward order, and each new layer is linked to the
    one created before it. :meth:`prepare` (which ``build_model`` calls after building) ends
    the chain, so the next model built with the same instance starts a fresh one. A model
    built without ``build_model`` should be followed by :meth:`reset_chain` before the next
    build; otherwise its first layer would be linked to the previous model's last layer
    (``prepare`` detects that and raises).

    Args:
        gain: ``p``, the weight of the current batch's statistics (1 = plain BN).
        momentum, eps: as in ``torch.nn.BatchNorm2d``.
    """

    # Folds like BN: each layer's eval map uses its running statistics alone (no fusion).
    paper = "Wang, Peng, Luo, Wang & Lin 2018, arXiv:1802.03133"

    def __init__(self, gain: float = 0.9, momentum: float = 0.1, eps: float = 1e-5) -> None:
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be in [0, 1], got {gain}")
        self.gain = gain
        self.momentum = momentum
        self.eps = eps
        self._last: KalmanNorm | None = None

    def reset_chain(self) -> None:
        """Start a new chain: the next layer built has no predecessor."""
        self._last = None

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        prev = self._last
        layer = KalmanNorm(num_features, eps=self.eps, momentum=self.momentum,
                           gain=self.gain,
                           prev_features=None if prev is None else prev.num_features)
        layer.link(prev)
        self._last = layer
        return with_spatial_dims(layer, spatial_dims)

    def prepare(self, model: nn.Module) -> nn.Module:
        self.reset_chain()
        inside = {id(m) for m in model.modules()}
        for name, module in model.named_modules():
            if isinstance(module, KalmanNorm) and module.prev is not None \
                    and id(module.prev) not in inside:
                raise ValueError(
                    f"KalmanNorm {name!r} is linked to a layer of another model: build each "
                    f"model with build_model, or call reset_chain() between builds"
                )
        return model


class _LayerOfOptionsMethod(Method):
    """Shared body of the methods below: ``layer_class(num_features, **self.options())``
    before each nonlinearity (the method's options are the layer's keyword arguments)."""

    kind = "layer"
    batch_dependent = True
    inference = "layer"
    conv_bias = False
    layer_class: ClassVar[type[NormLayer]]

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return with_spatial_dims(self.layer_class(num_features, **self.options()),
                                 spatial_dims)


@METHODS.register("mixture_norm")
class MixtureNormMethod(_LayerOfOptionsMethod):
    """Mixture Normalization: per-channel Gaussian-mixture batch normalization.

    Args:
        components: mixture components ``K`` (default 2; 1 is batch normalization).
        em_iterations: EM steps per training batch (default 3).
        momentum, eps: of the running component parameters / added to each variance.
    """

    paper = "Kalayeh & Shah 2019, arXiv:1806.02892"
    layer_class = MixtureNorm

    def __init__(self, components: int = 2, em_iterations: int = 3, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        self.components = components
        self.em_iterations = em_iterations
        self.momentum = momentum
        self.eps = eps
        self.norm(1, 0)  # validates the options now, not at build


@METHODS.register("decorrelated_batch_norm")
class DecorrelatedBatchNormMethod(_LayerOfOptionsMethod):
    """Decorrelated Batch Normalization: group-wise ZCA whitening, then scale and shift.

    Args:
        group_size: channels per whitening group (default 16; a layer with fewer channels
            is one group; a remainder forms a smaller last group).
        iterations: Newton-Schulz iterations for the inverse square root (default 10).
        momentum, eps: of the running mean / whitening matrix; added to the covariance
            diagonal.
    """

    paper = "Huang, Yang, Lang & Deng 2018, arXiv:1804.08450"
    layer_class = DecorrelatedBatchNorm

    def __init__(self, group_size: int = 16, iterations: int = 10, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        self.group_size = group_size
        self.iterations = iterations
        self.momentum = momentum
        self.eps = eps
        self.norm(1, 0)  # validates the options now, not at build

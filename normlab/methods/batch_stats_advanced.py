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

from torch import nn

from ..layers.base import with_spatial_dims
from ..layers.decorrelated_bn import DecorrelatedBatchNorm
from ..layers.kalman_norm import KalmanNorm
from ..layers.mixture_norm import MixtureNorm
from . import METHODS
from .base import Method

__all__ = ["KalmanNormMethod", "MixtureNormMethod", "DecorrelatedBatchNormMethod"]


@METHODS.register("kalman_norm")
class KalmanNormMethod(Method):
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

    kind = "layer"
    paper = "Wang, Peng, Luo, Wang & Lin 2018, arXiv:1802.03133"
    batch_dependent = True
    inference = "folded into the weights"
    conv_bias = False
    # The eval map of each layer is per-channel affine (running statistics, no fusion):
    # deployment folds it into the weight layer before it.
    folds = True

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


@METHODS.register("mixture_norm")
class MixtureNormMethod(Method):
    """Mixture Normalization: per-channel Gaussian-mixture batch normalization.

    Args:
        components: mixture components ``K`` (default 2; 1 is batch normalization).
        em_iterations: EM steps per training batch (default 3).
        momentum, eps: of the running component parameters / added to each variance.
    """

    kind = "layer"
    paper = "Kalayeh & Shah 2019, arXiv:1806.02892"
    batch_dependent = True
    inference = "layer"
    conv_bias = False

    def __init__(self, components: int = 2, em_iterations: int = 3, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        self.components = components
        self.em_iterations = em_iterations
        self.momentum = momentum
        self.eps = eps
        MixtureNorm(1, eps=eps, momentum=momentum, components=components,
                    em_iterations=em_iterations)  # validates the options now, not at build

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return with_spatial_dims(
            MixtureNorm(num_features, eps=self.eps, momentum=self.momentum,
                        components=self.components, em_iterations=self.em_iterations),
            spatial_dims)


@METHODS.register("decorrelated_batch_norm")
class DecorrelatedBatchNormMethod(Method):
    """Decorrelated Batch Normalization: group-wise ZCA whitening, then scale and shift.

    Args:
        group_size: channels per whitening group (default 16; a layer with fewer channels
            is one group; a remainder forms a smaller last group).
        iterations: Newton-Schulz iterations for the inverse square root (default 10).
        momentum, eps: of the running mean / whitening matrix; added to the covariance
            diagonal.
    """

    kind = "layer"
    paper = "Huang, Yang, Lang & Deng 2018, arXiv:1804.08450"
    batch_dependent = True
    inference = "layer"
    conv_bias = False

    def __init__(self, group_size: int = 16, iterations: int = 10, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        self.group_size = group_size
        self.iterations = iterations
        self.momentum = momentum
        self.eps = eps
        DecorrelatedBatchNorm(1, eps=eps, momentum=momentum, group_size=group_size,
                              iterations=iterations)  # validates the options now

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return with_spatial_dims(
            DecorrelatedBatchNorm(num_features, eps=self.eps, momentum=self.momentum,
                                  group_size=self.group_size, iterations=self.iterations),
            spatial_dims)

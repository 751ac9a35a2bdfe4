"""Weight reparametrizations and adaptive gradient clipping as registered methods.

- ``weight_norm``: Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to
  Accelerate Training of Deep Neural Networks", 2016, arXiv:1602.07868. Every Linear/Conv
  weight becomes ``g * v / ||v||`` per output unit, ``g`` initialized to the initial norms so
  the initial function is unchanged (no data-dependent initialization).
- ``bounded_weight_norm`` / ``bounded_weight_norm_linf``: Hoffer, Banner, Golan & Soudry,
  "Norm matters: efficient and accurate normalization schemes in deep networks", 2018,
  arXiv:1803.01814, section 5. Every Linear/Conv weight becomes ``rho * v / ||v||_p`` with
  ``rho`` each unit's norm at initialization, fixed (L2 or L-inf norm).
- ``scaled_weight_standardization``: Brock, De & Smith 2021, "Characterizing signal
  propagation to close the performance gap in unnormalized ResNets", arXiv:2101.08692, and
  Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
  Normalization", arXiv:2102.06171. Scaled WS on every Linear/Conv except the last (the
  classifier, which NFNets leave as a plain linear layer), plus adaptive gradient clipping on
  every parameter except the classifier's (the paper's exemption).
- ``agc``: adaptive gradient clipping alone (arXiv:2102.06171, section 4.1).

The weight methods act through ``prepare`` (in place, before the optimizer is built) and bake
their weights in for deployment (``for_inference`` returns a plain copy); see
:mod:`normlab.layers.weight_param` and :mod:`normlab.optim.agc`.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.optim import Optimizer

from ..layers.weight_param import (
    apply_bounded_weight_norm, apply_scaled_weight_standardization, apply_weight_norm,
    remove_weight_param, weight_layers,
)
from ..optim.agc import AGC, DEFAULT_CLIPPING
from . import METHODS
from .base import Method


class _WeightParamMethod(Method):
    """Shared deployment: a copy of the model with every parametrization baked in."""

    kind = "weight"
    inference = "none (folded into the weights)"

    def for_inference(self, model: nn.Module) -> nn.Module:
        return remove_weight_param(copy.deepcopy(model))


@METHODS.register("weight_norm")
class WeightNormMethod(_WeightParamMethod):
    """Weight normalization on every Linear/Conv (classifier included, as in the paper).

    Args:
        eps: lower bound on ``||v||`` (0: the paper's form).
    """

    paper = "Salimans & Kingma 2016, arXiv:1602.07868"

    def __init__(self, eps: float = 0.0) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def prepare(self, model: nn.Module) -> nn.Module:
        for _, layer in weight_layers(model):
            apply_weight_norm(layer, self.eps)
        return model


@METHODS.register("bounded_weight_norm")
class BoundedWeightNormMethod(_WeightParamMethod):
    """Bounded weight normalization on every Linear/Conv: each unit's norm stays at its
    initial value.

    Args:
        norm: ``"l2"`` or ``"linf"``.
    """

    paper = "Hoffer, Banner, Golan & Soudry 2018, arXiv:1803.01814"
    option_attributes = {"norm": "norm_kind"}

    def __init__(self, norm: str = "l2") -> None:
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        # Not ``self.norm``: that name is the Method hook that returns a layer.
        self.norm_kind = norm

    def prepare(self, model: nn.Module) -> nn.Module:
        for _, layer in weight_layers(model):
            apply_bounded_weight_norm(layer, self.norm_kind)
        return model


@METHODS.register("bounded_weight_norm_linf")
class BoundedWeightNormLinfMethod(BoundedWeightNormMethod):
    """Bounded weight normalization with the L-inf norm (the paper's low-precision variant)."""

    def __init__(self) -> None:
        super().__init__(norm="linf")


@METHODS.register("scaled_weight_standardization")
class ScaledWeightStandardizationMethod(_WeightParamMethod):
    """Scaled weight standardization on every Linear/Conv but the last, with AGC.

    Args:
        eps: lower bound on ``fan_in * var(W)`` (1e-4, as in the NFNet reference code).
        gain_init: initial per-unit gain (1; pass ``RELU_GAIN`` for the paper's ReLU scaling).
        clipping: AGC threshold ``lambda`` (see :data:`normlab.optim.agc.DEFAULT_CLIPPING`);
            ``None`` turns AGC off.
        agc_eps: AGC's lower bound on each unit's weight norm (the paper's 1e-3).
    """

    paper = "Brock, De & Smith 2021, arXiv:2101.08692; Brock, De, Smith & Simonyan 2021, arXiv:2102.06171"

    def __init__(self, eps: float = 1e-4, gain_init: float = 1.0,
                 clipping: float | None = DEFAULT_CLIPPING, agc_eps: float = 1e-3) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if clipping is not None and not clipping > 0:
            raise ValueError(f"clipping must be > 0 or None, got {clipping}")
        self.eps = eps
        self.gain_init = gain_init
        self.clipping = clipping
        self.agc_eps = agc_eps

    def prepare(self, model: nn.Module) -> nn.Module:
        for _, layer in weight_layers(model)[:-1]:
            apply_scaled_weight_standardization(layer, self.eps, self.gain_init)
        return model

    def wrap_optimizer(self, optimizer: Optimizer, model: nn.Module) -> Optimizer:
        if self.clipping is None:
            return optimizer
        return AGC(optimizer, model, clipping=self.clipping, eps=self.agc_eps)


@METHODS.register("agc")
class AGCMethod(Method):
    """Adaptive gradient clipping alone, on every parameter except the last Linear/Conv's.

    Args:
        clipping: the threshold ``lambda``.
        eps: lower bound on each unit's weight norm (the paper's 1e-3).
    """

    kind = "gradient"
    paper = "Brock, De, Smith & Simonyan 2021, arXiv:2102.06171"
    inference = "none"

    def __init__(self, clipping: float = DEFAULT_CLIPPING, eps: float = 1e-3) -> None:
        if not clipping > 0:
            raise ValueError(f"clipping must be > 0, got {clipping}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.clipping = clipping
        self.eps = eps

    def wrap_optimizer(self, optimizer: Optimizer, model: nn.Module) -> Optimizer:
        return AGC(optimizer, model, clipping=self.clipping, eps=self.eps)

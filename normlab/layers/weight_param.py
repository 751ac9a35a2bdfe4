"""Weight reparametrizations: weight norm, bounded weight norm, scaled weight standardization.

- Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate Training
  of Deep Neural Networks", 2016, arXiv:1602.07868: ``w = g * v / ||v||`` per output unit.
- Hoffer, Banner, Golan & Soudry, "Norm matters: efficient and accurate normalization schemes
  in deep networks", 2018, arXiv:1803.01814, section 5: bounded weight normalization,
  ``w = rho * v / ||v||_p`` with ``rho`` fixed (here: each unit's norm at initialization), for
  ``p = 2`` and ``p = inf``.
- Brock, De & Smith, "Characterizing signal propagation to close the performance gap in
  unnormalized ResNets", 2021, arXiv:2101.08692, and Brock, De, Smith & Simonyan,
  "High-Performance Large-Scale Image Recognition Without Normalization", 2021,
  arXiv:2102.06171: scaled weight standardization
  ``W_hat = gain * (W - mean(W)) / (std(W) * sqrt(fan_in))`` per output unit.

Every reparametrization is a ``torch.nn.utils.parametrize`` parametrization on ``weight``, so
the module keeps its class and forward, the parameters live under
``module.parametrizations.weight``, and :func:`remove_weight_param` bakes the current weights
back in as plain parameters. "Output unit" is dim 0 of the weight: a row of a ``Linear``
weight, a filter of a ``Conv1d/2d/3d`` weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..nn_types import WEIGHT_LAYERS

__all__ = [
    "WEIGHT_LAYERS", "RELU_GAIN", "unit_norm", "weight_norm", "bounded_weight_norm",
    "scaled_weight_standardization", "WeightNorm", "BoundedWeightNorm",
    "ScaledWeightStandardization", "weight_layers", "apply_weight_norm",
    "apply_bounded_weight_norm", "apply_scaled_weight_standardization", "remove_weight_param",
]

#: The ReLU gain ``gamma = sqrt(2 / (1 - 1/pi))`` of arXiv:2101.08692 (section 4): the scale that
#: restores unit variance after a ReLU of a unit Gaussian. Pass it as ``gain_init`` to start
#: scaled WS with variance-preserving ReLU layers.
RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))

_NORMS = {"l2": 2.0, "linf": math.inf}


def _unit_shape(weight: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-unit ``(out,)`` vector against ``weight``."""
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)


def unit_norm(weight: Tensor, p: float = 2.0) -> Tensor:
    """The ``p``-norm of each output unit (dim 0) over all its other dims.

    Shape:
        weight: ``(out, *)`` with at least 2 dims; returns ``(out,)``.
    """
    if weight.dim() < 2:
        raise ValueError(f"a weight needs >= 2 dims (out, in, ...), got shape {tuple(weight.shape)}")
    return torch.linalg.vector_norm(weight.flatten(1), ord=p, dim=1)


def weight_norm(g: Tensor, v: Tensor, eps: float = 0.0) -> Tensor:
    """Weight normalization ``w = g * v / ||v||_2`` per output unit.

    Args:
        g: per-unit length, shape ``(out,)``.
        v: direction, shape ``(out, *)``.
        eps: lower bound on ``||v||`` (0: none, the paper's form; a zero unit then gives NaN).
    """
    norm = unit_norm(v)
    if eps > 0:
        norm = norm.clamp_min(eps)
    return v * (g / norm).view(_unit_shape(v))


def bounded_weight_norm(v: Tensor, bound: Tensor, p: float = 2.0, eps: float = 1e-12) -> Tensor:
    """Bounded weight normalization ``w = bound * v / ||v||_p`` per output unit.

    Args:
        v: direction, shape ``(out, *)``.
        bound: the fixed per-unit norm ``rho``, shape ``(out,)``.
        p: 2 or ``inf``.
        eps: lower bound on ``||v||_p`` so an all-zero unit gives zeros, not NaN.
    """
    return v * (bound / unit_norm(v, p).clamp_min(eps)).view(_unit_shape(v))


def scaled_weight_standardization(weight: Tensor, gain: Tensor, eps: float = 1e-4) -> Tensor:
    """Scaled weight standardization, per output unit over its ``fan_in`` entries.

    ``W_hat = gain * (W - mean(W)) / sqrt(max(fan_in * var(W), eps))``, with the biased
    (population) variance, so ``W_hat`` has mean 0 and std ``gain / sqrt(fan_in)`` per unit.
    ``eps`` keeps a constant unit finite; it bounds ``fan_in * var`` (not ``var``), which is
    ~1 for a standard initialization whatever the layer width.

    Args:
        weight: ``(out, *)``; ``fan_in`` is the product of the other dims.
        gain: learnable per-unit gain, shape ``(out,)``.
        eps: lower bound on ``fan_in * var(W)``.
    """
    flat = weight.flatten(1)
    fan_in = flat.shape[1]
    mean = flat.mean(dim=1, keepdim=True)
    centered = flat - mean
    var = centered.square().mean(dim=1, keepdim=True)
    scale = gain.view(-1, 1) * torch.rsqrt((var * fan_in).clamp_min(eps))
    return (centered * scale).view_as(weight)


class WeightNorm(nn.Module):
    """Parametrization ``w = g * v / ||v||`` with learnable ``g`` (``original0``, shape
    ``(out,)``) and ``v`` (``original1``, the weight's shape).

    ``right_inverse`` sets ``g = ||w||`` and ``v = w``, so registering it leaves the layer's
    function unchanged (the paper's data-dependent initialization is not done here).

    Args:
        eps: lower bound on ``||v||`` (0, the default, is the paper's form).
    """

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def forward(self, g: Tensor, v: Tensor) -> Tensor:
        return weight_norm(g, v, self.eps)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return unit_norm(weight).detach().clone(), weight.detach().clone()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class BoundedWeightNorm(nn.Module):
    """Parametrization ``w = bound * v / ||v||_p`` with ``bound`` a fixed buffer of shape
    ``(out,)`` (not learned) and ``v`` the learnable weight.

    Assigning ``module.weight = w`` later sets ``v = w``: the assigned weight is rescaled to the
    bound.

    Args:
        out_features: output units (dim 0 of the weight).
        norm: ``"l2"`` or ``"linf"``.
        eps: lower bound on ``||v||_p``.
    """

    def __init__(self, out_features: int, norm: str = "l2", eps: float = 1e-12,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        self.out_features = out_features
        self.norm = norm
        self.p = _NORMS[norm]
        self.eps = eps
        self.register_buffer("bound", torch.ones(out_features, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        """Bound of 1 per unit; :func:`apply_bounded_weight_norm` sets the initial norms."""
        self.bound.fill_(1.0)

    def forward(self, v: Tensor) -> Tensor:
        return bounded_weight_norm(v, self.bound, self.p, self.eps)

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight

    def extra_repr(self) -> str:
        return f"{self.out_features}, norm={self.norm!r}, eps={self.eps}"


class ScaledWeightStandardization(nn.Module):
    """Parametrization ``W_hat = gain * (W - mean) / sqrt(max(fan_in * var, eps))`` with a
    learnable per-unit ``gain`` of shape ``(out,)`` (see :func:`scaled_weight_standardization`).

    Not invertible: assigning ``module.weight`` raises.

    Args:
        out_features: output units (dim 0 of the weight).
        eps: lower bound on ``fan_in * var(W)``; 1e-4 as in the NFNet reference code.
        gain_init: initial gain; 1 by default (pass :data:`RELU_GAIN` for the paper's
            variance-preserving ReLU scaling).
    """

    def __init__(self, out_features: int, eps: float = 1e-4, gain_init: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.out_features = out_features
        self.eps = eps
        self.gain_init = gain_init
        self.gain = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gain, self.gain_init)

    def forward(self, weight: Tensor) -> Tensor:
        return scaled_weight_standardization(weight, self.gain, self.eps)

    def extra_repr(self) -> str:
        return f"{self.out_features}, eps={self.eps}, gain_init={self.gain_init}"


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv1d/2d/3d in ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def _check_layer(module: nn.Module) -> Tensor:
    if not isinstance(module, WEIGHT_LAYERS):
        raise TypeError(f"expected one of {[c.__name__ for c in WEIGHT_LAYERS]}, "
                        f"got {type(module).__name__}")
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{type(module).__name__}.weight is already parametrized; "
                         "call remove_weight_param first")
    return module.weight


def apply_weight_norm(module: nn.Module, eps: float = 0.0) -> nn.Module:
    """Register :class:`WeightNorm` on ``module.weight`` (in place); returns ``module``."""
    _check_layer(module)
    parametrize.register_parametrization(module, "weight", WeightNorm(eps))
    return module


def apply_bounded_weight_norm(module: nn.Module, norm: str = "l2", eps: float = 1e-12) -> nn.Module:
    """Register :class:`BoundedWeightNorm` with each unit's bound set to its current norm."""
    weight = _check_layer(module)
    param = BoundedWeightNorm(weight.shape[0], norm, eps, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        param.bound.copy_(unit_norm(weight, param.p))
    parametrize.register_parametrization(module, "weight", param)
    return module


def apply_scaled_weight_standardization(module: nn.Module, eps: float = 1e-4,
                                        gain_init: float = 1.0) -> nn.Module:
    """Register :class:`ScaledWeightStandardization` on ``module.weight`` (in place)."""
    weight = _check_layer(module)
    param = ScaledWeightStandardization(weight.shape[0], eps, gain_init,
                                        device=weight.device, dtype=weight.dtype)
    # No right_inverse: the parametrization's original is the raw W, standardized on the fly.
    parametrize.register_parametrization(module, "weight", param)
    return module


_OURS = (WeightNorm, BoundedWeightNorm, ScaledWeightStandardization)


def remove_weight_param(model: nn.Module) -> nn.Module:
    """Bake every normlab weight parametrization of ``model`` into a plain ``weight`` (in place).

    The eval-mode function is unchanged; learned ``g``/``gain`` and fixed bounds are folded
    into the weight. A weight that also carries a foreign parametrization loses it too (torch
    removes a tensor's parametrizations all together). Returns ``model``.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, _OURS) for p in module.parametrizations["weight"]):
            _own_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its injected ``Parametrized*`` class.

    ``copy.deepcopy`` of a parametrized module shares the injected class with the original,
    and ``remove_parametrizations`` deletes the ``weight`` property from that class: without
    this copy, baking a deep copy would break the original model.
    """
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)

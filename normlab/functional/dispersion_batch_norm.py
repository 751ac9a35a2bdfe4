"""Batch norms whose dispersion is not the standard deviation: L1, L-infinity and Range BN.

- L1 and L-infinity (top-k) batch norm: Hoffer, Banner, Golan & Soudry, "Norm matters:
  efficient and accurate normalization schemes in deep networks", 2018, arXiv:1803.01814.
- Range batch norm: Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit training of
  neural networks", 2018, arXiv:1805.11046.

Each dispersion batch norm computes, per channel ``c`` over the ``n`` elements of every other
dimension, the mean ``mu_c`` and a dispersion ``s_c`` scaled to estimate the standard
deviation of Gaussian data, then ``y = (x - mu_c) / (s_c + eps) * gamma_c + beta_c``:

- L1: ``s = sqrt(pi / 2) * mean |x - mu|`` (``E|X - mu| = sigma * sqrt(2 / pi)`` for a Gaussian).
- L-inf: ``s = mean of the k largest |x - mu|`` divided by ``E_k(n)``, the expected mean of the
  ``k`` largest of ``n`` absolute standard normals.
- Range: ``s = (max - min) of x`` divided by ``C(n)``, close to ``R(n)``, the expected range
  of ``n`` standard normals.

The constants (``correction="exact"``, the default) are computed once per ``(n, k)`` by
quadrature (float64, cached):

- Range: the output variance is exactly 1 on Gaussian data at every ``n >= 2``. The divisor
  is ``C(n) = (n E[(x - xbar)^2 / W^2])^(-1/2)`` rather than ``E[W] = R(n)``: with ``R(n)`` the
  dispersion is unbiased but the output variance is ``R(n)^2 E[v / W^2]`` (Jensen: 0.53
  at n = 3, 0.84 at n = 8, 0.98 at n = 32, 1.02 at n = 400). ``E[v / W^2]`` follows from
  the independence of the sample's direction ``(x - xbar) / |x - xbar|`` and its norm
  (``|x - xbar|^2 ~ sigma^2 chi^2_(n-1)``): ``n E[v / W^2] = (n - 3) E[W^-2]`` for ``n >= 4``,
  with ``E[W^-2]`` a double integral over the range density; ``n = 2, 3`` have closed forms
  (``1/4`` and ``1 / (sqrt(3) pi)``). The running dispersion is updated with ``W / R(n)``,
  an unbiased estimate of sigma, so inference (like BN's unbiased running variance) also
  gives unit variance.
- L1 and top-k: the population expectations ``E|Z| = sqrt(2 / pi)`` and ``E_k(n)`` (mean of
  the ``k`` largest of ``n`` absolute standard normals, by quadrature over the order-statistic
  densities). The output variance on Gaussian data is within 1.5% of 1 for ``n >= 32``
  (measured: L1 0.990 at 32, 0.999 at 400; top-10 0.987, 1.004) and lower for small batches
  of values per channel (L1 and top-k: 0.86 at n = 4, 0.95 at n = 8): the estimator's
  finite-sample law (deviations from the sample mean, Jensen) has no closed form here.
  ``tests/test_references_batch_stats.py`` measures all three over ``n``.

The papers' asymptotic
constants (``correction="paper"``) are far from unit variance: the range paper's ``C(n) = 1 / sqrt(2 ln n)`` times
the range estimates ``2 sigma`` (``E[range] ~ 2 sigma sqrt(2 ln n)``), so the output variance
is about 1/4 (and about 1/3 at ``n = 16384`` where the asymptote is 10% high); the L-inf
constant ``0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n)`` gives a top-10 dispersion of 1.28 sigma at
``n = 16384`` (output variance 0.6) and 0.61 sigma at ``n = 10``. A learned scale absorbs a
constant factor but not one that drifts with ``n``, and the running dispersion used at
inference would not estimate sigma; hence the exact default.

``eps`` is added to the dispersion (not to a variance under a square root): a constant channel
gives ``(x - mu) / eps = 0`` instead of a division by zero. Gradients flow through ``mu`` and
``s``, as in the papers. The ``*_moments`` functions are plain autograd; the training step
of ``l1/linf/range_batch_norm`` computes the same function and gradient with an analytic
backward (:mod:`normlab.functional.dispersion_autograd`), about 2-3x faster on CPU.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from .dispersion_autograd import L1_CONSTANT, TOPK_PAPER_CONSTANT, fused_dispersion_batch_norm
from .range_constant import gaussian_range_unit_variance
from .standardization import check_floating, reduction_dims

__all__ = [
    "CORRECTIONS", "gaussian_topk_abs_mean", "gaussian_range", "gaussian_range_unit_variance",
    "range_running_factor",
    "l1_moments", "linf_moments", "range_moments", "dispersion_normalize",
    "l1_batch_norm", "linf_batch_norm", "range_batch_norm",
]

CORRECTIONS = ("exact", "paper")

# Quadrature grid step 2.5e-3 on [0, 12]: wide enough for n up to ~1e30, fine enough for the
# order statistics' density near sqrt(2 ln n), whose width is ~1 / sqrt(2 ln n) (Simpson
# error < 1e-9 relative). numpy with math.erfc, not torch: a few thousand points, and torch's
# intra-op threads made these tiny calls take ~10 ms each on a busy machine.
_GRID_MAX, _GRID_POINTS = 12.0, 4801
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


@functools.lru_cache(maxsize=1)
def _half_grid() -> tuple[np.ndarray, np.ndarray]:
    """``x`` in ``(0, 12]`` and the standard normal upper tail ``P(Z > x)`` there."""
    x = np.linspace(0.0, _GRID_MAX, _GRID_POINTS)[1:]
    tail = 0.5 * np.array([math.erfc(v / math.sqrt(2.0)) for v in x])
    return x, tail


def _integrate_from_zero(x: np.ndarray, y: np.ndarray) -> float:
    """Simpson integral of ``y(x)`` on ``[0, x[-1]]`` (uniform ``x``, an even number of
    steps) for integrands vanishing at 0. Not the trapezoid rule: at ``x = 0`` the integrand
    has a nonzero slope (the half-normal density is ``2 phi(0)`` there), which costs the
    trapezoid rule ``h^2 / 12`` times that slope (5e-7 relative at ``k = n``)."""
    h = x[1] - x[0]
    coef = np.where(np.arange(1, y.shape[-1] + 1) % 2 == 1, 4.0, 2.0)
    coef[-1] = 1.0
    return float((y * coef).sum(axis=-1) * h / 3.0)


@functools.lru_cache(maxsize=256)
def gaussian_topk_abs_mean(n: int, k: int) -> float:
    """``E[mean of the k largest of |Z_1|..|Z_n|]`` for iid standard normal ``Z``.

    Averages the means of the top ``k`` order statistics of the half-normal distribution
    (CDF ``G = erf(x / sqrt 2)``, density ``g = 2 phi``); the ``j``-th largest (``j = 0..k-1``)
    has density ``n! / ((n-j-1)! j!) G^(n-j-1) (1-G)^j g``, integrated by Simpson's rule
    in log space. ``k = 1`` is ``E max |Z|``; ``k = n`` is ``E|Z| = sqrt(2 / pi)``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    x, tail = _half_grid()
    log_g = np.log1p(-2.0 * tail)
    log_tail = np.log(2.0 * tail)
    log_pdf = math.log(2.0) - 0.5 * x * x - 0.5 * math.log(2.0 * math.pi)
    total, log_binom = 0.0, 0.0  # log C(n - 1, j), by recurrence: lgamma(n) differences
    for j in range(k):               # lose digits for large n (1e-6 relative at n = 1e9)
        if j:
            log_binom += math.log(n - j) - math.log(j)
        log_c = math.log(n) + log_binom
        density = np.exp(log_c + (n - j - 1) * log_g + j * log_tail + log_pdf)
        total += _integrate_from_zero(x, x * density)
    return total / k


@functools.lru_cache(maxsize=256)
def gaussian_range(n: int) -> float:
    """``E[max - min]`` of ``n`` iid standard normals: ``2 * int x n Phi^(n-1) phi dx``."""
    if n < 2:
        raise ValueError(f"the range needs n >= 2 values, got n={n}")
    half, tail = _half_grid()
    x = np.concatenate([-half[::-1], [0.0], half])
    # log Phi: log1p(-tail) above 0, where 1 - tail would round away tails below 1e-16
    log_cdf = np.concatenate([np.log(tail[::-1]), [math.log(0.5)], np.log1p(-tail)])
    density = np.exp(math.log(n) + (n - 1) * log_cdf - 0.5 * x * x
                     - 0.5 * math.log(2.0 * math.pi))
    return 2.0 * float(_trapezoid(x * density, x))


def _validate(x: Tensor, training: bool, what: str) -> tuple[tuple[int, ...], int]:
    check_floating(x)
    _, dims = reduction_dims(x, 1)
    n = x.numel() // max(x.shape[1], 1)
    if x.numel() == 0:
        raise ValueError(f"{what} got an empty tensor of shape {tuple(x.shape)}")
    if training and n < 2:
        raise ValueError(
            f"{what} needs more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)}; use a batch size above 1 for fully connected layers")
    return dims, n


def _check_correction(correction: str) -> None:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def _channel_rows(dev: Tensor) -> Tensor:
    """``(C, M)`` view of an ``(N, C, *)`` tensor (a copy unless N == 1 or no spatial dims)."""
    return dev.transpose(0, 1).reshape(dev.shape[1], -1)


def l1_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and L1 dispersion ``sqrt(pi/2) * mean |x - mu|``, each ``(C,)``."""
    dims, _ = _validate(x, True, "l1_moments")
    mean = x.mean(dim=dims, keepdim=True)
    disp = (x - mean).abs().mean(dim=dims) * L1_CONSTANT
    return mean.reshape(-1), disp


def linf_moments(x: Tensor, k: int = 10, correction: str = "exact") -> tuple[Tensor, Tensor]:
    """Per-channel mean and top-k dispersion, each ``(C,)``.

    Args:
        x: ``(N, C, *)``.
        k: how many of the largest ``|x - mu|`` per channel are averaged; capped at ``n``, the
            elements per channel (``k = n`` is the L1 dispersion, ``k = 1`` the L-inf norm).
        correction: ``"exact"`` divides by :func:`gaussian_topk_abs_mean` ``(n, k)``;
            ``"paper"`` multiplies by ``0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n)``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_correction(correction)
    dims, n = _validate(x, True, "linf_moments")
    k = min(k, n)
    mean = x.mean(dim=dims, keepdim=True)
    rows = _channel_rows((x - mean).abs())
    top = rows.topk(k, dim=1, sorted=False).values.mean(dim=1)
    return mean.reshape(-1), top / _linf_constant(n, k, correction)


def _linf_constant(n: int, k: int, correction: str) -> float:
    """What the top-k mean is divided by: ``E_k(n)`` or the paper's inverse constant."""
    if correction == "exact":
        return gaussian_topk_abs_mean(n, k)
    return math.sqrt(2.0 * math.log(n)) / TOPK_PAPER_CONSTANT


def _range_constant(n: int, correction: str) -> float:
    """What the range is divided by: :func:`gaussian_range_unit_variance` ``(n)`` or the
    paper's ``1 / C(n) = sqrt(2 ln n)``."""
    if correction == "exact":
        return gaussian_range_unit_variance(n)
    return math.sqrt(2.0 * math.log(n))


def range_running_factor(n: int, correction: str) -> float:
    """What the training range dispersion is multiplied by before it enters the running
    dispersion: ``C(n) / R(n)`` (``exact``: the running value estimates sigma), else 1."""
    return gaussian_range_unit_variance(n) / gaussian_range(n) if correction == "exact" else 1.0


def range_moments(x: Tensor, correction: str = "exact") -> tuple[Tensor, Tensor]:
    """Per-channel mean and range dispersion ``(max - min) / C(n)``, each ``(C,)``.

    ``correction="exact"`` uses :func:`gaussian_range_unit_variance` ``(n)``; ``"paper"`` the
    paper's ``C(n) = 1 / sqrt(2 ln n)`` (dispersion ``range * C(n)``, about ``2 sigma``).
    """
    _check_correction(correction)
    dims, n = _validate(x, True, "range_moments")
    mean = x.mean(dim=dims)
    # The range of x equals the range of x - mu: no need to centre first.
    spread = x.amax(dim=dims) - x.amin(dim=dims)
    return mean, spread / _range_constant(n, correction)


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (x.dim() - 2))


def dispersion_normalize(x: Tensor, mean: Tensor, disp: Tensor, weight: Tensor | None = None,
                         bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``(x - mean) / (disp + eps) * weight + bias`` per channel, as one multiply-add over x."""
    scale = 1.0 / (disp + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return _affine(x, scale, shift)


def _affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` per channel. A multiply then an in-place add: ``torch.addcmul``
    with a broadcast ``(1, C, 1, 1)`` first operand is 2-3x slower on CPU."""
    return x.mul(_per_channel(scale, x)).add_(_per_channel(shift, x))


def _dispersion_batch_norm(x, kind, constant, running_mean, running_disp, weight, bias,
                           training, momentum, eps, what, k=1, running_factor=None):
    """Shared body; ``constant(n)`` gives the fused path's constant for ``n`` values per
    channel (:func:`~normlab.functional.dispersion_autograd.fused_dispersion_batch_norm`:
    the same function and gradient as autograd through the ``*_moments`` functions);
    ``running_factor(n)`` scales the batch dispersion before it enters the running one."""
    check_floating(x)
    if x.dim() < 2:
        raise ValueError(f"{what} expects (N, C, *) input, got shape {tuple(x.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not training:
        if running_mean is None or running_disp is None:
            raise ValueError(f"{what} with training=False needs running_mean and running_disp")
        return dispersion_normalize(x, running_mean, running_disp, weight, bias, eps)
    _, n = _validate(x, True, what)
    y, mean, disp = fused_dispersion_batch_norm(x, weight, bias, kind, eps, constant(n),
                                                min(k, n))
    if running_mean is not None and running_disp is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            if running_factor is not None:
                disp = disp * running_factor(n)
            running_disp.lerp_(disp.to(running_disp.dtype), momentum)
    return y


_NORM_DOC = """

    Args:
        x: ``(N, C, *)``.
        running_mean, running_disp: ``(C,)`` buffers; updated in place when ``training``
            (``running = (1 - momentum) * running + momentum * batch``, as torch's BN), used
            instead of the batch statistics when not.
        weight, bias: ``(C,)`` affine scale and shift, or ``None``.
        training: batch statistics (True) or running statistics (False).
        momentum: running-statistics update rate.
        eps: added to the dispersion.

    Returns:
        A tensor shaped like ``x``.
    """


def l1_batch_norm(x: Tensor, running_mean: Tensor | None = None,
                  running_disp: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, training: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> Tensor:
    return _dispersion_batch_norm(x, "l1", lambda n: L1_CONSTANT, running_mean, running_disp,
                                  weight, bias, training, momentum, eps, "l1_batch_norm")


def linf_batch_norm(x: Tensor, running_mean: Tensor | None = None,
                    running_disp: Tensor | None = None, weight: Tensor | None = None,
                    bias: Tensor | None = None, training: bool = True, momentum: float = 0.1,
                    eps: float = 1e-5, k: int = 10, correction: str = "exact") -> Tensor:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_correction(correction)
    return _dispersion_batch_norm(
        x, "linf", lambda n: _linf_constant(n, min(k, n), correction), running_mean,
        running_disp, weight, bias, training, momentum, eps, "linf_batch_norm", k)


def range_batch_norm(x: Tensor, running_mean: Tensor | None = None,
                     running_disp: Tensor | None = None, weight: Tensor | None = None,
                     bias: Tensor | None = None, training: bool = True, momentum: float = 0.1,
                     eps: float = 1e-5, correction: str = "exact") -> Tensor:
    _check_correction(correction)
    return _dispersion_batch_norm(
        x, "range", lambda n: _range_constant(n, correction), running_mean, running_disp,
        weight, bias, training, momentum, eps, "range_batch_norm",
        running_factor=lambda n: range_running_factor(n, correction))


l1_batch_norm.__doc__ = "L1 batch norm: dispersion ``sqrt(pi/2) mean|x - mu|``." + _NORM_DOC
linf_batch_norm.__doc__ = ("Top-k (L-inf) batch norm, see :func:`linf_moments` for ``k`` and "
                           "``correction``." + _NORM_DOC)
range_batch_norm.__doc__ = ("Range batch norm, see :func:`range_moments` for "
                            "``correction``; the running dispersion is updated with "
                            ":func:`range_running_factor` times the batch's." + _NORM_DOC)

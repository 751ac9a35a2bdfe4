"""Gaussian constants of the dispersion batch norms, computed independently of normlab.

normlab integrates order-statistic *densities* on a trapezoid grid; these integrate the
*tail probabilities* (``E[X] = int P(X > x) dx`` for ``X >= 0``, ``E[W^-2] = int 2 w^-3
P(W <= w) dw``) with composite Gauss-Legendre quadrature, so a mistake in one derivation or
one grid does not reappear in the other. They are slower than normlab's and only meant for
the small ``n`` the tests use.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

_ndtr = torch.special.ndtr


def _gauss_legendre(a: float, b: float, panels: int, order: int = 16) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Nodes and weights of composite Gauss-Legendre quadrature on ``[a, b]``."""
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, panels + 1)
    half = np.diff(edges) / 2.0
    mid = (edges[:-1] + edges[1:]) / 2.0
    nodes = (mid[:, None] + half[:, None] * t[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    return nodes, weights


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x: np.ndarray) -> np.ndarray:
    return _ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


@functools.lru_cache(maxsize=None)
def topk_abs_mean(n: int, k: int) -> float:
    """``E[mean of the k largest of |Z_1|..|Z_n|]``.

    The sum of the ``k`` largest is ``int_0^inf min(B(x), k) dx`` with ``B(x)`` the number
    of ``|Z_i| > x``, a Binomial(n, q(x)) variable, ``q = 2 (1 - Phi(x))``.
    """
    x, w = _gauss_legendre(0.0, 12.0, 120)
    q = np.clip(2.0 * _cdf(-x), 1e-300, 1.0)
    m = np.arange(n + 1)[:, None]
    log_pmf = (np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                         for j in range(n + 1)])[:, None]
               + m * np.log(q)[None, :] + (n - m) * np.log1p(-np.minimum(q, 1 - 1e-16))[None, :])
    expected_min = (np.minimum(m, k) * np.exp(log_pmf)).sum(axis=0)
    return float((expected_min * w).sum()) / k


@functools.lru_cache(maxsize=None)
def expected_range(n: int) -> float:
    """``E[max - min]`` of ``n`` standard normals: ``int 1 - Phi^n - (1 - Phi)^n dx``."""
    x, w = _gauss_legendre(-12.0, 12.0, 240)
    c = _cdf(x)
    return float(((1.0 - c ** n - (1.0 - c) ** n) * w).sum())


@functools.lru_cache(maxsize=None)
def range_inverse_square(n: int) -> float:
    """``E[W^-2]`` for the range ``W`` of ``n >= 4`` standard normals, from the range's CDF
    ``P(W <= w) = n int phi(x) (Phi(x + w) - Phi(x))^(n-1) dx``."""
    if n < 4:
        raise ValueError("E[W^-2] is infinite for n < 4")
    x, wx = _gauss_legendre(-12.0, 12.0, 60)
    r, wr = _gauss_legendre(0.0, 16.0, 80)
    lower = _cdf(x)[:, None]
    upper = _cdf(-(x[:, None] + r[None, :]))  # P(Z > x + w)
    # Phi(x + w) - Phi(x) = 1 - Phi(x) - P(Z > x + w): log1p keeps it exact near 1.
    mass = np.clip(1.0 - lower - upper, 1e-300, None)
    log_mass = np.where(lower + upper < 0.5, np.log1p(-np.minimum(lower + upper, 0.5)),
                        np.log(mass))
    cdf_w = n * (np.exp((n - 1) * log_mass) * (_phi(x) * wx)[:, None]).sum(axis=0)
    # beyond w = 16, P(W <= w) = 1 to double precision: int_16^inf 2 w^-3 dw = 1 / 16^2
    return float((2.0 * cdf_w / r ** 3 * wr).sum()) + 1.0 / 16.0 ** 2


def range_unit_variance(n: int) -> float:
    """The divisor ``C`` with ``E[mean_i ((x_i - xbar) C / W)^2] = 1`` for ``n >= 4``.

    ``x - xbar`` is ``|x - xbar| u`` with ``u`` uniform on a sphere and independent of
    ``|x - xbar|^2 ~ chi^2_(n-1)``, so ``E[|x - xbar|^2 / W^2] = E[W^-2] / E[chi^-2] =
    (n - 3) E[W^-2]`` (this identity is checked by Monte Carlo in the tests).
    """
    return math.sqrt(n / ((n - 3) * range_inverse_square(n)))

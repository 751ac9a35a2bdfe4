"""The range divisor that gives Range batch norm unit output variance at every n.

Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit training of neural networks",
2018, arXiv:1805.11046, divide the range of a channel by a Gaussian constant. Dividing by the
expected range ``R(n)`` makes the dispersion unbiased but not the output standardized
(``E[v / W^2] R(n)^2 < 1`` by Jensen's inequality); this module gives the divisor that does.
See :mod:`normlab.functional.dispersion_batch_norm` for the derivation.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["gaussian_range_unit_variance"]

# Lattice step of the double integral. In x the integrand is smooth and decays at both ends,
# so the trapezoid rule converges spectrally; in w it starts at w = 0 like w^(n-4), where the
# trapezoid rule would leave an O(h^2) error (7e-5 relative at n = 5): Simpson's rule there.
_RANGE_STEP = 0.025  # 2e-9 relative error at n = 5 and 7, 1e-12 from n = 9 on


@functools.lru_cache(maxsize=256)
def gaussian_range_unit_variance(n: int) -> float:
    """The range divisor ``C(n)`` giving unit output variance on Gaussian data.

    ``C(n)^-2 = E[v / W^2]`` for ``n`` iid standard normals, ``W`` their range and ``v`` their
    biased sample variance (so ``E[mean ((x - xbar) C / W)^2] = 1``). For ``n >= 4``,
    ``n E[v / W^2] = (n - 3) E[W^-2]`` (see the module docstring) and
    ``E[W^-2] = int_0^inf w^-2 n (n - 1) int phi(x) phi(x + w) (Phi(x + w) - Phi(x))^(n-2)
    dx dw`` on a lattice (``Phi(x + w) - Phi(x)`` in log space): trapezoid rule in ``x``,
    Simpson's in ``w``.
    """
    if n < 2:
        raise ValueError(f"the range needs n >= 2 values, got n={n}")
    if n == 2:  # x - xbar = (a, -a): v = a^2, W = 2a
        return 2.0
    if n == 3:  # W = sqrt(2) |x - xbar| cos(t), t uniform on [-pi/6, pi/6]
        return math.sqrt(math.sqrt(3.0) * math.pi)
    # The minimum lies near -sqrt(2 ln n), the range near twice that: integer bounds wide
    # enough for both (so wmax / h stays even for Simpson's rule).
    spread = math.sqrt(2.0 * math.log(n))
    h = _RANGE_STEP
    lo, wmax = -max(12.0, math.ceil(spread + 8.0)), max(16.0, 2.0 * math.ceil(spread + 4.0))
    t = lo + h * np.arange(int(round((wmax - 2.0 * lo) / h)) + 1)
    lower = 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in t])  # Phi(t)
    upper = 0.5 * np.array([math.erfc(v / math.sqrt(2.0)) for v in t])   # 1 - Phi(t)
    log_phi = -0.5 * t * t - 0.5 * math.log(2.0 * math.pi)
    i = np.arange(int(round(-2.0 * lo / h)) + 1)[:, None]  # x, the minimum
    j = np.arange(1, int(round(wmax / h)) + 1)[None, :]     # w = j h, the range
    tails = lower[i] + upper[i + j]  # 1 - (Phi(x + w) - Phi(x)): log1p keeps it exact near 1
    log_mass = np.where(tails < 0.5, np.log1p(-np.minimum(tails, 0.5)),
                        np.log(np.maximum(lower[i + j] - lower[i], 1e-300)))
    w = h * j
    density = np.exp(math.log(n * (n - 1)) + log_phi[i] + log_phi[i + j]
                     + (n - 2) * log_mass) / (w * w)
    inner = h * (density.sum(axis=0) - 0.5 * (density[0] + density[-1]))  # over x
    at_zero = 0.0  # the w -> 0 limit of the integrand: nonzero only for n = 4
    if n == 4:
        limit = np.exp(math.log(12.0) + 4.0 * log_phi[: i.shape[0]])
        at_zero = h * (limit.sum() - 0.5 * (limit[0] + limit[-1]))
    simpson = np.where(np.arange(1, inner.shape[0] + 1) % 2 == 1, 4.0, 2.0)
    simpson[-1] = 1.0  # wmax / h is even
    inv_sq = h / 3.0 * (at_zero + (simpson * inner).sum())
    return math.sqrt(n / ((n - 3) * inv_sq))

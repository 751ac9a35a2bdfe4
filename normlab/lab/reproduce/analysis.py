"""Pure functions that turn runs into the numbers a reproduction report quotes.

- :func:`seed_speedups`: the speed-up of Collins, Ballé & Shlens 2019 (arXiv:1903.00925,
  section 4) per seed, method curve against the same seed's baseline curve.
- :func:`weight_analysis`: the robust range and the collapse of a loss-weight sweep (their
  Figure 2).
- :func:`band_stability`: how much an activation distribution moves during training (their
  Figure 4; Ioffe & Szegedy 2015, arXiv:1502.03167, Figure 1).
- :func:`spread`: max - min of a method's accuracy over batch sizes (their section 4.4).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..experiment import Experiment
from ..metrics import format_speedup, mean_curve, mean_std, speedup
from ..train import eval_schedule

__all__ = ["seed_speedups", "weight_analysis", "band_stability", "spread", "pct", "fmt_speedup",
           "mean_std_text"]


def pct(mean: float, std: float | None = None) -> str:
    """``"85.10 ± 0.31%"`` (or ``"85.10%"`` without a std)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.2f}%" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}%"


def fmt_speedup(row: dict) -> str:
    """A summary row's speed-up: ``"3.33x"``, ``"≥ 1000.00x"`` at the cap, "never", or why
    there is none (``speedup_reason``)."""
    return format_speedup(row["speedup"], row.get("speedup_at_cap", False),
                          row.get("speedup_reason"))


def mean_std_text(values: Sequence[float | None], unit: str = "x", capped: int = 0) -> str:
    """Mean ± std of the finite values, with how many were missing ('never') and how many
    sat at the evaluation schedule's cap (lower bounds)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "never"
    m, s = mean_std(finite)
    text = f"{m:.2f} ± {s:.2f}{unit}" if len(finite) > 1 else f"{m:.2f}{unit}"
    missing = len(values) - len(finite)
    notes = ([f"{missing} of {len(values)} never"] if missing else []) + (
        [f"{capped} of {len(values)} at the cap"] if capped else [])
    return text + (f" ({'; '.join(notes)})" if notes else "")


def seed_speedups(exp: Experiment, label: str, baseline: str = "none") -> list[dict]:
    """Speed-up of ``label`` over ``baseline`` seed by seed (runs paired in seed order): one
    :func:`normlab.lab.metrics.speedup` result per seed."""
    steps = eval_schedule(exp.config)
    chance = 1.0 / exp.dataset.num_classes
    out = []
    for rb, rm in zip(exp.runs[baseline], exp.runs[label]):
        b = mean_curve([rb.test_acc], chance)
        m = mean_curve([rm.test_acc], chance)
        out.append(speedup(steps, b, m))
    return out


def weight_analysis(weights: Sequence[float], accs: Sequence[float], baseline: float,
                    chance: float, tolerance: float = 0.01) -> dict:
    """Robust range and collapse of a sweep of accuracies over increasing weights.

    - best: the weight with the highest accuracy.
    - collapse: the first weight above the best whose accuracy falls below halfway between
      chance and the best accuracy (``None``: no collapse on the grid).
    - robust range: the contiguous weights around the best, before the collapse, whose
      accuracy is at least ``baseline - tolerance`` (the loss does not hurt); ``orders`` is
      ``log10(high / low)`` of that range.
    """
    if len(weights) != len(accs) or not weights:
        raise ValueError(f"need as many accuracies as weights, got {len(accs)} and {len(weights)}")
    if any(b <= a for a, b in zip(weights, weights[1:])):
        raise ValueError(f"weights must increase, got {list(weights)}")
    accs = [a if math.isfinite(a) else chance for a in accs]
    best = int(np.argmax(accs))
    threshold = chance + 0.5 * (accs[best] - chance)
    collapse = next((i for i in range(best + 1, len(accs)) if accs[i] < threshold), None)
    stop = len(accs) if collapse is None else collapse
    ok = [a >= baseline - tolerance for a in accs]
    lo = hi = best
    if ok[best]:
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi + 1 < stop and ok[hi + 1]:
            hi += 1
        orders = math.log10(weights[hi] / weights[lo])
    else:
        orders = 0.0
    return {"best_weight": weights[best], "best_acc": accs[best],
            "collapse_weight": None if collapse is None else weights[collapse],
            "collapse_threshold": threshold,
            "robust_low": weights[lo] if ok[best] else None,
            "robust_high": weights[hi] if ok[best] else None, "orders": orders}


def band_stability(values: Sequence[Sequence[float]]) -> dict:
    """How far a recorded distribution moves, from percentile rows ``(T, P)`` (P ascending).

    - median_drift: range over time of the middle percentile, in units of the mean width
      between the outer percentiles (0 = the centre never moves).
    - width_ratio: outer width at the last recording / at the first.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 3:
        raise ValueError(f"need (T, P>=3) percentile rows, got shape {arr.shape}")
    mid = arr[:, arr.shape[1] // 2]
    width = arr[:, -1] - arr[:, 0]
    scale = max(float(width.mean()), 1e-12)
    return {"median_drift": float((mid.max() - mid.min()) / scale),
            "width_ratio": float(width[-1] / max(width[0], 1e-12)),
            "median_first": float(mid[0]), "median_last": float(mid[-1]),
            "width_first": float(width[0]), "width_last": float(width[-1])}


def spread(accs: Mapping[int, float]) -> float:
    """max - min of the accuracies (over batch sizes)."""
    values = [v for v in accs.values() if math.isfinite(v)]
    return float(max(values) - min(values)) if values else math.nan

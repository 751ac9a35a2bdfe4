"""The standardization-loss paper's training speed-up, and summaries over seeds.

Speed-up (Collins, Ballé & Shlens 2019, arXiv:1903.00925, section 4): the number of steps the
baseline needs to reach its best accuracy, divided by the number of steps the method needs to
reach that same accuracy. A method that never reaches it has no speed-up (``None``, shown as
"never"). Curves are compared as seed means, evaluated at the same steps.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["steps_to_reach", "speedup", "mean_curve", "mean_std"]


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first step whose value is >= ``target``; ``None`` if the curve never gets there."""
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length")
    for step, value in zip(steps, values):
        if value >= target:
            return int(step)
    return None


def speedup(
    steps: Sequence[int], baseline: Sequence[float], method: Sequence[float]
) -> dict[str, float | int | None]:
    """Speed-up of ``method`` over ``baseline`` (accuracy curves at the same ``steps``).

    Returns:
        ``target`` (the baseline's best accuracy), ``baseline_steps`` and ``method_steps``
        (first step at or above it; ``None`` for never) and ``speedup``
        (``baseline_steps / method_steps``, ``None`` if the method never reaches the target).
        A target reached at step 0 counts as step 1, so the ratio stays finite.
    """
    if len(baseline) == 0:
        raise ValueError("empty baseline curve")
    target = float(max(baseline))
    base = steps_to_reach(steps, baseline, target)
    meth = steps_to_reach(steps, method, target)
    ratio = None if meth is None else max(base, 1) / max(meth, 1)
    return {"target": target, "baseline_steps": base, "method_steps": meth, "speedup": ratio}


def mean_curve(curves: Sequence[Sequence[float]], fill: float, length: int | None = None
               ) -> list[float]:
    """Pointwise mean of curves evaluated at the same steps.

    A curve cut short (a run that diverged) is padded with ``fill`` up to ``length`` (default:
    the longest curve) — the report passes chance accuracy — so a diverged seed keeps
    counting, as a failure, at every later point.
    """
    if not curves:
        return []
    n = length if length is not None else max(len(c) for c in curves)
    padded = [list(c) + [fill] * (n - len(c)) for c in curves]
    return np.mean(np.asarray(padded, dtype=float), axis=0).tolist()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0

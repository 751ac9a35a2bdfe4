"""The standardization-loss paper's training speed-up, and summaries over seeds.

Speed-up (Collins, Ballé & Shlens 2019, arXiv:1903.00925, section 4): the number of steps the
baseline needs to reach its best accuracy, divided by the number of steps the method needs to
reach that same accuracy. A method that never reaches it has no speed-up (``None``, shown as
"never"). Curves are compared as seed means, evaluated at the same steps.

Curves are only known at evaluation points, so the step at which a curve first reaches the
target is **interpolated linearly** between the last evaluation below it and the first at or
above it. The first interval (step 0 to the first evaluation step ``s1``) is not
interpolated: a target first reached at ``s1`` counts as reached at ``s1``. So a schedule can
show speed-ups from ``B / last step`` (reached only at the end) up to ``B / s1``, its **cap**
(``B`` = the baseline's steps); a speed-up at the cap is a lower bound and is printed with
"≥". :func:`resolution` gives both ends, :func:`resolution_text` the sentence every speed-up
table prints under it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["steps_to_reach", "speedup", "resolution", "resolution_text", "format_speedup",
           "recovered_fraction", "mean_curve", "mean_std"]


def _first_positive(steps: Sequence[int]) -> int:
    positive = [s for s in steps if s > 0]
    if not positive:
        raise ValueError(f"no evaluation step after step 0 in {list(steps)}")
    return int(positive[0])


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float
                   ) -> float | None:
    """The (interpolated) step at which the curve first reaches ``target``; ``None`` if never.

    Between the last evaluation below ``target`` and the first at or above it the curve is
    taken as linear. A target reached at step 0 or at the first evaluation step after it
    counts as reached at that first evaluation step (module docstring).
    """
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"evaluation steps must increase, got {list(steps)}")
    first = _first_positive(steps)
    for i, (step, value) in enumerate(zip(steps, values)):
        if value < target:
            continue
        if step <= first or i == 0:
            return float(first)
        s0, v0 = steps[i - 1], values[i - 1]
        return float(s0 + (target - v0) / (value - v0) * (step - s0))
    return None


def resolution(steps: Sequence[int], baseline_steps: float) -> tuple[float, float]:
    """The smallest and largest speed-up ``steps`` can show for a baseline needing
    ``baseline_steps``: reached at the last evaluation, and at the first one after step 0."""
    return baseline_steps / steps[-1], baseline_steps / _first_positive(steps)


def speedup(
    steps: Sequence[int], baseline: Sequence[float], method: Sequence[float]
) -> dict[str, float | bool | None]:
    """Speed-up of ``method`` over ``baseline`` (accuracy curves at the same ``steps``).

    Returns:
        ``target`` (the baseline's best accuracy), ``baseline_steps`` and ``method_steps``
        (interpolated steps to reach it; ``None`` for never), ``speedup``
        (``baseline_steps / method_steps``, ``None`` if never), ``at_cap`` (the method
        reached the target by the first evaluation step, so the speed-up is only a lower
        bound) and ``speedup_min`` / ``speedup_max`` (the :func:`resolution`).
    """
    if len(baseline) == 0:
        raise ValueError("empty baseline curve")
    target = float(max(baseline))
    base = steps_to_reach(steps, baseline, target)
    meth = steps_to_reach(steps, method, target)
    low, high = resolution(steps, base)
    first = _first_positive(steps)
    return {"target": target, "baseline_steps": base, "method_steps": meth,
            "speedup": None if meth is None else base / meth,
            "at_cap": meth is not None and meth <= first,
            "speedup_min": low, "speedup_max": high}


def format_speedup(value: float | None, at_cap: bool = False, reason: str | None = None
                   ) -> str:
    """``"3.33x"``, ``"≥ 1000.00x"`` at the cap, ``"never"``, or ``reason`` when there is
    no speed-up to measure (e.g. "baseline diverged")."""
    if reason:
        return reason
    if value is None:
        return "never"
    return f"≥ {value:.2f}x" if at_cap else f"{value:.2f}x"


def resolution_text(steps: Sequence[int], baseline: str, baseline_steps: float) -> str:
    """One sentence: the schedule, the range of speed-ups it can show, and the cap rule."""
    low, high = resolution(steps, baseline_steps)
    shown = ", ".join(str(s) for s in steps[:6]) + (", ..., " + str(steps[-1])
                                                    if len(steps) > 6 else "")
    return (f"Resolution: {len(steps)} evaluations (steps {shown}); with `{baseline}` at its "
            f"best at step {baseline_steps:g}, this schedule can show speed-ups from "
            f"{low:.2f}x (target first reached at the last step) to {high:.2f}x (reached by "
            f"step {_first_positive(steps)}, the cap: printed '≥', a lower bound); steps "
            "between evaluations are interpolated linearly.")


def recovered_fraction(baseline: float, reference: float, method: float) -> float:
    """The share of the reference's gain over the baseline that a method recovers:
    ``(method - baseline) / (reference - baseline)`` (e.g. baseline none, reference
    batch_norm); ``nan`` when the reference gains nothing."""
    gain = reference - baseline
    return (method - baseline) / gain if gain > 0 else math.nan


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

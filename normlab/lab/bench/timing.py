"""Interleaved timing: each round runs every candidate once (A B C A B C ...).

Comparing methods in one process, interleaved, cancels slow drifts of the machine (other
processes, frequency changes) that separate runs would charge to whichever method ran during
them. Each round starts at a different candidate (a rotation), so no method always runs first
or right after the same neighbour. Ratios are taken per round, against the baseline timed in
that same round, and summarized by their median and interquartile range (robust to the
occasional preempted step), as airbench and torch.utils.benchmark report.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence

import torch

__all__ = ["interleaved_times", "ratio_summary", "quantile", "calibrate_inner", "Clock"]


class Clock:
    """Wall-clock of a callable: ``perf_counter`` on CPU; CUDA events on a GPU.

    Args:
        device: the device the timed work runs on.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def __call__(self, fn: Callable[[], object], inner: int = 1) -> float:
        """Seconds per call of ``fn``, over ``inner`` back-to-back calls."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def calibrate_inner(fn: Callable[[], object], min_seconds: float, clock: Clock | None = None,
                    limit: int = 1000) -> int:
    """Calls per timing sample so that one sample lasts at least ``min_seconds``.

    Tiny steps (the MLP's ~1 ms) are otherwise dominated by timer and scheduler noise.
    """
    clock = clock or Clock()
    once = max(clock(fn), 1e-7)
    return int(min(limit, max(1, -(-min_seconds // once))))


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    inner: int = 1,
    clock: Clock | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, interleaved.

    Args:
        fns: name -> zero-argument callable (e.g. one training step).
        repeats: timed rounds; each yields one sample per name.
        warmup: untimed calls of each function first (allocator, caches, compilation).
        inner: calls per sample (the sample is their mean).
        clock: how to read time (default: CPU wall clock).

    Returns:
        name -> ``repeats`` samples; sample ``r`` of every name comes from round ``r``.

    Raises:
        ValueError: ``repeats < 1``, ``warmup < 0``, ``inner < 1`` or no functions.
    """
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, inner >= 1; got {repeats}, "
                         f"{warmup}, {inner}")
    if not fns:
        raise ValueError("nothing to time")
    clock = clock or Clock()
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(clock(fns[name], inner))
    return times


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("quantile of no values")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio_summary(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, dict]:
    """Per-round ratios ``time[name][r] / time[baseline][r]``, summarized.

    Returns:
        name -> ``{"median_ms", "ratio", "q1", "q3"}``: the median time per call, and the
        median and quartiles of the per-round ratios to ``baseline``.

    Raises:
        KeyError: ``baseline`` is not among the timed names.
    """
    if baseline not in times:
        raise KeyError(f"baseline {baseline!r} was not timed (timed: {', '.join(times)})")
    base = times[baseline]
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        out[name] = {
            "median_ms": 1e3 * statistics.median(ts),
            "ratio": statistics.median(ratios),
            "q1": quantile(ratios, 0.25),
            "q3": quantile(ratios, 0.75),
        }
    return out

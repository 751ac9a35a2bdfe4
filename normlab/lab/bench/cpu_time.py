"""Standardization-loss training steps timed in *thread CPU time*, for loaded machines.

``python -m normlab.lab.bench.cpu_time [--models cnn,wide_cnn,mlp] [--rounds 15]``

The standardization loss (Collins, Ballé & Shlens 2019, arXiv:1903.00925) has two CPU paths
(:func:`normlab.functional.set_implementation`). This compares ``none``, ``batch_norm`` and
``std_loss`` on each path, built by :func:`~normlab.lab.bench.cases.make_setup` exactly as
``normlab bench train`` builds them, interleaved (order rotated each round), one thread. It
reads ``time.thread_time()``, which does not count time spent waiting for a core: on a machine
shared by many jobs, wall-clock ratios swing by tens of percent, CPU-time ratios much less
(cache and memory-bandwidth sharing still show). Prints the median ratio to ``none`` and the
interquartile range. The kernel variant runs only where the kernel is already built.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from ...functional import _std_loss_kernel, standardization
from ...methods import create_method
from .allocator import tune_malloc
from .cases import BENCH_MODELS, TrainSetup, make_setup

VARIANTS = {"none": ("none", "torch"), "batch_norm": ("batch_norm", "torch"),
            "std_loss[torch]": ("std_loss", "torch"), "std_loss[kernel]": ("std_loss", "kernel")}
INNER = {"cnn": 5, "wide_cnn": 1, "mlp": 40}


def bench_args(argv: list[str] | None, doc: str, models: str) -> argparse.Namespace:
    """``--models`` (comma-separated, default ``models``) and ``--rounds``; then the process
    is set up to time: :func:`tune_malloc`, one thread."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default=models)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(1)
    return args


def main(argv: list[str] | None = None) -> None:
    args = bench_args(argv, __doc__, "cnn,wide_cnn,mlp")
    variants = dict(VARIANTS)
    if not _std_loss_kernel.load(build=False):
        del variants["std_loss[kernel]"]
    for key in args.models.split(","):
        spec = BENCH_MODELS[key]
        setups = {n: make_setup(spec, create_method(m)) for n, (m, _) in variants.items()}
        try:
            ratios = interleaved_ratios(
                setups, INNER.get(key, 1), args.rounds,
                before=lambda name: standardization.set_implementation(variants[name][1]))
        finally:
            for s in setups.values():
                s.close()
            standardization.set_implementation("torch")
        print(f"{key}: " + cells(ratios), flush=True)


def interleaved_ratios(setups: dict[str, TrainSetup], inner: int, rounds: int,
                       before: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Per round, each setup's thread CPU time per step over the first setup's (the baseline):
    ``inner`` steps per timing, two warm-up rounds, the order rotated every round.
    ``before(name)`` runs ahead of each timing (untimed)."""

    def step_time(name: str) -> float:
        if before is not None:
            before(name)
        start = time.thread_time()
        for _ in range(inner):
            setups[name].step()
        return (time.thread_time() - start) / inner

    names = list(setups)
    for name in names * 2:  # warm-up
        step_time(name)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        times = {n: step_time(n) for n in names[k:] + names[:k]}
        for n in names:
            ratios[n].append(times[n] / times[names[0]])
    return ratios


def cells(ratios: dict[str, list[float]]) -> str:
    """``name median [q1-q3]`` of every setup but the baseline (the first)."""
    out = []
    for n, v in list(ratios.items())[1:]:
        q = statistics.quantiles(v, n=4)
        out.append(f"{n} {statistics.median(v):.2f} [{min(q):.2f}-{max(q):.2f}]")
    return ", ".join(out)


if __name__ == "__main__":
    main()

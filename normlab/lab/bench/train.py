"""``normlab bench train``: per-step training time of each method relative to ``none``.

Collins, Ballé & Shlens 2019, arXiv:1903.00925, claim the standardization loss trains in
fewer steps than batch normalization; this measures what each of those steps costs. For each
model and thread count every method's step runs interleaved in one process after warm-up
(compilation included when ``compile``), and each method's time is divided by the baseline's
in the same round (:mod:`normlab.lab.bench.timing`).
"""

from __future__ import annotations

import os
import traceback
from typing import Callable, Sequence

import torch

from ...methods import Method
from .cases import BENCH_MODELS, make_setup
from .timing import Clock, calibrate_inner, interleaved_times, ratio_summary

__all__ = ["bench_train"]


def bench_train(
    methods: dict[str, Method],
    models: Sequence[str] = tuple(BENCH_MODELS),
    threads: Sequence[int] = (1, 2),
    compile: bool = False,
    repeats: int = 15,
    warmup: int = 3,
    min_sample_s: float = 0.02,
    baseline: str = "none",
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time one training step of each method on each model and thread count.

    Args:
        methods: name -> method; must include ``baseline``.
        models: keys of :data:`~normlab.lab.bench.cases.BENCH_MODELS`.
        threads: ``torch.set_num_threads`` values to run under.
        compile: ``torch.compile`` every model.
        repeats: interleaved timed rounds.
        warmup: untimed steps of each method first.
        min_sample_s: each sample times enough back-to-back steps to last this long.
        baseline: the method every ratio divides by.
        device: ``"cpu"`` or a CUDA device (timed with CUDA events).
        log: progress messages.

    Returns:
        One record per (model, threads, method): ``ratio``, ``q1``, ``q3`` (of the per-round
        ratios to the baseline), ``median_ms``, ``steps_per_sample``, the load average, or
        ``error`` for a method that failed to build or step.

    Raises:
        KeyError: an unknown model, or ``baseline`` missing from ``methods``.
    """
    if baseline not in methods:
        raise KeyError(f"the baseline {baseline!r} must be among the methods")
    for key in models:
        if key not in BENCH_MODELS:
            raise KeyError(f"unknown benchmark model {key!r}; known: {', '.join(BENCH_MODELS)}")
    if compile:
        # Every method's model is another nn.Sequential through the same code: without a
        # higher limit dynamo stops recompiling after 8 and silently runs the rest eagerly.
        import torch._dynamo.config as dynamo_config

        limit = 8 * len(methods) * len(models) * len(threads)
        with dynamo_config.patch(recompile_limit=limit, accumulated_recompile_limit=limit,
                                 fail_on_recompile_limit_hit=True):
            return _bench(methods, models, threads, compile, repeats, warmup, min_sample_s,
                          baseline, device, log)
    return _bench(methods, models, threads, compile, repeats, warmup, min_sample_s, baseline,
                  device, log)


def _bench(methods, models, threads, compile, repeats, warmup, min_sample_s, baseline, device,
           log) -> list[dict]:
    records: list[dict] = []
    clock = Clock(device)
    for key in models:
        spec = BENCH_MODELS[key]
        for nthreads in threads:
            torch.set_num_threads(nthreads)
            steps, errors = {}, {}
            setups = []
            for name, method in methods.items():
                try:
                    setup = make_setup(spec, method, compile=compile, device=device)
                    for _ in range(max(1, warmup)):
                        setup.step()
                    steps[name] = setup.step
                    setups.append(setup)
                except Exception as err:  # a method that cannot run here is reported, not fatal
                    if name == baseline:
                        raise
                    errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                    log(f"  {name}: {errors[name]}")
                    if os.environ.get("NORMLAB_BENCH_DEBUG"):
                        traceback.print_exc()
            inner = calibrate_inner(steps[baseline], min_sample_s, clock)
            load0 = os.getloadavg()[0]
            log(f"{key} threads={nthreads} compile={compile}: {len(steps)} methods, "
                f"{repeats} rounds x {inner} steps, load {load0:.2f}")
            times = interleaved_times(steps, repeats, warmup=1, inner=inner, clock=clock)
            load1 = os.getloadavg()[0]
            summary = ratio_summary(times, baseline)
            for setup in setups:
                setup.close()
            common = {"model": key, "threads": nthreads, "compile": compile,
                      "steps_per_sample": inner, "load_before": load0, "load_after": load1}
            for name in methods:
                if name in summary:
                    records.append({**common, "method": name, **summary[name]})
                else:
                    records.append({**common, "method": name, "error": errors[name]})
    return records

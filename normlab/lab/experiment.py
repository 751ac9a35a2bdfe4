"""Several methods x several seeds on one configuration, and their summary.

This is what ``normlab run`` and ``normlab compare`` execute: every (method, seed) run from
:func:`normlab.lab.train.train`, then per method the seed-mean curves, the final accuracy as
mean +- std, and the paper's speed-up against a baseline method.

In a data-parallel run (``replica``, see :mod:`normlab.distributed`) every rank executes the
same loop; only rank 0 shows progress, and only its experiment holds the test curves.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..distributed import Replica
from ..methods import Method
from .config import TrainConfig
from .datasets import Dataset
from .metrics import mean_curve, mean_std, resolution_text, speedup
from .parallel import DatasetSpec, run_parallel
from .train import RunResult, eval_schedule, train

__all__ = ["Experiment", "run_experiment", "summarize", "environment"]


@dataclass
class Experiment:
    """All runs of one comparison."""

    config: TrainConfig
    dataset: Dataset
    methods: dict[str, Method]
    seeds: list[int]
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    # {} for one process; else world_size, backend, stats (normlab.distributed.runtime)
    distributed: dict = field(default_factory=dict)


def environment() -> dict[str, str]:
    """Versions and machine, saved beside every result."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": str(torch.get_num_threads()),
    } | _world()


def _world() -> dict[str, str]:
    """The process group a result came from, when there is one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {}
    return {"world_size": str(torch.distributed.get_world_size()),
            "backend": str(torch.distributed.get_backend())}


def run_experiment(
    config: TrainConfig,
    data: Dataset,
    methods: dict[str, Method],
    seeds: Sequence[int],
    progress: bool = True,
    replica: Replica | None = None,
    jobs: int = 1,
    data_spec: DatasetSpec | None = None,
) -> Experiment:
    """Train every method from every seed (methods inner, so partial results stay balanced).

    With ``jobs > 1`` (one process, no ``replica``) the independent runs go to that many
    single-threaded worker processes (:mod:`normlab.lab.parallel`), which reload the data
    from ``data_spec``; each run's result equals the same run on one thread here.
    """
    from tqdm.auto import tqdm

    exp = Experiment(config, data, dict(methods), list(seeds), {k: [] for k in methods})
    main = replica is None or replica.is_main
    if replica is not None:
        exp.distributed = {"world_size": replica.world_size, "stats": replica.config.stats,
                           "backend": replica.config.resolved_backend()}
    total = len(methods) * len(exp.seeds) * config.steps
    with tqdm(total=total, disable=not (progress and main), unit="step", dynamic_ncols=True,
              desc=f"{config.model}/{data.name}") as bar:
        if jobs > 1 and replica is None:
            if data_spec is None:
                raise ValueError("jobs > 1 needs data_spec to reload the dataset in workers")
            todo = [(label, m, seed) for seed in exp.seeds for label, m in methods.items()]
            bar.set_postfix_str(f"{len(todo)} runs on {jobs} worker processes")
            for label, result in run_parallel(config, data_spec, todo, jobs, bar.update):
                if result.diverged_at is not None:
                    bar.write(f"warning: {label} seed {result.seed} diverged: "
                              f"{result.diverged_reason}")
                exp.runs[label].append(result)
            bar.update(total - bar.n)
            return exp
        for seed in exp.seeds:
            for label, method in methods.items():
                bar.set_postfix_str(f"{label} seed {seed}")
                result, _ = train(config, data, method, seed, on_step=lambda s: bar.update(1),
                                  replica=replica)
                if result.diverged_at is not None and main:
                    bar.update(config.steps - result.diverged_at + 1)
                    bar.write(f"warning: {label} seed {seed} diverged: {result.diverged_reason}")
                exp.runs[label].append(result)
    return exp


def summarize(exp: Experiment, baseline: str | None = "none") -> list[dict]:
    """One row per method: final accuracy mean/std, best accuracy, speed-up vs ``baseline``
    (with ``speedup_at_cap``, the ``speedup_min``/``speedup_max`` the evaluation schedule can
    show, and the ``resolution`` sentence every speed-up table prints; see
    :mod:`normlab.lab.metrics`).

    Without the baseline among the methods (or ``baseline=None``) the first method is used.
    """
    chance = 1.0 / exp.dataset.num_classes
    labels = list(exp.runs)
    base = baseline if baseline in exp.runs else labels[0]
    steps = eval_schedule(exp.config)
    curves = {k: mean_curve([r.test_acc for r in runs], fill=chance, length=len(steps))
              for k, runs in exp.runs.items()}
    rows = []
    for label, runs in exp.runs.items():
        finals = [r.test_acc[-1] if r.diverged_at is None else chance for r in runs]
        acc_mean, acc_std = mean_std(finals)
        sp = speedup(steps, curves[base], curves[label])
        method = exp.methods[label]
        rows.append({
            "method": label,
            "kind": method.kind,
            "options": method.options(),
            "final_acc_mean": acc_mean,
            "final_acc_std": acc_std,
            "best_acc_mean_curve": max(curves[label]),
            "baseline": base,
            "target_acc": sp["target"],
            "steps_to_target": sp["method_steps"],
            "baseline_steps": sp["baseline_steps"],
            "speedup": sp["speedup"],
            "speedup_at_cap": sp["at_cap"],
            "speedup_min": sp["speedup_min"],
            "speedup_max": sp["speedup_max"],
            "resolution": resolution_text(steps, base, sp["baseline_steps"]),
            "diverged_seeds": [r.seed for r in runs if r.diverged_at is not None],
            "seconds_per_run": float(np.mean([r.seconds for r in runs])),
            "seeds": len(runs),
        })
    return rows

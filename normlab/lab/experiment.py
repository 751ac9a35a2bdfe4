"""Several methods x seeds x batch sizes on one configuration, and their summary.

This is what ``normlab run`` / ``normlab compare`` and :func:`normlab.lab.compare` execute:
every (method, batch size, seed) run through :func:`normlab.lab.train.train`, then per batch
size and method the seed-mean curves, the final test metric as mean +- std, and the paper's
speed-up against a baseline method. The metric is accuracy for classification and mean
squared error for regression (lower is better: the speed-up then counts the steps to reach
the baseline's *lowest* error).

A batch-size sweep scales the learning rate from ``config.lr`` at ``config.batch_size`` by
the chosen rule: ``"linear"`` (lr x B / B0: Goyal et al., "Accurate, Large Minibatch SGD:
Training ImageNet in 1 Hour", 2017, arXiv:1706.02677) or ``"none"``.

With a :class:`~normlab.lab.runstore.RunStore`, each finished run is saved as it ends and,
with ``resume``, runs already saved are read back instead of trained.

In a data-parallel run (``replica``, see :mod:`normlab.distributed`) every rank executes the
same loop; only rank 0 shows progress, and only its experiment holds the test curves.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..distributed import Replica
from ..methods import Method
from .config import TrainConfig
from .datasets import load_dataset
from .datasets.arrays import task_of, test_stream, train_stream
from .metrics import mean_curve, mean_std, resolution_text, speedup
from .parallel import run_parallel
from .runstore import RunStore, fingerprint
from .train import (METRICS, RunResult, Trainer, build_run_model, eval_schedule,
                    evaluate_stream, example_batch, train)

__all__ = ["Experiment", "run_experiment", "summarize", "baseline_failure", "environment",
           "scaled_lr", "LR_SCALING", "estimate_seconds", "data_info"]

LR_SCALING = ("none", "linear")


@dataclass
class Experiment:
    """All runs of one comparison (``runs[label]`` in batch-size, then seed order)."""

    config: TrainConfig
    dataset: object
    methods: dict[str, Method]
    seeds: list[int]
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    # {} for one process; else world_size, backend, stats (normlab.distributed.runtime)
    distributed: dict = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    lr_scaling: str = "none"
    surgery: dict[str, str] = field(default_factory=dict)  # label -> what was done to the model
    threads: int = 0  # torch threads each run used (1 in --jobs workers)
    workers: int = 1  # worker processes the runs were spread over (--jobs)

    def __post_init__(self) -> None:
        self.batch_sizes = self.batch_sizes or [self.config.batch_size]

    @property
    def task(self) -> str:
        return task_of(self.dataset)


def scaled_lr(config: TrainConfig, batch_size: int, rule: str) -> float:
    """The learning rate at ``batch_size`` by ``rule`` (module docstring)."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown lr scaling {rule!r}; known: {', '.join(LR_SCALING)}")
    return config.lr * batch_size / config.batch_size if rule == "linear" else config.lr


def environment(threads: int | None = None) -> dict[str, str]:
    """Versions and machine, saved beside every result."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": str(threads or torch.get_num_threads()),
    } | _world()


def _world() -> dict[str, str]:
    """The process group a result came from, when there is one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {}
    return {"world_size": str(torch.distributed.get_world_size()),
            "backend": str(torch.distributed.get_backend())}


def data_info(data) -> dict:
    """What identifies the data in a fingerprint and in results.json."""
    train = len(data.x_train) if hasattr(data, "x_train") else len(data)
    test = len(data.x_test) if hasattr(data, "x_test") else None
    return {"name": data.name, "source": str(data.source), "train": train, "test": test,
            "task": task_of(data)}


def estimate_seconds(config: TrainConfig, data, method: Method, model_fn=None) -> float:
    """Seconds one run of ``config`` takes here, from the timed model build, one timed
    training step (after a warm-up step) and one timed evaluation."""
    torch.manual_seed(0)
    start = time.perf_counter()
    trainer = Trainer(config, build_run_model(config, data, method, model_fn), data, method, 0)
    build = time.perf_counter() - start
    batches = iter(train_stream(data, config.batch_size, 0))
    trainer.open()
    try:
        trainer.train_step(*next(batches))
        start = time.perf_counter()
        trainer.train_step(*next(batches))
        step = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_stream(trainer.model, test_stream(data, config.eval_batch), trainer.task)
        evaluation = time.perf_counter() - start
    finally:
        trainer.close()
    return build + step * config.steps + evaluation * len(eval_schedule(config))


def run_experiment(
    config: TrainConfig,
    data,
    methods: dict[str, Method],
    seeds: Sequence[int],
    progress: bool = True,
    replica: Replica | None = None,
    jobs: int = 1,
    data_spec=None,
    *,
    batch_sizes: Sequence[int] | None = None,
    lr_scaling: str = "none",
    model_fn: Callable | None = None,
    model_name: str | None = None,
    store: RunStore | None = None,
    resume: bool = False,
    eta: bool = False,
    log: Callable[[str], None] = print,
) -> Experiment:
    """Train every method at every batch size from every seed (methods inner, so partial
    results stay balanced).

    Args:
        config: the run configuration; ``config.lr`` holds at ``config.batch_size``.
        data: a lab dataset or user data (:func:`normlab.lab.datasets.arrays.as_data`).
        methods: label -> built method.
        seeds: one run per seed.
        jobs: independent runs on this many single-threaded worker processes
            (:mod:`normlab.lab.parallel`), which get the data from ``data_spec``: a
            picklable callable, or the lab's ``(name, data_dir, download, seed)`` tuple.
        batch_sizes: the sweep (default: ``config.batch_size`` alone).
        lr_scaling: "none" or "linear" (module docstring).
        model_fn: the user's model (a callable returning an ``nn.Module``); default: the
            lab's ``config.model``.
        model_name: how the model is named in fingerprints and reports.
        store: save each finished run there as it ends.
        resume: read back the runs ``store`` already holds instead of training them.
        eta: time one step per (method, batch size) first and say how long it will take.
        log: where one-line notes go.
    """
    from tqdm.auto import tqdm

    sizes = list(batch_sizes or [config.batch_size])
    exp = Experiment(config, data, dict(methods), list(seeds), {k: [] for k in methods},
                     batch_sizes=sizes, lr_scaling=lr_scaling,
                     threads=1 if jobs > 1 else torch.get_num_threads(),
                     workers=jobs if jobs > 1 and replica is None else 1)
    main = replica is None or replica.is_main
    if replica is not None:
        exp.distributed = {"world_size": replica.world_size, "stats": replica.config.stats,
                           "backend": replica.config.resolved_backend()}
    configs = {b: dataclasses.replace(config, batch_size=b, lr=scaled_lr(config, b, lr_scaling))
               for b in sizes}
    model_id = model_name or config.model
    if model_fn is not None:  # build every variant now: a method that cannot apply fails here
        from .user_model import build_variant, describe

        for label, method in methods.items():
            torch.manual_seed(0)
            report: list = []
            variant = build_variant(model_fn, method, example_batch(data), report)
            exp.surgery[label] = describe(method, report, variant)
    info = data_info(data)
    prints = {(label, b): fingerprint(configs[b].to_dict() | {"model": model_id},
                                      {"name": m.name, "options": m.options()}, info, model_id)
              for label, m in methods.items() for b in sizes}
    keys = [(label, b, s) for b in sizes for s in exp.seeds for label in methods]
    done: dict[tuple, RunResult] = {}
    if resume and store is not None:
        for label, b, s in keys:
            found = store.load(label, b, s, prints[label, b])
            if found is not None:
                done[label, b, s] = found
        if done and main:
            log(f"resuming: {len(done)} of {len(keys)} runs already in {store.folder}")
    todo = [k for k in keys if k not in done]

    if eta and todo and replica is None:  # a timed step on one rank would stall the others
        threads = torch.get_num_threads()  # time at the thread count the runs will use
        torch.set_num_threads(1 if jobs > 1 else (config.threads or threads))
        try:
            per = {(label, b): estimate_seconds(configs[b], data, methods[label], model_fn)
                   for label, b in dict.fromkeys((k[0], k[1]) for k in todo)}
        finally:
            torch.set_num_threads(threads)
        total = sum(per[k[0], k[1]] for k in todo) / max(1, min(jobs, len(todo)))
        log(f"{len(todo)} runs ({len(methods)} methods x {len(sizes)} batch sizes x "
            f"{len(exp.seeds)} seeds{f', {len(done)} done' if done else ''}): about "
            f"{_human(total)} on {min(jobs, len(todo))} process(es)"
            + (" after the workers start" if jobs > 1 else "")
            + ", from a timed step per method and batch size")

    def finished(key: tuple, result: RunResult) -> None:
        done[key] = result
        if store is not None and main:
            store.save(key[0], result, prints[key[0], key[1]])
        if result.diverged_at is not None and main:
            bar.write(f"warning: {key[0]} batch {key[1]} seed {key[2]} diverged: "
                      f"{result.diverged_reason}")

    total_steps = len(todo) * config.steps
    with tqdm(total=total_steps, disable=not (progress and main), unit="step",
              dynamic_ncols=True, desc=f"{model_id}/{data.name}") as bar:
        if jobs > 1 and replica is None and todo:
            factory = data_spec
            if isinstance(data_spec, tuple):
                name, data_dir, download, seed = data_spec
                factory = functools.partial(load_dataset, name, data_dir=data_dir,
                                            download=download, seed=seed)
            if factory is None:
                raise ValueError("jobs > 1 needs data_spec to give the workers the data")
            bar.set_postfix_str(f"{len(todo)} runs on {min(jobs, len(todo))} worker processes")
            run_parallel(factory, [(k, configs[k[1]], methods[k[0]], k[2]) for k in todo],
                         jobs, finished, bar.update, model_fn=model_fn,
                         describe=lambda k: f"{k[0]} batch {k[1]} seed {k[2]}")
        else:
            for key in todo:
                label, b, seed = key
                bar.set_postfix_str(f"{label} batch {b} seed {seed}")
                result, _ = train(configs[b], data, methods[label], seed,
                                  on_step=lambda s: bar.update(1), replica=replica,
                                  model_fn=model_fn)
                if result.diverged_at is not None and main:
                    bar.update(config.steps - result.diverged_at + 1)
                finished(key, result)
    for label, b, s in keys:
        exp.runs[label].append(done[label, b, s])
    return exp


def _human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _fill(exp: Experiment, runs: list[RunResult]) -> float:
    """What a diverged run counts as from then on: chance accuracy (0 when the number of
    classes is unknown), or for a regression the untrained models' mean error (step 0)."""
    if exp.task == "regression":
        starts = [r.test_acc[0] for r in runs if r.test_acc]
        return float(np.mean(starts)) if starts else float("nan")
    classes = getattr(exp.dataset, "num_classes", 0)
    return 1.0 / classes if classes else 0.0


def _constant_accuracy(data) -> float:
    """The test accuracy of a model that always predicts the commonest test class: what a
    classifier scores without learning anything (``1 / classes`` without test labels)."""
    labels = getattr(data, "y_test", None)
    if labels is not None and len(labels):
        return float(torch.bincount(torch.as_tensor(labels).flatten().long()).max()) / len(labels)
    classes = getattr(data, "num_classes", 0)
    return 1.0 / classes if classes else 0.0


def baseline_failure(exp: Experiment, runs: list[RunResult], curve: Sequence[float],
                     higher: bool) -> str | None:
    """Why the baseline's seed-mean ``curve`` gives no speed-up, or ``None`` when it does.

    A speed-up counts the steps to the baseline's best value, which means nothing when the
    baseline never improved on its untrained model (best at step 0) or, in classification,
    never beat a constant prediction of the commonest class: "baseline did not learn"
    ("baseline diverged" when a seed stopped on a non-finite loss). Nor when every seed
    diverged: its best is then a transient before the failure ("baseline diverged").
    """
    if not curve:
        return "baseline has no evaluations"
    diverged = [r for r in runs if r.diverged_at is not None]
    if runs and len(diverged) == len(runs):
        return "baseline diverged"
    sign = 1.0 if higher else -1.0
    best = max(sign * v for v in curve)
    learned = best > sign * curve[0]
    if exp.task == "classification":
        learned = learned and best > _constant_accuracy(exp.dataset)
    if learned:
        return None
    return "baseline diverged" if diverged else "baseline did not learn"


def summarize(exp: Experiment, baseline: str | None = "none") -> list[dict]:
    """One row per (batch size, method): final test metric mean/std, best value, speed-up vs
    ``baseline`` at the same batch size.
    Each row also has ``speedup_at_cap``, the ``speedup_min``/``speedup_max`` the evaluation
    schedule can show and the ``resolution`` sentence every speed-up table prints (see
    :mod:`normlab.lab.metrics`). When the baseline gives no speed-up
    (:func:`baseline_failure`), every row at that batch size has ``speedup`` and
    ``steps_to_target`` ``None``, the reason in ``speedup_reason`` (else ``None``) and a
    ``resolution`` sentence saying so.

    Without the baseline among the methods (or ``baseline=None``) the first method is used.
    """
    metric, higher = METRICS[exp.task]
    sign = 1.0 if higher else -1.0  # speed-up to the baseline's best: lowest error in regression
    labels = list(exp.runs)
    base = baseline if baseline in exp.runs else labels[0]
    steps = eval_schedule(exp.config)
    rows = []
    for b in exp.batch_sizes:
        group = {k: [r for r in runs if r.batch_size in (b, 0)] for k, runs in exp.runs.items()}
        fills = {k: _fill(exp, runs) for k, runs in group.items()}
        curves = {k: mean_curve([r.test_acc for r in runs], fill=fills[k], length=len(steps))
                  for k, runs in group.items()}
        reason = baseline_failure(exp, group[base], curves[base], higher)
        for label, runs in group.items():
            finals = [r.test_acc[-1] if r.diverged_at is None else fills[label] for r in runs]
            acc_mean, acc_std = mean_std(finals)
            sp = speedup(steps, [sign * v for v in curves[base]],
                         [sign * v for v in curves[label]])
            resolution = resolution_text(steps, base, sp["baseline_steps"])
            if reason is not None:
                sp |= {"speedup": None, "method_steps": None, "at_cap": False}
                resolution = (f"No speed-ups{f' at batch {b}' if len(exp.batch_sizes) > 1 else ''}"
                              f": {reason} (`{base}`), so the steps to its best "
                              f"{metric} measure nothing.")
            method = exp.methods[label]
            rows.append({
                "method": label,
                "batch_size": b,
                "lr": runs[0].lr if runs and runs[0].lr else exp.config.lr,
                "metric": metric,
                "kind": method.kind,
                "options": method.options(),
                "final_acc_mean": acc_mean,
                "final_acc_std": acc_std,
                "best_acc_mean_curve": sign * max(sign * v for v in curves[label]),
                "baseline": base,
                "target_acc": sign * sp["target"],
                "steps_to_target": sp["method_steps"],
                "baseline_steps": sp["baseline_steps"],
                "speedup": sp["speedup"],
                "speedup_at_cap": sp["at_cap"],
                "speedup_min": sp["speedup_min"],
                "speedup_max": sp["speedup_max"],
                "speedup_reason": reason,
                "resolution": resolution,
                "diverged_seeds": [r.seed for r in runs if r.diverged_at is not None],
                "seconds_per_run": float(np.mean([r.seconds for r in runs])),
                "seeds": len(runs),
            })
    return rows

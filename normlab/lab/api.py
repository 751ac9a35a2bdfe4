"""The lab from Python: which normalization trains *my* network fastest at *my* batch size.

:func:`compare` takes any callable returning an ``nn.Module`` and the user's data (arrays,
tensors, a torch Dataset or DataLoader, an ``.npz`` path), turns the model into each
method's variant by surgery (:mod:`normlab.lab.user_model`), trains every (method, batch
size, seed) with the lab's trainer and returns the summary and the curves; with ``out`` it
writes the same results folder as ``normlab compare`` (report.md, results.json, plots, one
file per finished run in ``runs/``; ``resume=True`` trains only the missing runs).

Example:
    >>> import normlab.lab
    >>> result = normlab.lab.compare(my_resnet, (x_train, y_train), (x_test, y_test),
    ...                              methods=["none", "batch_norm", "std_loss"],
    ...                              batch_sizes=[8, 128], seeds=3, steps=500, out="results/mine")
    >>> print(result.table)
"""

from __future__ import annotations

import dataclasses
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from ..methods import Method, create_method
from .config import TrainConfig
from .datasets.arrays import as_data
from .experiment import Experiment, run_experiment, summarize
from .parallel import terminate_as_interrupt
from .report import format_batch_table, format_table, write_report
from .runstore import RunStore
from .train import eval_schedule

__all__ = ["compare", "CompareResult"]


@dataclass
class CompareResult:
    """What :func:`compare` returns.

    Attributes:
        summary: one row per (batch size, method), as in results.json.
        curves: ``curves[method][batch_size]`` = ``{"steps", "runs"}`` (per seed, the test
            metric at each evaluated step).
        experiment: every run.
        out: the results folder, or None.
    """

    summary: list[dict]
    curves: dict[str, dict[int, dict]]
    experiment: Experiment
    out: Path | None

    @property
    def table(self) -> str:
        """The markdown table(s) of the summary."""
        sweep = len(self.experiment.batch_sizes) > 1
        return (format_batch_table(self.summary) + "\n\n" if sweep else "") + \
            format_table(self.summary)


class _Given:
    """A picklable data factory for worker processes: the data themselves."""

    def __init__(self, data) -> None:
        self.data = data

    def __call__(self):
        return self.data


def compare(
    model_fn: Callable[[], nn.Module],
    train,
    test=None,
    methods: Sequence[str | Method] = ("none", "batch_norm", "std_loss"),
    batch_sizes: Sequence[int] | None = None,
    seeds: int | Sequence[int] = 3,
    steps: int = 1000,
    out: str | Path | None = None,
    lr_scaling: str = "linear",
    baseline: str = "none",
    task: str | None = None,
    jobs: int = 1,
    resume: bool = False,
    progress: bool = True,
    name: str | None = None,
    **config,
) -> CompareResult:
    """Train the user's model with every method at every batch size from every seed.

    Args:
        model_fn: a callable returning a fresh ``nn.Module`` (called once per run after
            ``torch.manual_seed(seed)``). With ``jobs > 1`` it must be picklable (a function
            defined in a module).
        train, test: the data (:func:`normlab.lab.datasets.arrays.as_data`): ``(x, y)``
            pairs of arrays/tensors, torch Datasets or DataLoaders, or an ``.npz`` path as
            ``train`` alone.
        methods: method names (or built methods) to compare.
        batch_sizes: the sweep; default ``config["batch_size"]`` (128) alone.
        seeds: a count (seeds 0..n-1) or the seeds.
        steps: training steps per run.
        out: a results folder to write (as ``normlab compare --out``), or None.
        lr_scaling: "linear" (``lr`` holds at ``batch_size``, scaled by B / batch_size) or
            "none".
        baseline: the method speed-ups are measured against.
        task: "classification" or "regression" (default: from the targets' dtype).
        jobs: runs in parallel on this many single-threaded worker processes.
        resume: with ``out``, keep the runs already in ``out/runs``.
        progress: show a progress bar.
        name: the data's name in reports.
        **config: other :class:`~normlab.lab.config.TrainConfig` fields (``lr``,
            ``optimizer``, ``momentum``, ``batch_size``, ``eval_every``, ``threads``, ...).

    Raises:
        ValueError: bad data (one line), a method that cannot apply to the model, bad options.
    """
    data = as_data(train, test, task=task, name=name)
    unknown = set(config) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(f.name for f in dataclasses.fields(TrainConfig))}")
    label = getattr(model_fn, "__name__", type(model_fn).__name__)
    cfg = TrainConfig(**({"model": label, "dataset": data.name, "steps": steps} | config))
    built = {m if isinstance(m, str) else m.name: create_method(m) for m in methods}
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if jobs > 1:
        try:
            pickle.dumps(model_fn)
        except Exception:
            raise ValueError("jobs > 1 needs a model function worker processes can import "
                             "(defined in a module, not a lambda or a notebook cell)") from None
    store = RunStore(out) if out is not None else None
    with terminate_as_interrupt():
        exp = run_experiment(cfg, data, built, seed_list, progress=progress, jobs=jobs,
                             data_spec=_Given(data), batch_sizes=batch_sizes,
                             lr_scaling=lr_scaling, model_fn=model_fn, model_name=label,
                             store=store, resume=resume, eta=progress)
    rows = summarize(exp, baseline)
    if out is not None:
        command = (f"normlab.lab.compare({label}, methods={list(built)}, batch_sizes="
                   f"{exp.batch_sizes}, seeds={seed_list}, steps={steps}, out="
                   f"{shlex.quote(str(out))})")
        write_report(exp, Path(out), baseline=baseline, command=command)
    steps_at = eval_schedule(exp.config)
    curves = {k: {b: {"steps": steps_at, "runs": [r.test_acc for r in runs if r.batch_size == b]}
                  for b in exp.batch_sizes} for k, runs in exp.runs.items()}
    return CompareResult(rows, curves, exp, Path(out) if out is not None else None)

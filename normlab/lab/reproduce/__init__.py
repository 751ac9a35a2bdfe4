"""``normlab reproduce``: one command per figure of the seed papers, with a paper-vs-normlab
report.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925; Ioffe & Szegedy, "Batch Normalization", 2015, arXiv:1502.03167.

Each experiment is a declarative :class:`ReproSpec` (``experiments.py``), interpreted by a
runner (``runners.py``) that trains through the lab's trainer; :func:`reproduce` runs one and
writes ``results.json``, ``report.md`` and PNG plots.

Example:
    >>> reproduce("fig3-mlp", quick=True, out="results/quick/fig3-mlp")
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from ..bench.allocator import tune_malloc
from ..datasets import DATASETS, Dataset
from .experiments import EXPERIMENTS, get_experiment
from .report import write_repro_report
from .runners import RUNNERS, Outcome
from . import batch_size  # noqa: F401  (registers the batch_size runner)
from .spec import Arm, Claim, Quick, ReproSpec

__all__ = ["EXPERIMENTS", "RUNNERS", "Arm", "Claim", "Outcome", "Quick", "ReproSpec",
           "get_experiment", "load_spec_data", "reproduce", "tune_malloc"]


def load_spec_data(spec: ReproSpec, data_dir: str | os.PathLike | None = None,
                   download: bool = True) -> Dataset:
    """The spec's dataset, with its loader options."""
    return DATASETS.get(spec.dataset)(data_dir=data_dir, download=download, seed=0,
                                      **dict(spec.dataset_options))


def reproduce(name: str, quick: bool = False, out: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None, download: bool = True,
              seeds: int | None = None, progress: bool = True,
              command: str | None = None, params: dict | None = None, jobs: int = 1) -> dict:
    """Run experiment ``name`` and write its report folder; returns the results payload.

    Args:
        name: an experiment of :data:`EXPERIMENTS`.
        quick: the tiny smoke-test variant (synthetic data, a few steps).
        out: results folder; default ``results/reproduce[-quick]/NAME``.
        data_dir, download: where the dataset is looked for; whether it may be downloaded.
        seeds: override the spec's number of seeds.
        progress: show progress bars.
        command: the command line recorded in the report.
        params: replacements of the spec's parameters (see :meth:`ReproSpec.resolve`).
        jobs: independent runs on this many single-threaded worker processes (bit-identical
            to running them here; runs that record distributions stay in this process).
    """
    spec = get_experiment(name).resolve(quick, seeds, params)
    out = Path(out) if out is not None else (
        Path("results") / ("reproduce-quick" if quick else "reproduce") / name)
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"normlab reproduce {name}" + (" --quick" if quick else "")
    start = time.perf_counter()
    data = load_spec_data(spec, data_dir, download)
    data_spec = functools.partial(load_spec_data, spec, data_dir, download)
    outcome = RUNNERS[spec.runner](spec, data, out, progress, jobs=jobs, data_spec=data_spec)
    seconds = time.perf_counter() - start
    return write_repro_report(spec, outcome, data, out, seconds, command, quick)

"""Independent (method, seed) runs on several worker processes, one torch thread each.

On a 2-core machine two single-threaded runs side by side finish a comparison about 1.5-2x
sooner than one run after another on two threads: the paper's small networks are too small
for intra-op parallelism to pay. Workers are *spawned* (not forked: libgomp is not fork-safe
once the parent has used OpenMP) and load the dataset themselves, so no tensors are pickled.
A run in a worker equals, bit for bit, the same run in the main process on one thread.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Optional

import torch

from ..methods import Method
from .bench.allocator import tune_malloc
from .config import TrainConfig
from .datasets import Dataset, load_dataset
from .train import RunResult, train

__all__ = ["run_parallel", "DatasetSpec"]

# (name, data_dir, download, seed): what a worker needs to load the same dataset.
DatasetSpec = tuple[str, Optional[Path], bool, int]

_DATA: Dataset | None = None
_PROGRESS = None
_REPORT_EVERY = 25


def _init_worker(spec: DatasetSpec, progress) -> None:
    global _DATA, _PROGRESS
    torch.set_num_threads(1)
    tune_malloc()
    name, data_dir, download, seed = spec
    _DATA = load_dataset(name, data_dir=data_dir, download=download, seed=seed)
    _PROGRESS = progress


def _report(step: int) -> None:
    if step % _REPORT_EVERY == 0:
        _PROGRESS.put(_REPORT_EVERY)


def _run_job(config: TrainConfig, label: str, method: Method, seed: int) -> tuple[str, RunResult]:
    result, _ = train(config, _DATA, method, seed, on_step=_report)
    return label, result


def run_parallel(
    config: TrainConfig,
    spec: DatasetSpec,
    jobs: list[tuple[str, Method, int]],
    workers: int,
    on_steps: Callable[[int], None] = lambda n: None,
) -> list[tuple[str, RunResult]]:
    """Run ``(label, method, seed)`` jobs on ``workers`` spawned processes.

    ``on_steps(n)`` is called in this process as workers report progress (every 25 steps).
    Results come back in job order. A worker's exception is re-raised here.
    """
    ctx = mp.get_context("spawn")
    progress = ctx.Manager().Queue()
    results: dict[int, tuple[str, RunResult]] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(spec, progress)) as pool:
        pending = {pool.submit(_run_job, config, *job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(progress, on_steps)
            for fut in done:
                results[pending.pop(fut)] = fut.result()
        _drain(progress, on_steps)
    return [results[i] for i in range(len(jobs))]


def _drain(progress, on_steps: Callable[[int], None]) -> None:
    while True:
        try:
            on_steps(progress.get_nowait())
        except queue.Empty:
            return

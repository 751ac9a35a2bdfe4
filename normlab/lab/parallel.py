"""Independent runs on several worker processes, one torch thread each, that never outlive us.

On a 2-core machine two single-threaded runs side by side finish a comparison about 1.5-2x
sooner than one run after another on two threads: the paper's small networks are too small
for intra-op parallelism to pay. Workers are *spawned* (not forked: libgomp is not fork-safe
once the parent has used OpenMP) and load the data themselves from a picklable factory, so no
dataset is sent per run. A run in a worker equals, bit for bit, the same run in the main
process on one thread.

Each worker has its own pipe; the parent hands it one run at a time and waits on the pipes
and on the processes' sentinels together, so

- a finished run reaches ``on_result`` (which saves it) the moment it is done;
- a worker that dies (killed, out of memory) is named with the run it was doing, in one
  :class:`WorkerError` line, after the runs finished so far were delivered;
- Ctrl-C (workers ignore SIGINT: the parent decides) and SIGTERM (under
  :func:`terminate_as_interrupt`) stop every worker within a second or two: terminate, then
  kill; no Manager, queue thread or pool is left behind, and a worker whose parent vanished
  stops at its next step.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.connection import wait
from typing import Callable, Hashable, Iterator

import torch

from ..methods import Method
from .config import TrainConfig
from .interrupts import Terminated, terminate_as_interrupt
from .train import RunResult, train

__all__ = ["run_parallel", "WorkerError", "Terminated", "terminate_as_interrupt"]

_REPORT_EVERY = 25

# (key, config, method, seed): one run; ``key`` comes back with its result.
Job = tuple[Hashable, TrainConfig, Method, int]


class WorkerError(RuntimeError):
    """A worker process died or its run raised; the message is one line."""


def _worker(conn, data_factory, model_fn, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C hits the whole group; parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .bench.allocator import tune_malloc

    torch.set_num_threads(1)
    tune_malloc()
    try:
        data = data_factory()
    except Exception as err:
        conn.send(("error", None, f"loading the data failed: {type(err).__name__}: {err}"))
        return

    def on_step(step: int) -> None:
        if os.getppid() != parent:  # the parent is gone (killed): stop, write nothing
            os._exit(1)
        if step % _REPORT_EVERY == 0:
            conn.send(("progress", None, _REPORT_EVERY))

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        key, config, method, seed = job
        try:
            result, _ = train(config, data, method, seed, on_step=on_step, model_fn=model_fn)
        except Exception as err:
            conn.send(("error", key, f"{type(err).__name__}: {err}"))
            continue
        conn.send(("done", key, result))


def _death(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stop(procs: list, conns: list) -> None:
    """Ask, then terminate, then kill; always join, so no process outlives this call."""
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(None)
    for proc in procs:
        proc.join(0.5)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


def run_parallel(
    data_factory: Callable[[], object],
    jobs: list[Job],
    workers: int,
    on_result: Callable[[Hashable, RunResult], None],
    on_steps: Callable[[int], None] = lambda n: None,
    model_fn: Callable | None = None,
    describe: Callable[[Hashable], str] = str,
) -> None:
    """Run ``jobs`` on ``workers`` spawned single-threaded processes.

    Args:
        data_factory: a picklable callable each worker calls once to get the data.
        jobs: ``(key, config, method, seed)`` runs (``model_fn`` builds the user's model; the
            lab's ``config.model`` otherwise).
        workers: processes (at most one per job).
        on_result: ``on_result(key, result)`` in this process as each run finishes.
        on_steps: ``on_steps(n)`` as workers report progress (every 25 steps).
        describe: ``describe(key)`` names a run in error messages.

    Raises:
        WorkerError: a worker died or a run raised; runs finished before were delivered.
        KeyboardInterrupt: Ctrl-C (or SIGTERM under :func:`terminate_as_interrupt`); every
            worker is stopped first.
    """
    ctx = mp.get_context("spawn")
    todo = list(jobs)
    todo.reverse()
    procs, conns, running = [], [], {}
    try:
        for _ in range(max(1, min(workers, len(todo)))):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child_end, data_factory, model_fn,
                                                     os.getpid()), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        for i, conn in enumerate(conns):
            if todo:
                running[i] = todo.pop()
                conn.send(running[i])
        reported = {i: 0 for i in range(len(procs))}
        while running:
            ready = wait(conns + [p.sentinel for p in procs], timeout=0.5)
            for i, conn in enumerate(conns):
                while conn in ready and conn.poll():
                    try:
                        kind, key, payload = conn.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "progress":
                        reported[i] += payload
                        on_steps(payload)
                        continue
                    job = running.pop(i, None)
                    if kind == "error":
                        what = "" if job is None else f" in run {describe(job[0])}"
                        raise WorkerError(f"a worker failed{what}: {payload}")
                    on_steps(max(0, job[1].steps - reported[i]))
                    reported[i] = 0
                    on_result(key, payload)
                    if todo:
                        running[i] = todo.pop()
                        conn.send(running[i])
            for i, proc in enumerate(procs):
                if i in running and proc.sentinel in ready and not proc.is_alive():
                    raise WorkerError(f"worker process {proc.pid} {_death(proc)} during run "
                                      f"{describe(running[i][0])}")
    finally:
        _stop(procs, conns)

"""Start a function on N local processes (or join torchrun's), and fail loudly, never hang.

Data parallelism with torch's DistributedDataParallel (Li et al., "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", 2020, arXiv:2006.15704).

:func:`launch` runs ``fn(replica, *args)``:

- in a process started by ``torchrun`` (env:// variables set): here, in torchrun's group;
- with ``nproc == 1``: here, with ``replica=None`` (no ``torch.distributed`` at all, so a
  single-process run is exactly the code path it always was);
- otherwise on ``nproc`` fresh processes (``spawn``: no forked OpenMP pools) that meet on
  127.0.0.1 at a free port, each with ``cpu_count // nproc`` torch threads.

A failing rank ends the run: its traceback goes to the parent, the other ranks get a few
seconds to stop (a rank blocked in a collective fails as soon as its peer's socket closes,
or at the process group's timeout), then are terminated, and :class:`RankFailedError` names
the rank that failed first with its error.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_lib
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from .runtime import DistributedConfig, init_replica, shutdown, torchrun_world

__all__ = ["launch", "spawn", "RankFailedError", "free_port"]

# After the first failure, how long the other ranks may take to report and exit by themselves.
GRACE_S = 5.0


class RankFailedError(RuntimeError):
    """A rank of a distributed run failed.

    Attributes:
        rank: the rank that failed first.
        errors: every failed rank's traceback (or exit status), by rank.
    """

    def __init__(self, message: str, rank: int, errors: dict[int, str]) -> None:
        super().__init__(message)
        self.rank = rank
        self.errors = errors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(fn: Callable[..., Any], args: tuple, config: DistributedConfig) -> Any:
    """Join the env:// group, run ``fn``, leave the group (barrier only on success)."""
    replica = init_replica(config)
    try:
        result = fn(replica, *args)
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown(clean=True)
    return result


def _worker(rank: int, fn: Callable[..., Any], args: tuple, config: DistributedConfig,
            port: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(config.nproc), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(config.nproc))
    if "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.nproc))
    joined = False
    try:
        replica = init_replica(config)
        joined = True
        result = fn(replica, *args)
    except BaseException:
        # Report before leaving the group: peers notice the departure and fail in turn, and
        # the earliest report is what the parent names as the cause.
        results.put(("error", rank, time.time(), traceback.format_exc()))
        if joined:
            shutdown(clean=False)
        raise SystemExit(1)
    try:
        shutdown(clean=True)
    except BaseException:
        results.put(("error", rank, time.time(), traceback.format_exc()))
        raise SystemExit(1)
    results.put(("ok", rank, time.time(), result))


def _exit_status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"


def spawn(fn: Callable[..., Any], args: tuple = (),
          config: DistributedConfig = DistributedConfig(nproc=2)) -> list[Any]:
    """Run ``fn(replica, *args)`` on ``config.nproc`` new local processes; their results.

    ``fn`` must be importable by name (a module-level function) and ``args`` and the
    results picklable.

    Returns:
        ``fn``'s return value on each rank, in rank order.

    Raises:
        RankFailedError: a rank raised or died; the others were stopped.
    """
    n = config.nproc
    context = mp.get_context("spawn")
    messages = context.Queue()
    port = free_port()
    procs = [context.Process(target=_worker, args=(r, fn, args, config, port, messages),
                             name=f"normlab-rank{r}") for r in range(n)]
    results: dict[int, Any] = {}
    errors: dict[int, tuple[float, str]] = {}
    for p in procs:
        p.start()
    try:
        deadline = None
        silent: dict[int, float] = {}  # rank -> when it was first seen exited, no message yet
        while len(results) + len(errors) < n:
            try:
                kind, rank, when, payload = messages.get(timeout=0.1)
                (results if kind == "ok" else errors)[rank] = (when, payload)
                continue
            except queue_lib.Empty:
                pass
            now = time.time()
            for rank, p in enumerate(procs):
                if p.exitcode is None or rank in results or rank in errors:
                    continue
                # A message put just before exiting may still be in the pipe: wait 1 s for it.
                if now - silent.setdefault(rank, now) > 1.0:
                    errors[rank] = (silent[rank], _exit_status(p.exitcode) if p.exitcode
                                    else "exited without a result")
            if errors and deadline is None:
                deadline = time.monotonic() + GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
    if errors:
        first = min(errors, key=lambda r: errors[r][0])
        lines = errors[first][1].strip().splitlines() or ["(no message)"]
        message = f"rank {first} of {n} failed: {lines[-1]}\n\n{errors[first][1].rstrip()}"
        others = [r for r in range(n) if r != first and r not in results]
        if others:
            message += "\n\nthen stopped: " + ", ".join(
                f"rank {r} ({errors[r][1].strip().splitlines()[-1]})" if r in errors
                else f"rank {r} (terminated)" for r in others)
        raise RankFailedError(message, first, {r: e[1] for r, e in errors.items()})
    return [results[r][1] for r in range(n)]


def launch(fn: Callable[..., Any], args: tuple = (),
           config: DistributedConfig = DistributedConfig()) -> Any:
    """Run ``fn(replica, *args)`` as the module docstring says; rank 0's return value.

    Under torchrun, ``config.nproc`` must be 1 (the default) or torchrun's world size, and
    this process's own return value is returned.

    Raises:
        ValueError: ``nproc`` disagrees with torchrun's world size.
        RankFailedError: a spawned rank failed.
    """
    world = torchrun_world()
    if world is not None:
        if config.nproc not in (1, world):
            raise ValueError(f"--nproc {config.nproc} under torchrun, whose world size is "
                             f"{world}: leave --nproc out when using torchrun")
        return _run(fn, args, dataclasses.replace(config, nproc=world))
    if config.nproc == 1:
        return fn(None, *args)
    return spawn(fn, args, config)[0]


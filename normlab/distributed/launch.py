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
or at the process group's timeout), then are terminated (SIGTERM) and, if still there after
:data:`GRACE_S` (a stopped or wedged process), killed (SIGKILL), so the parent never waits
forever. :class:`RankFailedError` names the rank that failed first with its error; a rank
that died without a word (killed by a signal) is named before the ranks that then failed
in a collective because it was gone. An exception in the parent (Ctrl-C, the CLI's SIGTERM
handler) stops the ranks the same way; on Linux each rank also gets SIGTERM when the parent
dies outright, so no rank outlives it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import queue as queue_lib
import signal
import socket
import sys
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
    try:
        replica = init_replica(config)
    except RuntimeError as err:  # DistStoreError, DistNetworkError: peers never came
        rank = int(os.environ["RANK"])
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise RankFailedError(
            f"rank {rank} could not join the group of {os.environ['WORLD_SIZE']} at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {lines[0]}", rank,
            {rank: traceback.format_exc()}) from None
    try:
        result = fn(replica, *args)
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown(clean=True)
    return result


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no orphaned ranks)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker(rank: int, fn: Callable[..., Any], args: tuple, config: DistributedConfig,
            port: int, results: Any, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(config.nproc), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(config.nproc))
    # tqdm's default write lock is a multiprocessing semaphore registered with the parent's
    # resource tracker; a rank stopped by a signal could not unregister it (a "leaked
    # semaphore" warning after every interrupted run). Bars are written from one process per
    # rank, so a thread lock is all they need.
    import threading

    from tqdm.auto import tqdm
    tqdm.set_lock(threading.RLock())
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
    procs = [context.Process(target=_worker,
                             args=(r, fn, args, config, port, messages, os.getpid()),
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
        _stop(procs)
        # Release the queue's semaphores now: an exception's traceback keeps this frame (and
        # the queue) alive past the resource tracker, which would then warn of a leak.
        messages.close()
        messages.join_thread()
        del messages
    if errors:
        # A rank killed by a signal sends no message; its peers then fail in a collective
        # (often before the parent sees the death), so the silent one is the cause.
        silent_deaths = [r for r in errors if procs[r].exitcode is not None
                         and procs[r].exitcode < 0 and errors[r][1].startswith("killed")]
        first = min(silent_deaths or errors, key=lambda r: errors[r][0])
        lines = errors[first][1].strip().splitlines() or ["(no message)"]
        message = f"rank {first} of {n} failed: {lines[-1]}\n\n{errors[first][1].rstrip()}"
        others = [r for r in range(n) if r != first and r not in results]
        if others:
            message += "\n\nthen stopped: " + ", ".join(
                f"rank {r} ({errors[r][1].strip().splitlines()[-1]})" if r in errors
                else f"rank {r} (terminated)" for r in others)
        raise RankFailedError(message, first, {r: e[1] for r, e in errors.items()})
    return [results[r][1] for r in range(n)]


def _stop(procs: list) -> None:
    """Terminate every live rank; kill those still there after GRACE_S; reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():  # SIGSTOPped or ignoring SIGTERM: SIGKILL acts on both
            p.kill()
            p.join()


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
        if world > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            # Not started by torchrun itself: the variables may be stray; say why we wait.
            print(f"normlab: joining a group of {world} processes as rank "
                  f"{os.environ['RANK']} at {os.environ['MASTER_ADDR']}:"
                  f"{os.environ['MASTER_PORT']} (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are "
                  f"set); waits up to {config.timeout_s:g} s for the others", file=sys.stderr,
                  flush=True)
        return _run(fn, args, dataclasses.replace(config, nproc=world))
    if config.nproc == 1:
        return fn(None, *args)
    return spawn(fn, args, config)[0]


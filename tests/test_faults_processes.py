"""Processes under faults, injected for real: signals to real processes, real environment
variables. A stopped rank is killed after the grace period, a killed rank is named as the
cause, ranks die with their parent, Ctrl-C/SIGTERM end a command with one line, and a
half-set torchrun environment is refused at once."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from normlab.distributed import DistributedConfig, RankFailedError
from normlab.distributed.launch import spawn

launch_mod = sys.modules["normlab.distributed.launch"]
from normlab.distributed.runtime import torchrun_world
from normlab.lab.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
LONG_RUN = ["-m", "normlab", "run", "--dataset", "synthetic", "--model", "mlp", "--steps",
            "100000", "--eval-every", "100000", "--batch-size", "16", "--seeds", "1",
            "--no-progress"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _sleep_forever() -> None:
    # A handler, as torch and user code install: a stopped process cannot run it, so
    # SIGTERM stays pending (an unhandled SIGTERM would kill even a stopped process).
    signal.signal(signal.SIGTERM, lambda *a: None)
    time.sleep(600)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def test_a_stopped_rank_is_killed_after_the_grace_period(monkeypatch):
    """SIGSTOP makes a process deaf to SIGTERM; the launcher must follow with SIGKILL."""
    monkeypatch.setattr(launch_mod, "GRACE_S", 0.5)
    proc = multiprocessing.get_context("fork").Process(target=_sleep_forever)
    proc.start()
    time.sleep(0.5)  # the handler is installed
    os.kill(proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    launch_mod._stop([proc])
    assert time.monotonic() - start < 5
    assert proc.exitcode == -signal.SIGKILL


def _killed_rank_one(replica) -> None:
    if replica.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))  # rank 0 fails here because its peer is gone


def test_a_killed_rank_is_named_as_the_one_that_failed():
    with pytest.raises(RankFailedError) as info:
        spawn(_killed_rank_one, (), DistributedConfig(nproc=2, backend="gloo", timeout_s=60))
    assert info.value.rank == 1, str(info.value)
    assert str(info.value).startswith("rank 1 of 2 failed: killed by signal 9")


def test_sigterm_to_the_parent_stops_every_rank(tmp_path):
    proc = subprocess.Popen([sys.executable, *LONG_RUN, "--nproc", "2", "--out",
                             str(tmp_path / "o")], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_children(proc.pid)) >= 2, 60, "ranks")
        time.sleep(3.0)  # the ranks are past their start-up, training
        ranks = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM)" in err.strip().splitlines()[-1]
    _wait_for(lambda: not any(_alive(k) for k in ranks), 10, "ranks to go")


def test_ranks_die_with_a_killed_parent(tmp_path):
    """SIGKILL runs no cleanup in the parent: the ranks' parent-death signal stops them."""
    proc = subprocess.Popen([sys.executable, *LONG_RUN, "--nproc", "2", "--out",
                             str(tmp_path / "o")], env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(_children(proc.pid)) >= 2, 60, "ranks")
        time.sleep(3.0)  # the ranks are past their start-up, training
        ranks = _children(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    _wait_for(lambda: not any(_alive(k) for k in ranks), 20, "orphaned ranks to go")


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_interrupt_ends_with_one_line_and_status(tmp_path, sig, status, word):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, *LONG_RUN, "--out", str(out)], env=_env(),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for(lambda: (out / ".normlab.lock").exists(), 60, "the run to start")
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # 128 + signal, or (rarely, seen once under load for SIGINT) death by the signal itself:
    # either tells the shell the run was interrupted, as POSIX shells expect.
    assert proc.returncode in (status, -sig), err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"normlab run: {word}")


@pytest.mark.parametrize("names", [("RANK", "WORLD_SIZE", "MASTER_ADDR"), ("MASTER_PORT",)])
def test_half_set_torchrun_environment_is_refused_at_once(tmp_path, monkeypatch, capsys, names):
    values = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}
    for k in values:
        monkeypatch.delenv(k, raising=False)
    for k in names:
        monkeypatch.setenv(k, values[k])
    start = time.monotonic()
    assert cli_main([*LONG_RUN[2:], "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "half-set torchrun environment" in lines[0]
    assert time.monotonic() - start < 30  # not the 300 s --dist-timeout
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_torchrun_world_checks_the_values(monkeypatch):
    for k, v in {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="not a rank of a world"):
        torchrun_world()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="must be integers"):
        torchrun_world()
    monkeypatch.setenv("RANK", "1")
    assert torchrun_world() == 2


def test_stray_full_environment_says_why_it_waits(tmp_path, monkeypatch, capsys):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(launch_mod.free_port())}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    argv = [*LONG_RUN[2:], "--steps", "2", "--dist-timeout", "1", "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "joining a group of 2 processes" in err and "Traceback" not in err
    assert "could not join the group of 2" in err.strip().splitlines()[-1]

"""Sweeps under real signals: Ctrl-C keeps the finished runs and --resume equals an
uninterrupted sweep; a killed --jobs worker is one line with the finished runs kept; SIGTERM
or SIGINT to the parent ends it promptly with no worker, pipe or resource tracker left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = '''
from torch import nn

def net():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.BatchNorm1d(32),
                         nn.ReLU(inplace=True), nn.Linear(32, 2))
'''


@pytest.fixture
def sweep(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(200, -1)[:, :3].sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:],
             y_test=y[150:])

    def args(out: str, *extra: str, steps: int = 400, seeds: int = 1) -> list[str]:
        return [sys.executable, "-m", "normlab", "compare", "--model", f"{tmp_path}/m.py:net",
                "--dataset", str(tmp_path / "d.npz"), "--methods", "none,batch_norm",
                "--batch-sizes", "8,16", "--batch-size", "16", "--seeds", str(seeds), "--steps",
                str(steps), "--eval-every", "100", "--threads", "1", "--no-progress",
                "--out", str(tmp_path / out), *extra]
    return tmp_path, args


def _start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _wait_for_runs(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if folder.is_dir() and len(list(folder.glob("*.json"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before {n} runs: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no {n} finished runs in {folder} within {timeout} s")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc; children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _curves(path: Path) -> dict:
    runs = json.loads(path.read_text())["runs"]
    return {k: [(r["seed"], r["batch_size"], r["test_acc"], r["train_loss"]) for r in v]
            for k, v in runs.items()}


def test_ctrl_c_keeps_finished_runs_and_resume_equals_uninterrupted(sweep):
    tmp, args = sweep
    proc = _start(args("cut", steps=1000, seeds=2))
    _wait_for_runs(tmp / "cut" / "runs", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "finished runs kept in" in lines[-1]
    kept = len(list((tmp / "cut" / "runs").glob("*.json")))
    assert 1 <= kept < 8 and not (tmp / "cut" / "results.json").exists()
    resumed = _start(args("cut", "--resume", steps=1000, seeds=2))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming: {kept} of 8 runs" in out
    whole = _start(args("whole", steps=1000, seeds=2))
    assert whole.communicate(timeout=300)[0] and whole.returncode == 0
    assert _curves(tmp / "cut" / "results.json") == _curves(tmp / "whole" / "results.json")


def test_resume_refuses_runs_of_another_configuration(sweep):
    tmp, args = sweep
    first = _start(args("o", steps=20))
    first.communicate(timeout=300)
    assert first.returncode == 0
    again = _start(args("o", "--resume", "--lr", "0.5", steps=20))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2 and "another configuration" in err
    assert len(err.strip().splitlines()) == 1


def test_killed_worker_is_one_line_and_finished_runs_are_kept(sweep):
    tmp, args = sweep
    proc = _start(args("k", "--jobs", "2", steps=1500))
    _wait_for_runs(tmp / "k" / "runs", 1, proc)
    workers = [p for p in _descendants(proc.pid)
               if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2
    kept_before = len(list((tmp / "k" / "runs").glob("*.json")))
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    assert "was killed by SIGKILL during run" in err and "finished runs kept in" in err
    assert len(list((tmp / "k" / "runs").glob("*.json"))) >= kept_before
    assert not _alive(set(workers))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_parent_stops_every_process_promptly(sweep, sig):
    tmp, args = sweep
    proc = _start(args(f"s{sig}", "--jobs", "2", steps=3000))
    _wait_for_runs(tmp / f"s{sig}" / "runs", 1, proc)
    below = _descendants(proc.pid)  # both workers and the resource tracker
    assert len(below) >= 2
    start = time.monotonic()
    proc.send_signal(sig)  # to the parent alone, not its process group
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130)
    assert "Traceback" not in err and "finished runs kept in" in err
    end = time.monotonic() + 5
    while _alive(below) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _alive(below)

"""The opt-in standardization-loss kernel (arXiv:1903.00925) never hangs on a build lock.

Real processes against a temporary ``TORCH_EXTENSIONS_DIR``: one finds the lock files an
interrupted build leaves behind, one finds the lock held by a live builder. Both must finish
in seconds on the pure-torch path and say why in one warning. The compiler is a script that
fails at once, so no test waits on a real build.
"""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from normlab.functional import _std_loss_kernel as kernel_mod

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import time, warnings
start = time.monotonic()
from normlab.functional import set_implementation
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    path = set_implementation("kernel")
print(path, time.monotonic() - start)
for w in caught:
    if issubclass(w.category, RuntimeWarning):
        print("WARNING:", w.message)
"""


def run_probe(tmp_path: Path, **env: str) -> tuple[str, float, list[str]]:
    compiler = tmp_path / "fake-cc"
    compiler.write_text("#!/bin/sh\n"  # answers torch's version probes, refuses to compile
                        "case \"$*\" in *version*) echo 12.2.0; exit 0;; esac\n"
                        "echo 'fake-cc: error: this compiler refuses' >&2\nexit 1\n")
    compiler.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if k != "NORMLAB_CPU_KERNEL"}
    full.update(PYTHONPATH=str(ROOT), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
                CXX=str(compiler), **env)
    done = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.strip().split("\n")
    path, seconds = first.split()
    text = "\n".join(rest)
    return path, float(seconds), [w for w in text.split("WARNING:") if w.strip()]


def test_stale_lock_files_do_not_hang(tmp_path):
    folder = tmp_path / "ext" / kernel_mod.NAME
    folder.mkdir(parents=True)
    (folder / "lock").write_text("")          # torch's baton: load_inline waits while it exists
    (folder / "normlab.lock").write_text("")  # normlab's lock file, held by no one
    path, seconds, warned = run_probe(tmp_path)
    assert path == "torch" and seconds < 120
    assert len(warned) == 1 and "this compiler refuses" in warned[0]  # the full error
    assert (folder / "build_error.txt").exists() and not (folder / "lock").exists()


def test_live_lock_holder_times_out(tmp_path):
    folder = tmp_path / "ext" / kernel_mod.NAME
    folder.mkdir(parents=True)
    with open(folder / "normlab.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        path, seconds, warned = run_probe(tmp_path, NORMLAB_KERNEL_LOCK_TIMEOUT="1")
    assert path == "torch" and seconds < 60
    assert len(warned) == 1 and "held the build lock" in warned[0]
    assert not (folder / "build_error.txt").exists()  # a timeout is not a failed build

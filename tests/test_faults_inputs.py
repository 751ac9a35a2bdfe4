"""Bad inputs and results folders, each fault injected for real (real files, a real second
process holding the lock, a real SIGKILL): one line naming the problem, exit status 2,
before any work; two writers never share a folder; a stale lock never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab.lab.cli import main
from normlab.lab.outdir import LOCK_NAME, OutDirError, claim_out

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--dataset", "synthetic", "--model", "mlp", "--steps", "4", "--eval-every", "2",
        "--batch-size", "16", "--seeds", "1", "--no-progress"]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("command", [
    ["run", *FAST],
    ["compare", "--methods", "none,std_loss", *FAST],
    ["reproduce", "fig3-mlp", "--quick", "--no-progress"],
    ["bench", "memory", "--methods", "none", "--models", "mlp"],
])
@pytest.mark.parametrize("where", ["file", "below_file"])
def test_bad_out_is_refused_before_any_work(command, where, a_file, capsys):
    out = a_file if where == "file" else a_file / "sub"
    start = time.monotonic()
    assert main([*command, "--out", str(out)]) == 2
    _one_line_error(capsys, "--out", "not a folder" if where == "file" else "is a file")
    assert time.monotonic() - start < 5  # refused up front, not after training/timing


def test_existing_result_is_refused_then_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", *FAST, "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["compare", "--methods", "none,batch_norm", *FAST, "--out", str(out)]) == 2
    _one_line_error(capsys, "already holds a result", "--overwrite")
    assert json.loads((out / "results.json").read_text()) == first  # untouched
    (out / "accuracy.png").write_bytes(b"stale")  # an old file must not survive a replace
    assert main(["compare", "--methods", "none,batch_norm", *FAST, "--out", str(out),
                 "--overwrite"]) == 0
    assert "replacing the result" in capsys.readouterr().err
    assert set(json.loads((out / "results.json").read_text())["runs"]) == {"none", "batch_norm"}
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


_HOLD = ("import sys, time; from normlab.lab.outdir import claim_out; "
         "claim_out(sys.argv[1], ['results.json']); print('locked', flush=True); time.sleep(120)")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_gets_a_clear_error_and_a_killed_holder_leaves_no_stale_lock(
        tmp_path, capsys):
    out = tmp_path / "busy"
    holder = _holder(out)
    try:
        assert main(["run", *FAST, "--out", str(out)]) == 2
        _one_line_error(capsys, "in use by normlab pid", str(holder.pid))
        assert not (out / "results.json").exists()
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock; the OS releases it
        holder.wait(timeout=10)
    finally:
        holder.kill()
    assert (out / LOCK_NAME).exists()  # the file stays; the lock does not
    assert main(["run", *FAST, "--out", str(out)]) == 0
    assert (out / "results.json").exists()


def test_claim_out_keep_leaves_files_for_a_resume(tmp_path):
    claim_out(tmp_path, ["results.json"]).release()
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutDirError, match="already holds a result"):
        claim_out(tmp_path, ["results.json"])
    claim_out(tmp_path, ["results.json"], keep=True).release()
    assert (tmp_path / "results.json").read_text() == "{}"


@pytest.mark.parametrize("extra, needle", [
    (["--eval-batch", "0"], "--eval-batch must be >= 1"),
    (["--eval-batch", "-1"], "--eval-batch must be >= 1"),
    (["--baseline", "nnone"], "--baseline 'nnone' is not a method; known: "),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--weight", "nan"], "--weight must be a finite number >= 0"),
    (["--weight", "-1"], "--weight must be a finite number >= 0"),
    (["--option", "eps=nan"], "--option eps must be a number, not nan"),
    (["--option", "weight=abc"], "--option weight must be a number"),
    (["--option", "weight=inf"], "--option weight must be finite"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--first-seed", str(10**20)], "--first-seed must be in [0, 2**63"),
    (["--momentum", "nan"], "--momentum must be a finite number"),
])
def test_bad_run_options_name_the_option(tmp_path, capsys, extra, needle):
    out = tmp_path / "o"
    assert main(["run", *FAST, *extra, "--out", str(out)]) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()  # checked before the folder is even created


@pytest.mark.parametrize("extra, needle", [
    (["--min-sample", "-1"], "--min-sample must be a finite number of seconds >= 0"),
    (["--min-sample", "nan"], "--min-sample must be a finite number"),
    (["--threads", "-1"], "--threads needs positive integers"),
    (["--warmup", "-2"], "--warmup must be >= 0"),
    (["--device", "tpu"], "--device expects cpu or cuda"),
])
def test_bad_bench_options_name_the_option(tmp_path, capsys, extra, needle):
    assert main(["bench", "layers", "--methods", "none", *extra, "--default-malloc",
                 "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build or machine without CUDA")
def test_bench_on_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["bench", "layers", "--methods", "none", "--device", "cuda",
                 "--default-malloc", "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "--device cuda", "no usable CUDA device")


@pytest.mark.parametrize("content, needle", [
    ({"config": {}}, "lacks the key 'summary'"),
    ({"summary": [{"method": "none"}]}, "lacks the key 'final_acc_mean'"),
    ("{not json", "cannot read a compare results file"),
])
def test_list_results_names_the_missing_key_and_file(tmp_path, capsys, content, needle):
    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["list", "methods", "--markdown", "--results", str(path)]) == 2
    _one_line_error(capsys, needle, str(path))


def test_diverged_run_records_the_accuracy_the_summary_counts(tmp_path):
    out = tmp_path / "div"
    assert main(["run", "--method", "std_loss", *FAST, "--lr", "5", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    run, row = res["runs"]["std_loss"][0], res["summary"][0]
    assert run["diverged_at"] is not None and row["diverged_seeds"] == [0]
    assert run["final_acc"] == row["final_acc_mean"] == 1 / 10  # synthetic: 10 classes
    assert "acc_before_divergence" in run

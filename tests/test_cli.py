"""The CLI end to end on a tiny synthetic dataset: files written, errors readable."""

import json
import subprocess
import sys

import pytest
import torch

from normlab.lab.cli import main

FAST = ["--dataset", "synthetic", "--steps", "12", "--eval-every", "4", "--batch-size", "16",
        "--lr", "0.01", "--no-progress"]


def test_compare_writes_results_report_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--methods", "none,batch_norm,std_loss", "--seeds", "2", "--out", str(out), *FAST])
    assert rc == 0
    for name in ("results.json", "report.md", "accuracy.png", "loss.png"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["steps"] == 12 and res["seeds"] == [0, 1]
    assert [r["method"] for r in res["summary"]] == ["none", "batch_norm", "std_loss"]
    runs = res["runs"]["std_loss"]
    assert len(runs) == 2 and runs[0]["eval_steps"] == [0, 1, 2, 4, 8, 12]  # log-spaced default
    assert len(runs[0]["train_loss"]) == 12 and all(a > 0 for a in runs[0]["aux_loss"])
    assert all(a == 0 for a in res["runs"]["none"][0]["aux_loss"])
    assert res["environment"]["torch"] and "synthetic" in res["dataset"]["note"]
    report = (out / "report.md").read_text()
    assert "| std_loss |" in report and "synthetic" in report
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "Resolution: 6 evaluations" in printed
    assert "Resolution:" in report


def test_same_seed_repeats_bit_for_bit(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["run", "--method", "std_loss", "--seeds", "1", "--out", str(out), *FAST]) == 0
    ra = json.loads((a / "results.json").read_text())["runs"]["std_loss"][0]
    rb = json.loads((b / "results.json").read_text())["runs"]["std_loss"][0]
    assert ra["train_loss"] == rb["train_loss"] and ra["test_acc"] == rb["test_acc"]


def test_diverged_run_is_reported_not_fatal(tmp_path, capsys):
    out = tmp_path / "div"
    argv = ["run", "--method", "std_loss", "--seeds", "1", "--out", str(out), *FAST, "--lr", "0.05"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    run = res["runs"]["std_loss"][0]
    assert run["diverged_at"] is not None and "non-finite loss" in run["diverged_reason"]
    assert res["summary"][0]["diverged_seeds"] == [0]
    assert "1 diverged" in (out / "report.md").read_text()
    assert "diverged" in capsys.readouterr().out


def test_weight_option_reaches_the_loss_method(tmp_path):
    out = tmp_path / "w"
    assert main(["run", "--method", "std_loss", "--weight", "0.01", "--seeds", "1", "--out", str(out), *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["std_loss"]["options"]["weight"] == 0.01


@pytest.mark.parametrize("argv,message", [
    (["run", "--method", "batch_nrom"], "unknown method 'batch_nrom'; known methods: "),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'; known datasets: "),
    (["compare", "--methods", "none,none"], "named twice"),
    (["run", "--method", "none", "--weight", "0.1"], "taken by none of the methods"),
    (["run", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["run", "--dataset", "synthetic", "--data-dir", "data"],
     "--data-dir: the synthetic dataset is generated, it takes no data folder"),
    (["compare", "--dataset", "shapes3d", "--model", "pointnet", "--data-dir", "data"],
     "--data-dir: the shapes3d dataset is generated, it takes no data folder"),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x"), "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_list_and_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "normlab", "list"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("std_loss", "batch_norm", "bnp", "frn", "cnn", "mlp_sigmoid", "fashion_mnist"):
        assert name in proc.stdout


def test_parallel_jobs_equal_sequential_single_thread_runs(tmp_path):
    seq, par = tmp_path / "seq", tmp_path / "par"
    common = ["compare", "--methods", "none,std_loss", "--seeds", "2", "--threads", "1",
              "--channels-last", *FAST]
    assert main([*common, "--out", str(seq)]) == 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the parent's count, which the single-threaded workers do not use
    try:
        assert main([*common, "--jobs", "2", "--out", str(par)]) == 0
    finally:
        torch.set_num_threads(before)
    assert json.loads((par / "results.json").read_text())["environment"]["torch_threads"] == "1"
    a = json.loads((seq / "results.json").read_text())["runs"]
    b = json.loads((par / "results.json").read_text())["runs"]
    for label in ("none", "std_loss"):
        assert [r["seed"] for r in b[label]] == [0, 1]
        for ra, rb in zip(a[label], b[label]):
            assert ra["train_loss"] == rb["train_loss"] and ra["test_acc"] == rb["test_acc"]


def test_channels_last_computes_the_same_function(tmp_path):
    outs = {}
    for flag in ([], ["--channels-last"]):
        out = tmp_path / ("cl" if flag else "std")
        assert main(["run", "--method", "batch_norm", "--seeds", "1", *FAST, *flag, "--out", str(out)]) == 0
        outs[bool(flag)] = json.loads((out / "results.json").read_text())["runs"]["batch_norm"][0]
    a, b = outs[False]["train_loss"], outs[True]["train_loss"]
    assert all(abs(x - y) < 1e-3 * max(1.0, abs(x)) for x, y in zip(a, b))


def test_methods_markdown_table_joins_compare_accuracies(tmp_path, capsys):
    out = tmp_path / "tbl"
    assert main(["compare", "--methods", "none,std_loss", "--seeds", "1", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["list", "methods", "--markdown", "--results", str(out / "results.json")]) == 0
    table = capsys.readouterr().out
    acc = json.loads((out / "results.json").read_text())["summary"][1]["final_acc_mean"]
    assert "| `std_loss` | Collins, Ballé & Shlens 2019, arXiv:1903.00925 | loss | no |" in table
    assert f"{100 * acc:.1f} ± 0.0" in table and "| not run |" in table
    assert main(["list", "--markdown", "--results", str(tmp_path / "missing.json")]) == 2

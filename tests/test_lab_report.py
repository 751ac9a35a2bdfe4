"""What the results folder and the printed tables say: no speed-up against a baseline that
diverged or never learned, no speed-up column for one method, the auxiliary-loss plot."""

import json
import types

import pytest
import torch

from normlab.lab.cli import main
from normlab.lab.config import TrainConfig
from normlab.lab.experiment import Experiment, summarize
from normlab.lab.report import format_table
from normlab.lab.train import RunResult, eval_schedule
from normlab.methods import create_method

FAST = ["--dataset", "synthetic", "--steps", "12", "--eval-every", "4", "--batch-size", "16",
        "--lr", "0.01", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def _experiment(curves: dict[str, list[float]], y_test: list[int],
                task: str = "classification") -> Experiment:
    """An experiment whose runs are the given test-metric curves (one seed each), on data
    with these test labels: summarize's inputs, built without training."""
    config = TrainConfig(steps=8, eval_every=4)
    steps = eval_schedule(config)  # 0, 1, 2, 4, 8
    data = types.SimpleNamespace(name="toy", num_classes=10, y_test=torch.tensor(y_test),
                                 task=task)
    runs = {k: [RunResult(method=k, seed=0, eval_steps=steps, test_acc=list(c),
                          batch_size=config.batch_size)] for k, c in curves.items()}
    return Experiment(config, data, {k: create_method(k) for k in curves}, [0], runs)


BALANCED = list(range(10)) * 10  # a constant prediction scores 10%
LEARNS = [0.10, 0.30, 0.50, 0.70, 0.80]


@pytest.mark.parametrize("baseline,y_test", [
    ([0.10] * 5, BALANCED),                         # flat at chance
    ([0.15, 0.12, 0.10, 0.10, 0.10], BALANCED),     # best before any training step
    ([0.10, 0.14, 0.20, 0.25, 0.28], [0] * 30 + list(range(1, 10)) * 7 + [1]),  # < 30% majority
])
def test_a_baseline_that_did_not_learn_gives_no_speedup(baseline, y_test):
    rows = summarize(_experiment({"none": baseline, "batch_norm": LEARNS}, y_test), "none")
    assert [r["speedup_reason"] for r in rows] == ["baseline did not learn"] * 2
    assert all(r["speedup"] is None and r["steps_to_target"] is None for r in rows)
    assert not any(r["speedup_at_cap"] for r in rows)
    table = format_table(rows)
    assert table.count("baseline did not learn") >= 3  # both rows and the resolution line
    assert "1.00x" not in table and "never" not in table and "Resolution:" not in table


def test_a_regression_baseline_whose_error_never_fell_did_not_learn():
    rows = summarize(_experiment({"none": [1.0, 1.2, 1.5, 2.0, 3.0],
                                  "batch_norm": [1.0, 0.5, 0.3, 0.2, 0.1]}, [], "regression"))
    assert [r["speedup_reason"] for r in rows] == ["baseline did not learn"] * 2
    falls = summarize(_experiment({"none": [1.0, 0.9, 0.8, 0.7, 0.6],
                                   "batch_norm": [1.0, 0.5, 0.3, 0.2, 0.1]}, [], "regression"))
    assert [r["speedup_reason"] for r in falls] == [None, None] and falls[1]["speedup"] > 1


def test_a_baseline_that_learned_keeps_its_speedup():
    rows = summarize(_experiment({"none": [0.10, 0.12, 0.20, 0.40, 0.60],
                                  "batch_norm": LEARNS}, BALANCED), "none")
    assert [r["speedup_reason"] for r in rows] == [None, None]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 1.0
    table = format_table(rows)
    assert "1.00x (baseline)" in table and "Resolution:" in table


def test_a_baseline_that_diverged_is_named_in_tables_and_results(tmp_path, capsys):
    """std_loss at lr 0.05 diverges on this budget (test_cli); as the baseline, it leaves
    every method without a speed-up, and every table says why."""
    out = tmp_path / "div"
    argv = ["compare", "--methods", "std_loss,batch_norm", "--baseline", "std_loss",
            "--seeds", "1", "--out", str(out), *FAST, "--lr", "0.05"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["runs"]["std_loss"][0]["diverged_at"] is not None
    summary = res["summary"]
    assert [r["speedup"] for r in summary] == [None, None]
    assert [r["speedup_reason"] for r in summary] == ["baseline diverged"] * 2
    report = (out / "report.md").read_text()
    for text in (printed, report):
        assert "| std_loss |" in text and "baseline diverged" in text
        assert "1.00x" not in text


def test_one_method_has_no_speedup_column_and_gets_its_aux_loss_plot(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["run", "--method", "std_loss", "--seeds", "1", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    for text in (printed, report):
        assert "| std_loss |" in text and "s/run" in text and "steps to baseline" not in text
        assert "speed-up |" not in text and "1.00x" not in text and "Resolution:" not in text
    header = next(line for line in printed.splitlines() if line.startswith("| method"))
    assert header.count("|") == 4  # method, final acc, s/run
    # The auxiliary loss (the weighted standardization loss) is plotted and linked.
    assert (out / "aux_loss.png").read_bytes()[:8] == PNG
    assert "(aux_loss.png)" in report and "aux_loss.png" in printed
    assert json.loads((out / "results.json").read_text())["plots"] == [
        "accuracy.png", "loss.png", "aux_loss.png"]


def test_compare_of_one_method_has_no_speedup_column_and_no_aux_plot(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["compare", "--methods", "batch_norm", "--seeds", "1", "--out", str(out),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| batch_norm |" in printed and "speed-up |" not in printed
    assert not (out / "aux_loss.png").exists()


def test_methods_without_an_auxiliary_loss_get_no_aux_plot(tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["compare", "--methods", "none,batch_norm", "--seeds", "1", "--out", str(out),
                 *FAST]) == 0
    assert (out / "loss.png").exists() and not (out / "aux_loss.png").exists()
    assert "aux_loss" not in (out / "report.md").read_text()
    assert "aux_loss" not in capsys.readouterr().out
    assert "speed-up |" in (out / "report.md").read_text()  # two methods: the column stays

"""The batch-size study's pieces: plateau test, subsets, parameter overrides."""

import json

import pytest
import torch

from normlab.lab.cli import main
from normlab.lab.datasets.synthetic import synthetic
from normlab.lab.reproduce import get_experiment
from normlab.lab.reproduce.batch_size import plateau_gain, subset


def test_plateau_gain_is_last_quarter_improvement():
    # accuracy after 0..8 epochs: mean of epochs 7-8 minus mean of epochs 5-6
    rising = [0.1, 0.3, 0.5, 0.6, 0.7, 0.70, 0.72, 0.73, 0.75]
    assert plateau_gain(rising) == pytest.approx(0.74 - 0.71)
    # a flat curve with evaluation noise: two single points would say +0.02 or -0.02
    noisy = [0.1, 0.3, 0.5, 0.6, 0.7, 0.80, 0.78, 0.80, 0.78]
    assert plateau_gain(noisy) == pytest.approx(0.0)
    assert plateau_gain([0.1, 0.5, 0.8, 0.75, 0.70]) == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="at least 4 epochs"):
        plateau_gain([0.1, 0.5, 0.6])


def test_subset_is_seeded_and_keeps_the_test_head():
    data = synthetic(num_train=100, num_test=50, shape=(1, 4, 4))
    a, b = subset(data, 30, 20), subset(data, 30, 20)
    assert len(a.x_train) == 30 and len(a.x_test) == 20
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, data.x_test[:20])
    rows = {tuple(r.tolist()) for r in data.x_train.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in a.x_train.flatten(1))
    assert subset(data, None, None).x_train is data.x_train


def test_params_override_is_checked_and_recorded():
    spec = get_experiment("batch-size")
    r = spec.resolve(params={"batch_sizes": (2, 8), "models": "cnn", "epochs": 4})
    assert r.params["models"] == ("cnn",) and r.params["batch_sizes"] == (2, 8)
    assert r.params["epochs"] == 4 and "epochs=4" in r.budget_note
    with pytest.raises(ValueError, match="no parameter 'epoch'; known: models"):
        spec.resolve(params={"epoch": 4})
    with pytest.raises(ValueError, match="parameter epochs must be int"):
        spec.resolve(params={"epochs": "many"})


def test_cli_param_errors_are_one_line(capsys):
    assert main(["reproduce", "batch-size", "--quick", "--param", "epoch=3"]) == 2
    assert "no parameter 'epoch'" in capsys.readouterr().err
    assert main(["reproduce", "batch-size", "--param", "epochs"]) == 2
    assert "--param expects KEY=VALUE" in capsys.readouterr().err
    # the quick variants train on generated data: a data folder would be silently ignored
    assert main(["reproduce", "batch-size", "--quick", "--data-dir", "/nonexistent"]) == 2
    assert "generated synthetic dataset" in capsys.readouterr().err


def test_jobs_give_the_same_study_as_one_process(tmp_path):
    """``--jobs 2`` trains the cells on worker processes that load the same subset."""
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        args = ["reproduce", "batch-size", "--quick", "--no-progress", "--out", str(out),
                "--param", "batch_sizes=2,8", "--jobs", str(jobs)]
        assert main(args) == 0
        runs[jobs] = json.loads((out / "results.json").read_text())["results"]
    one, two = (r["models"]["cnn"] for r in (runs[1], runs[2]))
    assert one["final_acc"] == two["final_acc"] and one["curves"] == two["curves"]
    assert runs[1]["train_examples"] == runs[2]["train_examples"] == 64
    report = (tmp_path / "j2" / "report.md").read_text()
    assert "1 torch thread(s) per run, 2 worker processes" in report
    assert main(["reproduce", "batch-size", "--quick", "--jobs", "0"]) == 2

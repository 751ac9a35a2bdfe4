"""Tests of ``normlab reproduce``: quick runs, instrumentation, analysis and the models it adds
(its loaders are tested in tests/test_data_more.py)."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab.cli import main
from normlab.lab.models import build_model
from normlab.lab.models.pointnet import ScaleShift
from normlab.lab.reproduce import EXPERIMENTS, reproduce
from normlab.lab.reproduce.analysis import band_stability, weight_analysis
from normlab.lab.reproduce.instrument import (Instrumented, PercentileRecorder, halve_lr_every,
                                              last_activation)
from normlab.methods import create_method

VERDICTS = {"holds here", "does not hold here", "cannot tell"}


# --------------------------------------------------------------------------- quick runs

@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_writes_report(name, tmp_path):
    payload = reproduce(name, quick=True, out=tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == name and results["quick"] is True
    rows = results["paper_vs_normlab"]
    assert len(rows) == len(EXPERIMENTS[name].claims) >= 1
    assert all(r["verdict"] in VERDICTS and r["paper"] and r["ours"] for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "## Paper vs normlab" in report and "Run time:" in report and "QUICK" in report
    assert payload["plots"]
    for plot in payload["plots"]:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report


def test_cli_list_and_unknown_name(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "pointnet" in capsys.readouterr().out
    assert main(["reproduce", "fig9-nothing"]) == 2
    assert "known: fig1-cnn" in capsys.readouterr().err


# --------------------------------------------------------------------------- instrumentation

def test_percentile_recorder_matches_numpy_and_skips_eval():
    act = nn.ReLU()
    rec = PercentileRecorder(act, every=3, percentiles=(15, 50, 85), unit=1)
    xs = [torch.randn(40, 4) for _ in range(7)]
    for i, x in enumerate(xs):
        act.train()
        act(x)
        act.eval()
        act(torch.full((40, 4), 1e3))  # evaluation forwards are neither counted nor recorded
    assert rec.steps == [1, 3, 6]
    for step, row in zip(rec.steps, rec.values):
        expected = np.percentile(xs[step - 1][:, 1].double().numpy(), [15, 50, 85])
        np.testing.assert_allclose(row, expected, rtol=1e-12)
    rec.remove()
    act.train()
    act(xs[0])
    assert len(rec.steps) == 3


def test_halve_lr_every():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    handle = halve_lr_every(opt, 2)
    for _ in range(5):
        opt.step()
    assert opt.param_groups[0]["lr"] == 0.25
    handle.remove()
    opt.step()
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.25


def test_instrumented_delegates_and_removes_hooks():
    inner = create_method("batch_norm")
    method = Instrumented(inner, record_every=1)
    assert (method.name, method.kind, method.conv_bias) == ("batch_norm", "layer", False)
    assert method.options() == inner.options()
    model = build_model("cnn", method, (1, 28, 28), 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    model(torch.randn(4, 1, 28, 28))
    assert method.recordings[0].steps == [1]
    method.for_inference(model)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_instrumented_schedule_halves_lr_until_the_run_ends():
    method = Instrumented(create_method("none"), lr_halve_every=2)
    p = nn.Parameter(torch.zeros(1))
    opt = method.wrap_optimizer(torch.optim.Adam([p], lr=1e-3), nn.Linear(1, 1))
    for _ in range(4):
        opt.step()
    assert math.isclose(opt.param_groups[0]["lr"], 2.5e-4)
    method.for_inference(nn.Linear(1, 1))
    for _ in range(4):
        opt.step()
    assert math.isclose(opt.param_groups[0]["lr"], 2.5e-4)


def test_last_activation_needs_one():
    assert isinstance(last_activation(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid())), nn.Sigmoid)
    with pytest.raises(ValueError, match="no activation"):
        last_activation(nn.Sequential(nn.Linear(2, 2)))


# --------------------------------------------------------------------------- analysis

def test_weight_analysis_finds_robust_range_and_collapse():
    weights = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    ana = weight_analysis(weights, [0.80, 0.81, 0.82, 0.83, 0.15], baseline=0.80, chance=0.1)
    assert ana["best_weight"] == 1.0 and ana["collapse_weight"] == 10.0
    assert (ana["robust_low"], ana["robust_high"]) == (1e-3, 1.0)
    assert math.isclose(ana["orders"], 3.0)
    flat = weight_analysis(weights, [0.8] * 5, baseline=0.8, chance=0.1)
    assert flat["collapse_weight"] is None and math.isclose(flat["orders"], 4.0)
    with pytest.raises(ValueError, match="increase"):
        weight_analysis([1.0, 0.1], [0.5, 0.5], 0.5, 0.1)


def test_band_stability():
    still = band_stability([[-1, 0, 1]] * 4)
    assert still["median_drift"] == 0 and still["width_ratio"] == 1
    moving = band_stability([[-1, 0, 1], [0, 1, 2], [1, 2, 5]])  # widths 2, 2, 4
    assert math.isclose(moving["median_drift"], 2 / (8 / 3))
    assert math.isclose(moving["width_ratio"], 2.0)


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("method", ["none", "batch_norm", "group_norm", "frn", "std_loss"])
@pytest.mark.parametrize("model,shape", [("mobilenet", (1, 28, 28)), ("pointnet", (3, 20)),
                                         ("resnet20", (3, 8, 8))])
def test_new_models_forward_and_backward(model, shape, method):
    m = create_method(method)
    net = build_model(model, m, shape, 5)
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 5)
    out.sum().backward()
    convs = [c for c in net.modules() if isinstance(c, (nn.Conv1d, nn.Conv2d))]
    assert all((c.bias is not None) == m.conv_bias for c in convs)


def test_resnet20_has_twenty_weight_layers():
    net = build_model("resnet20", create_method("none"), (3, 32, 32), 10)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()) == 20


def test_pointnet_is_invariant_to_point_order():
    net = build_model("pointnet", create_method("batch_norm"), (3, 30), 4)
    net(torch.randn(8, 3, 30))  # move the running statistics away from their init
    net.eval()
    x = torch.randn(2, 3, 30)
    torch.testing.assert_close(net(x), net(x[:, :, torch.randperm(30)]), rtol=1e-5, atol=1e-6)


def test_pointnet_scale_shift_layers():
    net = build_model("pointnet_scale_shift", create_method("std_loss"), (3, 10), 4)
    shifts = [m for m in net.modules() if isinstance(m, ScaleShift)]
    assert [s.num_features for s in shifts] == [64, 64, 64, 128, 1024, 512, 256]
    assert all(m.bias is None for m in net.modules() if isinstance(m, (nn.Conv1d,))
               ) and net[-1].bias is not None
    x = torch.randn(2, 64, 5)
    shifts[0].weight.data.fill_(2.0)
    shifts[0].bias.data.fill_(-1.0)
    torch.testing.assert_close(shifts[0](x), 2 * x - 1)


# --------------------------------------------------------------------------- shapes3d

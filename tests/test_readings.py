"""The paper's readings as lab options: --init, --input-scaling, std_loss logits/bias."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab.cli import main
from normlab.lab.datasets import dataset_from_uint8
from normlab.lab.init import initialize
from normlab.lab.input_scaling import scale_inputs
from normlab.lab.models import build_model
from normlab.methods import create_method


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 5), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.Linear(16, 40))


def test_glorot_uniform_bounds_variance_and_zero_biases():
    torch.manual_seed(0)
    net = initialize(_net(), "glorot")
    for layer, fan_in, fan_out in ((net[0], 3 * 25, 16 * 25), (net[3], 1 * 9, 16 * 9),
                                   (net[5], 16, 40)):
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio 2010, eq. 16
        w = layer.weight.detach().double()
        assert w.abs().max() <= bound
        # U(-a, a) has variance a^2 / 3 = 2 / (fan_in + fan_out)
        assert w.var().item() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.2)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(net[1].weight, torch.ones(16))  # norm layers keep their own init


def test_torch_scheme_leaves_the_model_as_built_and_bad_input_is_refused():
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert initialize(net, "torch") is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="unknown init scheme 'he'; known: torch, glorot"):
        initialize(net, "he")
    wn = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="reparametrized weight"):
        initialize(nn.Sequential(wn), "glorot")


def test_build_model_initializes_before_the_methods_prepare():
    torch.manual_seed(0)
    model = build_model("cnn", create_method("weight_norm"), (1, 28, 28), 10, init="glorot")
    assert isinstance(model, nn.Module)  # weight norm reparametrized the glorot weights
    plain = build_model("cnn", create_method("none"), (1, 28, 28), 10, init="glorot")
    assert torch.equal(plain[0].bias, torch.zeros(32))


def test_input_scalings_are_exact_maps_of_the_pixels():
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    xte = rng.integers(0, 256, (10, 6, 6), dtype=np.uint8)
    y = np.arange(20) % 3
    data = dataset_from_uint8("toy", xtr, y, xte, y[:10], 3, "test")
    assert scale_inputs(data, "standardize") is data
    unit = scale_inputs(data, "unit")
    ref = torch.from_numpy(xte.astype(np.float64) / 255).reshape(10, 1, 6, 6)
    assert torch.allclose(unit.x_test.double(), ref, atol=1e-6)
    signed = scale_inputs(data, "signed")
    assert torch.allclose(signed.x_train.double(),
                          torch.from_numpy(2 * xtr.astype(np.float64) / 255 - 1).reshape(20, 1, 6, 6), atol=1e-6)
    with pytest.raises(ValueError, match="unknown input scaling 'raw'"):
        scale_inputs(data, "raw")


def test_std_loss_logits_and_bias_options():
    x = torch.randn(16, 1, 28, 28)
    for logits, hooked in ((False, 3), (True, 4)):
        method = create_method("std_loss", logits=logits)
        model = build_model("cnn", method, (1, 28, 28), 10)
        aux = method.auxiliary_loss(model)
        model(x)
        aux()  # values() are those of the latest read (every forward counts until read)
        values = aux.values()
        assert len(values) == hooked
        aux.remove()
    bare = build_model("cnn", create_method("std_loss", bias=False), (1, 28, 28), 10)
    convs = [m for m in bare.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is None for c in convs)
    assert bare[-1].bias is not None  # the classifier keeps its bias
    with pytest.raises(ValueError, match="logits must be True or False"):
        create_method("std_loss", logits="yes")


def test_cli_options_reach_the_run_and_bad_choices_are_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["run", "--method", "std_loss", "--dataset", "synthetic", "--steps", "4",
            "--batch-size", "16", "--seeds", "1", "--no-progress", "--out", str(out),
            "--init", "glorot", "--input-scaling", "unit", "--option", "logits=True"]
    assert main(argv) == 0
    with pytest.raises(SystemExit):
        main(["run", "--input-scaling", "raw"])
    assert "invalid choice: 'raw' (choose from 'standardize', 'unit', 'signed')" in \
        capsys.readouterr().err

"""``python -m normlab.lab.bench.std_parts``: each variant does its part and no more."""

import re

import pytest
import torch
from torch import nn

from normlab.lab.bench import cpu_time, std_parts


def _net():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))


@pytest.mark.parametrize("name", ["hooks", "+moments", "+copy"])
def test_partial_losses_read_zero_and_leave_the_network_unchanged(name, monkeypatch):
    calls = []
    real = std_parts.moments
    monkeypatch.setattr(std_parts, "moments", lambda x, cd: calls.append(cd) or real(x, cd))
    torch.manual_seed(0)
    model, x = _net(), torch.randn(5, 6)
    bare = model(x)
    loss = std_parts.PARTS[name](model)
    model(x)
    loss()
    assert [n for n, _ in loss.layers] == ["0"]  # the logit layer is still found and left out
    calls.clear()
    out = model(x)
    read = loss()
    assert read.item() == 0.0 and not read.requires_grad
    torch.testing.assert_close(out, bare)
    assert calls == ([1] if name == "+moments" else [])  # the first layer's, channels last
    loss.remove()


@pytest.mark.parametrize("name", ["hooks", "+moments", "+copy"])
def test_only_the_copy_variant_hands_the_network_a_copy(name):
    model = _net()
    raw = []
    model[0].register_forward_hook(lambda m, a, out: raw.append(out))  # runs before the loss's
    loss = std_parts.PARTS[name](model)
    given = []
    model[1].register_forward_pre_hook(lambda m, a: given.append(a[0]))
    model(torch.randn(4, 6))
    assert (given[0].data_ptr() != raw[0].data_ptr()) == (name == "+copy")
    loss.remove()


def test_prints_every_part_per_model(capsys, monkeypatch):
    monkeypatch.setitem(cpu_time.INNER, "mlp", 2)
    std_parts.main(["--models", "mlp", "--rounds", "3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("mlp: ")
    for name in ("batch_norm", "hooks", "+moments", "+copy", "std_loss"):
        assert re.search(re.escape(name) + r" \d+\.\d\d \[\d+\.\d\d-\d+\.\d\d\]", line), line
    assert "none " not in line

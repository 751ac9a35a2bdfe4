"""The lab's ``lstm`` model: images read row by row, each kind of method placed on the gates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.lab.models import build_model
from normlab.layers.recurrent import LSTM
from normlab.methods import create_method


def test_rows_are_the_time_steps():
    model = build_model("lstm", create_method("none"), (1, 28, 28), 10)
    x = torch.randn(3, 1, 28, 28)
    _, (h, _) = model.rnn(x[:, 0])  # (N, H, W): row t is step t
    assert torch.equal(model(x), model.fc(h[-1]))
    assert isinstance(model.rnn, LSTM) and model.rnn.input_size == 28


def test_layer_norm_normalizes_each_steps_gates():
    model = build_model("lstm", create_method("layer_norm"), (1, 28, 28), 10)
    norms = [n for n, _ in model.named_modules() if n.startswith("rnn.gate_norm")]
    assert norms == ["rnn.gate_norm_l0"]
    rows = []
    model.rnn.gate_norm_l0.register_forward_hook(lambda m, a, out: rows.append(out))
    model(torch.randn(4, 1, 28, 28))
    assert len(rows) == 28  # once per step, on (N, 4H)
    out = rows[0]
    assert out.shape == (4, 256)
    assert torch.allclose(out.mean(1), torch.zeros(4), atol=1e-5)  # gain 1, bias 0 at init


def test_std_loss_hooks_the_gate_taps_not_the_logits():
    method = create_method("std_loss")
    model = build_model("lstm", method, (1, 28, 28), 10).train()
    aux = method.auxiliary_loss(model)
    assert [n for n, _ in aux.layers] == ["rnn.gates_l0"]
    model(torch.randn(8, 1, 28, 28))
    assert aux() > 0


def test_a_method_that_replaces_the_activation_is_refused():
    with pytest.raises(ValueError, match="'frn' replaces the activation"):
        build_model("lstm", create_method("frn"), (1, 28, 28), 10)


def test_sequences_and_bad_shapes():
    model = build_model("lstm", create_method("none"), (12, 3), 4)
    assert model(torch.randn(2, 12, 3)).shape == (2, 4)
    with pytest.raises(ValueError, match="lstm needs"):
        build_model("lstm", create_method("none"), (784,), 10)

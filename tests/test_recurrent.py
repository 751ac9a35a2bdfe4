"""normlab's LSTM/GRU against torch's own nn.LSTM/nn.GRU (the independent reference), and the
standardization loss on their gate pre-activations: moments over batch and time, padded steps
excluded, checked against a per-sequence float64 loop written here."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from normlab.layers.recurrent import GRU, LSTM, convert_recurrent
from normlab.losses import StandardizationLoss
from normlab.nn_types import PreActivation
from zoo import ZOO, make_batch

LENGTHS = torch.tensor([3, 6, 1, 6, 4])  # unsorted, with ties and a length-1 sequence
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _pair(cls, dtype, taps="gates", **kwargs):
    ref = cls(5, 7, **kwargs).to(dtype)
    return ref, convert_recurrent(copy.deepcopy(ref), taps=taps)


def _hidden(out):
    return out[1] if isinstance(out[1], tuple) else (out[1],)


def _close(a, b, dtype):
    tol = TOL[dtype]
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("taps", ["gates", "projections"])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_forward_and_gradients_equal_torch(cls, taps, bidirectional, packed, dtype):
    ref, ours = _pair(cls, dtype, taps, num_layers=2, batch_first=True,
                      bidirectional=bidirectional)
    assert isinstance(ours, {nn.LSTM: LSTM, nn.GRU: GRU}[cls])
    x = torch.randn(5, 6, 5, dtype=dtype)
    d = 4 if bidirectional else 2
    h0 = torch.randn(d, 5, 7, dtype=dtype)
    hx = (h0, torch.randn_like(h0)) if cls is nn.LSTM else h0
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        inp = pack_padded_sequence(xi, LENGTHS, batch_first=True, enforce_sorted=False) \
            if packed else xi
        out = module(inp, hx)
        y = pad_packed_sequence(out[0], batch_first=True)[0] if packed else out[0]
        states = _hidden(out)
        # weights that differ per element, so a permuted or misplaced value changes the sum
        loss = (y * torch.linspace(-1, 2, y.numel(), dtype=dtype).view_as(y)).sum()
        loss = loss + sum((s * (i + 2)).sum() for i, s in enumerate(states))
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        results.append((y, states, xi.grad, grads))
    (y0, s0, gx0, g0), (y1, s1, gx1, g1) = results
    _close(y0, y1, dtype)
    for a, b in zip(s0, s1):
        _close(a, b, dtype)
    _close(gx0, gx1, dtype)
    assert g0.keys() == g1.keys()
    for name in g0:
        _close(g0[name], g1[name], dtype)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_time_major_and_unbatched_inputs_equal_torch(cls):
    ref, ours = _pair(cls, torch.float64)
    x = torch.randn(6, 3, 5, dtype=torch.float64)  # (T, N, F)
    for inp in (x, x[:, 0]):  # batched and unbatched
        a, b = ref(inp), ours(inp)
        _close(a[0], b[0], torch.float64)
        for s, t in zip(_hidden(a), _hidden(b)):
            _close(s, t, torch.float64)


def test_state_dict_moves_both_ways_and_names_match_torch():
    ref = nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    ours = LSTM(5, 7, num_layers=2, bidirectional=True)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == \
        [(n, p.shape) for n, p in ours.named_parameters()]
    ref.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())


def _kl(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """0.5 * sum_c (mu^2 + var - log(var + eps) - 1), population variance per column."""
    mu = rows.mean(0)
    var = ((rows - mu) ** 2).mean(0)
    return 0.5 * (mu ** 2 + var - torch.log(var + eps) - 1).sum()


def _lstm_gates_reference(module: nn.LSTM, x: torch.Tensor,
                          lengths) -> dict[str, torch.Tensor]:
    """Gate pre-activations and the two bias-free projections of every valid step, one
    sequence at a time (float64 loop)."""
    w_ih, w_hh, b_ih, b_hh = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                              module.bias_hh_l0)
    rows, inputs, hiddens = [], [], []
    for n, length in enumerate(lengths.tolist()):
        h = torch.zeros(module.hidden_size, dtype=x.dtype)
        c = torch.zeros_like(h)
        for t in range(length):
            a = w_ih @ x[n, t] + b_ih + w_hh @ h + b_hh
            rows.append(a)
            inputs.append(w_ih @ x[n, t])
            hiddens.append(w_hh @ h)
            i, f, g, o = a.chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
    return {"gates_l0": torch.stack(rows), "input_proj_l0": torch.stack(inputs),
            "hidden_proj_l0": torch.stack(hiddens)}


@pytest.mark.parametrize("taps", ["gates", "projections"])
def test_loss_is_the_kl_of_valid_rows_and_ignores_huge_padding(taps):
    ref = nn.LSTM(5, 7, batch_first=True).double()
    ours = convert_recurrent(copy.deepcopy(ref), taps=taps).train()
    std = StandardizationLoss(ours, layers=PreActivation)  # a bare LSTM has no logit layer
    names = ["gates_l0"] if taps == "gates" else ["input_proj_l0", "hidden_proj_l0"]
    assert [n for n, _ in std.layers] == names
    x = torch.randn(5, 6, 5, dtype=torch.float64)
    pad = torch.arange(6)[None, :] >= LENGTHS[:, None]
    values = []
    for fill in (0.0, 1e6):
        xp = x.masked_fill(pad[..., None], fill)
        ours(pack_padded_sequence(xp, LENGTHS, batch_first=True, enforce_sorted=False))
        values.append(std())
    reference = _lstm_gates_reference(ref, x, LENGTHS)
    expected = sum(_kl(reference[n], std.eps) for n in names)
    assert torch.allclose(values[0], expected, rtol=1e-10, atol=0)
    assert torch.equal(values[0], values[1])


def test_taps_see_batch_and_time_stacked_per_layer_and_direction():
    model = LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True)
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, PreActivation):
            m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, out))
    model(pack_padded_sequence(torch.randn(5, 6, 5), LENGTHS, batch_first=True,
                               enforce_sorted=False))
    assert sorted(seen) == ["gates_l0", "gates_l0_reverse", "gates_l1", "gates_l1_reverse"]
    assert all(v.shape == (int(LENGTHS.sum()), 28) for v in seen.values())


def test_layer_norm_lstm_equals_a_per_step_loop():
    """Ba et al. 2016 section 3.1: LN of the summed inputs a_t at each step, gain and bias."""
    model = LSTM(5, 7, batch_first=True, gate_norm=nn.LayerNorm).double()
    ln = model.gate_norm_l0
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    out, (h_n, c_n) = model(x)
    h = torch.zeros(3, 7, dtype=torch.float64)
    c = torch.zeros_like(h)
    for t in range(4):
        a = x[:, t] @ model.weight_ih_l0.T + model.bias_ih_l0 + h @ model.weight_hh_l0.T \
            + model.bias_hh_l0
        mu, var = a.mean(1, keepdim=True), a.var(1, unbiased=False, keepdim=True)
        a = ln.weight * (a - mu) / torch.sqrt(var + ln.eps) + ln.bias
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        assert torch.allclose(out[:, t], h, atol=1e-12)
    assert torch.allclose(c_n[0], c, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm_classifier", "gru_classifier", "packed_lstm_classifier"])
def test_zoo_recurrent_models_train_with_the_loss_after_conversion(name):
    entry = ZOO[name]
    original = entry.build().train()
    model = convert_recurrent(copy.deepcopy(original))
    x, y = make_batch(entry, 8, seed=3)
    assert torch.allclose(model(x), original(x), atol=1e-5)
    std = StandardizationLoss(model, weight=0.1)
    assert [n for n, _ in std.layers] == ["rnn.gates_l0", "rnn.gates_l1"]  # not the logits
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    values = []
    for _ in range(4):
        opt.zero_grad()
        out = model(x)
        aux = std()  # read once per forward
        loss = F.cross_entropy(out, y) + aux
        assert torch.isfinite(loss)
        values.append(float(aux.detach()))
        loss.backward()
        opt.step()
    assert values[-1] < values[0]  # the auxiliary term is being optimized
    std.remove()
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    model.eval()
    with torch.no_grad():
        for other in (copied.eval(), loaded.eval()):
            assert torch.equal(other(x), model(x))


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="proj_size"):
        convert_recurrent(nn.LSTM(5, 7, proj_size=3))
    with pytest.raises(ValueError, match="input_size=5"):
        LSTM(5, 7)(torch.randn(6, 2, 4))
    with pytest.raises(ValueError, match="h_0 of shape"):
        GRU(5, 7)(torch.randn(6, 2, 5), torch.zeros(1, 3, 7))
    with pytest.raises(ValueError, match="gate_norm"):
        GRU(5, 7, gate_norm=nn.LayerNorm)


def test_convert_returns_the_model_and_keeps_training_mode():
    lstm = nn.LSTM(5, 7).eval()
    converted = convert_recurrent(lstm)
    assert isinstance(converted, LSTM) and not converted.training
    seq = nn.Sequential(nn.GRU(5, 7))
    assert convert_recurrent(seq) is seq and isinstance(seq[0], GRU)


def test_unknown_taps_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown taps 'hidden'; known: gates, projections"):
        LSTM(5, 7, taps="hidden")

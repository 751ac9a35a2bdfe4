"""Weight reparametrizations (weight norm, bounded weight norm, scaled WS) and AGC."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normlab.layers.weight_param import (
    RELU_GAIN, BoundedWeightNorm, apply_bounded_weight_norm, apply_scaled_weight_standardization,
    apply_weight_norm, remove_weight_param, unit_norm,
)
from normlab.lab.models import build_model
from normlab.methods import create_method
from normlab.optim import AGC, adaptive_grad_clip_

WEIGHT_METHODS = ["weight_norm", "bounded_weight_norm", "bounded_weight_norm_linf",
                  "scaled_weight_standardization"]
ALL_METHODS = WEIGHT_METHODS + ["agc"]


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(model: nn.Module, method, steps: int, lr: float = 0.1) -> list[float]:
    x, y = _batch()
    opt = method.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), model)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- weight norm

@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Conv2d(3, 4, 3)],
                         ids=["linear", "conv2d"])
def test_weight_norm_keeps_initial_function(make):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(5, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 6, 6)
    before, w0 = layer(x), layer.weight.detach().clone()
    apply_weight_norm(layer)
    torch.testing.assert_close(layer(x), before)
    g = layer.parametrizations.weight.original0
    expected = [math.sqrt(sum(v * v for v in w0[i].flatten().tolist())) for i in range(4)]
    torch.testing.assert_close(g.detach(), torch.tensor(expected))


def test_weight_norm_matches_float64_loop():
    torch.manual_seed(0)
    layer = nn.Conv1d(3, 4, 2).double()
    apply_weight_norm(layer)
    g = torch.randn(4, dtype=torch.float64)
    v = torch.randn(4, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.parametrizations.weight.original0.copy_(g)
        layer.parametrizations.weight.original1.copy_(v)
    expected = torch.empty_like(v)
    for i in range(4):
        norm = math.sqrt(sum(t * t for t in v[i].flatten().tolist()))
        for j in range(3):
            for k in range(2):
                expected[i, j, k] = g[i].item() * v[i, j, k].item() / norm
    torch.testing.assert_close(layer.weight, expected, rtol=1e-12, atol=1e-12)


def test_weight_norm_gradients_match_paper_closed_form():
    """Salimans & Kingma eq. (3): grad_g = grad_w . v/||v||,
    grad_v = g/||v|| grad_w - g grad_g / ||v||^2 v."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    apply_weight_norm(layer)
    with torch.no_grad():
        layer.parametrizations.weight.original0.mul_(torch.tensor([0.5, -2.0, 3.0]).double())
    x, r = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    (layer(x) * r).square().sum().backward()
    g = layer.parametrizations.weight.original0.detach()
    v = layer.parametrizations.weight.original1.detach()
    # grad of the loss w.r.t. a plain weight w = layer.weight, from an unparametrized layer
    w = layer.weight.detach().clone().requires_grad_(True)
    ((x @ w.T + layer.bias.detach()) * r).square().sum().backward()
    grad_w = w.grad
    vnorm = v.norm(dim=1)
    grad_g = (grad_w * v).sum(1) / vnorm
    grad_v = (g / vnorm)[:, None] * grad_w - (g * grad_g / vnorm**2)[:, None] * v
    torch.testing.assert_close(layer.parametrizations.weight.original0.grad, grad_g)
    torch.testing.assert_close(layer.parametrizations.weight.original1.grad, grad_v)
    # the gradient of v is orthogonal to v (the paper's projection property)
    torch.testing.assert_close((grad_v * v).sum(1), torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------- bounded weight norm

@pytest.mark.parametrize("norm,p", [("l2", 2.0), ("linf", math.inf)])
def test_bounded_weight_norm_keeps_unit_norms(norm, p):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    layers = [model[0], model[3]]
    initial = [layer.weight.detach().abs().flatten(1).amax(1) if p == math.inf
               else layer.weight.detach().flatten(1).norm(dim=1) for layer in layers]
    w0 = [layer.weight.detach().clone() for layer in layers]
    for layer in layers:
        apply_bounded_weight_norm(layer, norm)
    x, y = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for layer, n0, w in zip(layers, initial, w0):
        assert not torch.allclose(layer.weight, w, atol=1e-4)  # the weights did train
        torch.testing.assert_close(unit_norm(layer.weight.detach(), p), n0, rtol=1e-5, atol=0)
        assert not any(t.requires_grad for t in layer.parametrizations.weight[0].buffers())


def test_bounded_weight_norm_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        BoundedWeightNorm(3, norm="l3")
    with pytest.raises(ValueError, match="norm"):
        create_method("bounded_weight_norm", norm="l1")


# ---------------------------------------------------------------- scaled weight standardization

def test_scaled_ws_matches_naive_loop():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 5, 3).double()
    with torch.no_grad():
        layer.weight.add_(torch.randn(5, 1, 1, 1, dtype=torch.float64))  # nonzero unit means
    w = layer.weight.detach().clone()
    apply_scaled_weight_standardization(layer)
    gain = torch.tensor([1.0, 0.5, 2.0, -1.0, RELU_GAIN], dtype=torch.float64)
    with torch.no_grad():
        layer.parametrizations.weight[0].gain.copy_(gain)
    fan_in = 3 * 3 * 3
    out = layer.weight.detach()
    for i in range(5):
        vals = w[i].flatten().tolist()
        mean = sum(vals) / fan_in
        std = math.sqrt(sum((t - mean) ** 2 for t in vals) / fan_in)
        expected = torch.tensor([gain[i].item() * (t - mean) / (std * math.sqrt(fan_in))
                                 for t in vals], dtype=torch.float64)
        torch.testing.assert_close(out[i].flatten(), expected, rtol=1e-10, atol=1e-12)
        assert abs(out[i].mean().item()) < 1e-12
        unit_std = out[i].flatten().square().mean().sqrt().item()
        assert unit_std == pytest.approx(abs(gain[i].item()) / math.sqrt(fan_in), rel=1e-10)


def test_scaled_ws_constant_unit_stays_finite():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.fill_(0.3)
    apply_scaled_weight_standardization(layer)
    assert torch.equal(layer.weight, torch.zeros(2, 4))


# ---------------------------------------------------------------- AGC

def test_agc_matches_hand_computation():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))  # unit norms 5 and 1
        layer.bias.zero_()                                          # norm 0 -> eps
    layer.weight.grad = torch.tensor([[0.3, 0.4], [0.03, 0.0]])    # ratios 0.1 and 0.03
    layer.bias.grad = torch.tensor([3e-4, 4e-4])                    # ratio 5e-4 / 1e-3 = 0.5
    adaptive_grad_clip_(layer.parameters(), clipping=0.05, eps=1e-3)
    # unit 0: 0.1 > 0.05 -> scaled by 0.05 * 5 / 0.5 = 0.5; unit 1: 0.03 <= 0.05 -> untouched
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.15, 0.2], [0.03, 0.0]]))
    # bias (one unit): max norm 0.05 * 1e-3 = 5e-5 -> scaled by 5e-5 / 5e-4 = 0.1
    torch.testing.assert_close(layer.bias.grad, torch.tensor([3e-5, 4e-5]))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))  # no dead units


def _set_big_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)


def test_agc_exempts_final_layer():
    model = _mlp()
    _set_big_grads(model)
    AGC(torch.optim.SGD(model.parameters(), lr=0.1), model, clipping=0.01).clip_()
    assert torch.equal(model[2].weight.grad, torch.full((2, 3), 10.0))
    assert torch.equal(model[2].bias.grad, torch.full((2,), 10.0))
    assert model[0].weight.grad.abs().max() < 1.0
    _set_big_grads(model)
    AGC(torch.optim.SGD(model.parameters(), lr=0.1), model, clipping=0.01, exclude=[]).clip_()
    assert model[2].weight.grad.abs().max() < 1.0
    with pytest.raises(ValueError, match="unknown submodule"):
        AGC(torch.optim.SGD(model.parameters(), lr=0.1), model, exclude=["nope"])


def test_agc_step_equals_clip_then_inner_step():
    torch.manual_seed(1)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    a, b = _mlp(), _mlp()
    opt_a = AGC(torch.optim.SGD(a.parameters(), lr=0.5, momentum=0.9), a, clipping=1e-3)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.9)
    clipped = 0
    for _ in range(3):
        for model in (a, b):
            nn.functional.cross_entropy(model(x), y).backward()
        unclipped = b[0].weight.grad.clone()
        adaptive_grad_clip_(list(b[0].parameters()), clipping=1e-3, eps=1e-3)
        clipped += not torch.equal(unclipped, b[0].weight.grad)
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb)
    assert clipped > 0  # the clipping did act
    assert all(p.grad is None for p in a.parameters())


def test_agc_state_dict_round_trip_and_scheduler():
    torch.manual_seed(1)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    a = _mlp()
    opt = AGC(torch.optim.SGD(a.parameters(), lr=0.5, momentum=0.9), a, clipping=0.02)
    nn.functional.cross_entropy(a(x), y).backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    assert len(state["state"]) == 4 and "momentum_buffer" in state["state"][0]
    b = copy.deepcopy(a)
    opt_b = AGC(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.0), b, clipping=0.02)
    opt_b.load_state_dict(state)
    assert opt_b.param_groups[0]["lr"] == 0.5
    for model, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step()
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_agc_rejects_bad_arguments():
    model = _mlp()
    with pytest.raises(ValueError, match="clipping"):
        AGC(torch.optim.SGD(model.parameters(), lr=0.1), model, clipping=0.0)
    with pytest.raises(TypeError, match="optimizer"):
        AGC(object(), model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exclude"):
        AGC(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(), exclude=["0"])


# ---------------------------------------------------------------- methods

@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_for_inference_bakes_weights(name):
    method = create_method(name)
    torch.manual_seed(0)
    model = build_model("cnn", method, (1, 28, 28), 10)
    _train(model, method, 1)  # g / gain / v move away from their initial values
    model.eval()
    x, _ = _batch(4)
    deployed = method.for_inference(model)
    assert not any(parametrize.is_parametrized(m) for m in deployed.modules())
    assert any(parametrize.is_parametrized(m) for m in model.modules())  # original untouched
    torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)
    assert remove_weight_param(model) is model
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_methods_build_and_train(name, model_name):
    method = create_method(name)
    torch.manual_seed(0)
    model = build_model(model_name, method, (1, 28, 28), 10)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    flags = [parametrize.is_parametrized(m, "weight") for m in layers]
    expected = {"agc": [False] * len(layers),
                "scaled_weight_standardization": [True] * (len(layers) - 1) + [False]}
    assert flags == expected.get(name, [True] * len(layers))
    losses = _train(model, method, 3)
    assert all(math.isfinite(v) for v in losses)


def test_weight_param_twice_is_an_error():
    layer = apply_weight_norm(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="already parametrized"):
        apply_weight_norm(layer)
    with pytest.raises(TypeError, match="expected one of"):
        apply_weight_norm(nn.ReLU())

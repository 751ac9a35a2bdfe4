"""Weight reparametrizations, AGC and the baseline against references written from the papers.

Weight norm (Salimans & Kingma 2016, arXiv:1602.07868), bounded weight norm (Hoffer, Banner,
Golan & Soudry 2018, arXiv:1803.01814, section 5), scaled weight standardization with AGC
(Brock, De & Smith 2021, arXiv:2101.08692; Brock, De, Smith & Simonyan 2021,
arXiv:2102.06171) and AGC alone, each applied by its registered method to a small conv net:
the effective weights against a per-unit float64 loop, the gradients of the raw parameters
against autograd through that loop, and one optimizer step against a hand-written unit-wise
clip. (BNP and the standardization loss have theirs in ``test_bnp.py`` and
``test_standardization.py``.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.methods import create_method

D = torch.float64


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double()


def _input() -> torch.Tensor:
    return torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=D)


def _forward(x, conv_w, conv_b, lin_w, lin_b):
    return F.linear(torch.relu(F.conv2d(x, conv_w, conv_b)).flatten(1), lin_w, lin_b)


def _pnorm(u, p):
    return u.abs().max() if p == math.inf else torch.sqrt((u * u).sum())


def _check_reparam(model, raw, effective):
    """``raw``: name -> the parameter tensors of each layer's parametrization; ``effective``:
    a function of copies of them giving both layers' weights. Checks the weights and the
    gradients of every raw tensor for one random loss."""
    x = _input()
    up = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=D)
    (model(x) * up).sum().backward()
    copies = {n: [t.detach().clone().requires_grad_(True) for t in ts] for n, ts in raw.items()}
    conv_w, lin_w = effective(copies)
    torch.testing.assert_close(model[0].weight, conv_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[3].weight, lin_w, rtol=1e-12, atol=1e-12)
    out = _forward(x, conv_w, model[0].bias.detach(), lin_w, model[3].bias.detach())
    (out * up).sum().backward()
    for name, tensors in raw.items():
        for got, ref in zip(tensors, copies[name]):
            torch.testing.assert_close(got.grad, ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_weight_norm_method_matches_paper():
    model = _net()
    create_method("weight_norm").prepare(model)
    raw = {i: [model[i].parametrizations.weight.original0,
               model[i].parametrizations.weight.original1] for i in (0, 3)}

    def effective(c):
        return [torch.stack([g[j] * v[j] / _pnorm(v[j].reshape(-1), 2)
                             for j in range(v.shape[0])]) for g, v in (c[0], c[3])]

    _check_reparam(model, raw, effective)


@pytest.mark.parametrize("name, p", [("bounded_weight_norm", 2.0),
                                     ("bounded_weight_norm_linf", math.inf)])
def test_bounded_weight_norm_method_matches_paper(name, p):
    model = _net()
    rho = {i: torch.stack([_pnorm(u.reshape(-1), p) for u in model[i].weight.detach()])
           for i in (0, 3)}  # each unit's norm at initialization, fixed from then on
    create_method(name).prepare(model)
    with torch.no_grad():  # move v off its initial value: the bound must still hold
        for i in (0, 3):
            model[i].parametrizations.weight.original.mul_(
                1 + torch.rand(model[i].weight.shape, dtype=D))
    raw = {i: [model[i].parametrizations.weight.original] for i in (0, 3)}

    def effective(c):
        return [torch.stack([rho[i][j] * c[i][0][j] / _pnorm(c[i][0][j].reshape(-1), p)
                             for j in range(rho[i].numel())]) for i in (0, 3)]

    _check_reparam(model, raw, effective)


def test_scaled_weight_standardization_method_matches_paper():
    # NFNets: W_hat = gain (W - mean) / (std sqrt(fan_in)) on every layer but the classifier.
    model = _net()
    method = create_method("scaled_weight_standardization")
    method.prepare(model)
    assert not hasattr(model[3], "parametrizations")  # the classifier stays plain
    ws = model[0].parametrizations.weight
    with torch.no_grad():
        ws[0].gain.copy_(torch.tensor([1.0, 0.5, 2.0, -1.5], dtype=D))
    raw = {0: [ws.original, ws[0].gain], 3: [model[3].weight]}

    def standardize(u, gain):
        mean = u.sum() / u.numel()
        var = ((u - mean) ** 2).sum() / u.numel()
        return gain * (u - mean) / torch.sqrt(torch.clamp(var * u.numel(), min=method.eps))

    def effective(c):
        w, gain = c[0]
        conv = torch.stack([standardize(w[j].reshape(-1), gain[j]).reshape(w.shape[1:])
                            for j in range(w.shape[0])])
        return conv, c[3][0]

    _check_reparam(model, raw, effective)


def ref_agc_step(params, grads, lr, clipping, eps, clipped):
    """One SGD step after the paper's unit-wise clip (section 4.1) of the listed params."""
    out = []
    for p, g, clip in zip(params, grads, clipped):
        g = g.clone()
        if clip:
            units = [g] if p.dim() <= 1 else list(range(p.shape[0]))
            for u in units:
                w_u, g_u = (p, g) if p.dim() <= 1 else (p[u], g[u])
                w_norm = max(math.sqrt((w_u * w_u).sum().item()), eps)
                g_norm = math.sqrt((g_u * g_u).sum().item())
                if g_norm / w_norm > clipping:
                    g_u.mul_(clipping * w_norm / g_norm)
        out.append(p - lr * g)
    return out


@pytest.mark.parametrize("name", ["agc", "scaled_weight_standardization"])
def test_agc_step_matches_unitwise_clip(name):
    model = _net()
    method = create_method(name, clipping=0.05)
    method.prepare(model)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model[0].bias.zero_()  # a zero-norm unit: clipped against eps
    grads = [torch.randn(p.shape, generator=g, dtype=D) * (0.01 + torch.rand(
        (p.shape[0],) + (1,) * (p.dim() - 1), generator=g, dtype=D)) for p in params]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    classifier = {id(model[3].weight), id(model[3].bias)}  # not clipped (the paper)
    eps = method.agc_eps if name != "agc" else method.eps
    expected = ref_agc_step([p.detach() for p in params], grads, 0.1, 0.05, eps,
                            [id(p) not in classifier for p in params])
    opt = method.wrap_optimizer(torch.optim.SGD(params, lr=0.1), model)
    opt.step()
    clipped_any = False
    for p, e, gr in zip(params, expected, grads):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
        clipped_any |= not torch.allclose(p.grad, gr)
    assert clipped_any  # the case exercises the clip


def test_none_is_the_bare_network():
    method = create_method("none")
    act = nn.ReLU()
    assert method.block(4, 2, act) is act and method.norm(4, 2) is None
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert method.prepare(model) is model and method.wrap_optimizer(opt, model) is opt
    assert method.auxiliary_loss(model) is None and method.for_inference(model) is model

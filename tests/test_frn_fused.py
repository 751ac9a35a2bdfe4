"""Fused FRN+TLU autograd Function vs the composite reference path.

Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch Dependence in the
Training of Deep Neural Networks", 2020, arXiv:1911.09737. The fused path
(:func:`normlab.functional.frn.filter_response_norm_tlu`) must reproduce the composite
``tlu(filter_response_norm(...))`` forward and every gradient (x, gamma, beta, tau, and a
learnable eps through ``eps + |eps_learned|``) in float64, pass gradcheck, and keep
channels_last and bf16 autocast working.
"""

import pytest
import torch

from normlab.functional.frn import filter_response_norm_tlu, frn_fusable
from normlab.layers.frn import FilterResponseNorm

DT = torch.float64


def _params(c, seed, with_tau=True, eps_tensor=False):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=g, dtype=DT) * 2 - 0.5).requires_grad_()  # some gamma < 0
    b = (torch.randn(c, generator=g, dtype=DT) * 0.5).requires_grad_()
    tau = (torch.randn(c, generator=g, dtype=DT) * 0.5).requires_grad_() if with_tau else None
    eps_l = (torch.randn(c, generator=g, dtype=DT) * 0.3).requires_grad_() if eps_tensor else None
    return w, b, tau, eps_l


def _run(x, w, b, tau, eps_l, fused, upstream):
    x = x.detach().clone().requires_grad_()
    leaves = [p for p in (x, w, b, tau, eps_l) if p is not None]
    for p in leaves:
        p.grad = None
    eps = 1e-6 + eps_l.abs() if eps_l is not None else 1e-3
    y = filter_response_norm_tlu(x, w, b, tau, eps, fused=fused)
    (y * upstream).sum().backward()
    return y.detach(), [p.grad.clone() for p in leaves]


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (6, 5), (2, 3, 7)])
@pytest.mark.parametrize("with_tau", [True, False])
@pytest.mark.parametrize("eps_tensor", [True, False])
def test_fused_matches_composite_float64(shape, with_tau, eps_tensor):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=DT) * 2
    w, b, tau, eps_l = _params(shape[1], 1, with_tau, eps_tensor)
    up = torch.randn(shape, dtype=DT)
    y_f, g_f = _run(x, w, b, tau, eps_l, True, up)
    y_c, g_c = _run(x, w, b, tau, eps_l, False, up)
    if with_tau:  # the threshold must be active on some elements and not on others
        t = tau.detach().view([1, -1] + [1] * (len(shape) - 2))
        assert 0 < (y_c == t).sum() < y_c.numel()
    torch.testing.assert_close(y_f, y_c, rtol=0, atol=1e-10)
    for gf, gc in zip(g_f, g_c):
        assert gf.abs().max() > 0
        torch.testing.assert_close(gf, gc, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (4, 3)])
def test_gradcheck_fused(shape):
    torch.manual_seed(1)
    x = (torch.randn(shape, dtype=DT) * 1.5).requires_grad_()
    w, b, tau, eps_l = _params(shape[1], 2, True, True)
    eps = (torch.rand(shape[1], dtype=DT) + 0.1).requires_grad_()  # positive (C,) eps
    f = lambda *a: filter_response_norm_tlu(*a, fused=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b, tau, eps))
    assert torch.autograd.gradcheck(lambda *a: f(*a[:3], None, a[3]), (x, w, b, eps))


def test_channels_last_input_matches_contiguous():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 4, 3, dtype=DT)
    w, b, tau, _ = _params(5, 3)
    up = torch.randn_like(x)
    y_c, g_c = _run(x, w, b, tau, None, True, up)
    xl = x.to(memory_format=torch.channels_last)
    y_l, g_l = _run(xl, w, b, tau, None, True, up.to(memory_format=torch.channels_last))
    y_r, g_r = _run(x, w, b, tau, None, False, up)
    torch.testing.assert_close(y_l, y_r, rtol=0, atol=1e-10)
    for gl, gr, gc in zip(g_l, g_r, g_c):
        torch.testing.assert_close(gl, gr, rtol=0, atol=1e-10)
        torch.testing.assert_close(gc, gr, rtol=0, atol=1e-10)


def test_ties_send_gradient_to_tau_like_relu():
    # x = 0 with beta = tau = 0 puts z exactly on the threshold: the documented choice gives
    # the gradient to tau, so with tau = 0 the x/beta gradients equal relu's.
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    x[:, :, 0, :] = 0.0
    layer = FilterResponseNorm(3, dtype=DT)
    xr = x.clone().requires_grad_()
    layer(xr).sum().backward()
    clamped = (layer.weight.detach().view(1, 3, 1, 1) * x <= 0)  # z <= 0 incl. the ties
    torch.testing.assert_close(layer.tau.grad, clamped.sum(dim=(0, 2, 3)).to(DT))
    torch.testing.assert_close(layer.bias.grad, (~clamped).sum(dim=(0, 2, 3)).to(DT))
    xr2 = x.clone().requires_grad_()
    ref = torch.relu(filter_response_norm_tlu(xr2, layer.weight, layer.bias, None, 1e-6))
    ref.sum().backward()
    torch.testing.assert_close(xr.grad, xr2.grad, rtol=0, atol=1e-12)


def test_layer_uses_fused_path_and_fallbacks():
    x = torch.randn(2, 3, 4, 4)
    layer = FilterResponseNorm(3)
    y = layer(x.requires_grad_())
    assert type(y.grad_fn).__name__.startswith("_FRNTLUFunction")
    assert frn_fusable(x, layer.weight) and not frn_fusable(x.half(), layer.weight.half())
    assert not frn_fusable(x.double(), layer.weight)  # mixed dtypes -> composite
    with pytest.raises(ValueError, match="fused FRN"):
        filter_response_norm_tlu(x.half(), layer.weight.half(), layer.bias.half(), fused=True)
    with pytest.raises(ValueError, match="weight must have shape"):
        filter_response_norm_tlu(x, torch.ones(4), layer.bias, fused=True)
    with pytest.raises(ValueError, match="eps must be positive"):
        filter_response_norm_tlu(x, layer.weight, layer.bias, eps=0.0, fused=True)


def test_bf16_autocast_falls_back_and_trains():
    torch.manual_seed(3)
    layer = FilterResponseNorm(4, learnable_eps=True)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv_out = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1))
        y = layer(conv_out)
    assert not type(y.grad_fn).__name__.startswith("_FRNTLUFunction")
    y.float().sum().backward()
    for p in (x, layer.weight, layer.bias, layer.tau, layer.eps_learned):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    ref = FilterResponseNorm(4, learnable_eps=True)(conv_out.detach().float())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)

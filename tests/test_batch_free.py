"""Tests of the batch-independent layers (GN, LN, IN, FRN, Proxy Norm) and the IC layer.

References are written independently: per-sample numpy float64 loops, the closed-form
moments of a rectified Gaussian, Gauss-Hermite quadrature in numpy, and paper properties
(batch independence, TLU semantics, BN-then-dropout order).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch import nn

from normlab.functional.frn import filter_response_norm, tlu
from normlab.functional.proxy_norm import gaussian_grid, proxy_moments
from normlab.lab.models import build_model
from normlab.layers.frn import FilterResponseNorm
from normlab.layers.group_norms import GroupNorm, GroupNorm1, InstanceNorm, default_num_groups
from normlab.layers.ic_layer import ICLayer
from normlab.layers.proxy_norm import ProxyNormActivation
from normlab.methods import METHODS, create_method
from normlab.methods.batch_free import ICLayerMethod, ProxyNormMethod

MINE = ["group_norm", "layer_norm", "instance_norm", "frn", "proxy_norm", "ic_layer"]
BATCH_FREE = ["group_norm", "layer_norm", "instance_norm", "frn", "proxy_norm"]
SHAPES = [(3, 8), (3, 8, 4, 5)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(layer: nn.Module) -> nn.Module:
    """Give every parameter a non-trivial value so affine/threshold bugs show."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "weight" in name:
                p.copy_(torch.rand_like(p) + 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.5)
    return layer


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ---------------------------------------------------------------- naive float64 references

def ref_group_norm(x, groups, gamma, beta, eps):
    n, c = x.shape[:2]
    out = np.empty_like(x)
    size = c // groups
    for i in range(n):
        for g in range(groups):
            block = x[i, g * size:(g + 1) * size]
            mu = block.mean()
            var = ((block - mu) ** 2).mean()
            for ch in range(g * size, (g + 1) * size):
                out[i, ch] = gamma[ch] * (x[i, ch] - mu) / math.sqrt(var + eps) + beta[ch]
    return out


def ref_frn(x, gamma, beta, tau, eps):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for ch in range(x.shape[1]):
            v = x[i, ch]
            nu2 = (np.asarray(v) ** 2).mean()
            y = gamma[ch] * v / math.sqrt(nu2 + eps[ch]) + beta[ch]
            out[i, ch] = np.maximum(y, tau[ch]) if tau is not None else y
    return out


def relu_gauss_moments(gamma, beta):
    """Mean and variance of relu(gamma * Z + beta), Z ~ N(0,1): the rectified Gaussian."""
    s = abs(gamma)
    a = beta / s
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mean = beta * cdf + s * pdf
    second = (beta ** 2 + s ** 2) * cdf + beta * s * pdf
    return mean, second - mean ** 2, cdf


# ---------------------------------------------------------------- GN / LN / IN

@pytest.mark.parametrize("shape, kind", [
    (shape, kind) for shape in SHAPES for kind in ("group2", "group4", "layer", "instance")
    if not (kind == "instance" and len(shape) == 2)  # raises: tested below
])
def test_group_family_matches_naive_reference(shape, kind):
    c = shape[1]
    layer = {"group2": lambda: GroupNorm(c, 2), "group4": lambda: GroupNorm(c, 4),
             "layer": lambda: GroupNorm1(c), "instance": lambda: InstanceNorm(c)}[kind]()
    groups = {"group2": 2, "group4": 4, "layer": 1, "instance": c}[kind]
    _randomize(layer)
    x = torch.randn(shape) * 2 + 0.7
    expected = ref_group_norm(_np(x), groups, _np(layer.weight), _np(layer.bias), layer.eps)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-5)
    layer.eval()  # same computation in eval: no running statistics
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c, spatial_dims, expected", [
    (32, 2, 8), (16, 2, 4), (8, 2, 2), (3, 2, 1), (64, 2, 16), (256, 2, 32), (96, 2, 24),
    (100, 0, 5), (32, 0, 2), (10, 0, 1),
])
def test_default_num_groups_documented_values(c, spatial_dims, expected):
    assert default_num_groups(c, spatial_dims) == expected
    assert GroupNorm(c).num_groups == default_num_groups(c, 2)


def test_instance_norm_method_falls_back_to_layer_norm_on_features():
    method = create_method("instance_norm")
    assert isinstance(method.norm(16, 0), GroupNorm1)
    assert isinstance(method.norm(16, 2), InstanceNorm)
    with pytest.raises(ValueError, match="more than one spatial"):
        InstanceNorm(8)(torch.randn(3, 8))
    with pytest.raises(ValueError, match="more than one spatial"):
        InstanceNorm(8)(torch.randn(3, 8, 1, 1))


# ---------------------------------------------------------------- FRN

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("learnable", [False, True])
def test_frn_matches_naive_reference(shape, learnable):
    c = shape[1]
    layer = _randomize(FilterResponseNorm(c, learnable_eps=learnable))
    if learnable:  # negative on purpose: the layer must use |eps_l|
        with torch.no_grad():
            layer.eps_learned.copy_(-torch.rand(c) * 0.5)
        eps = 1e-6 + np.abs(_np(layer.eps_learned))
    else:
        eps = np.full(c, 1e-6)
    x = torch.randn(shape)
    expected = ref_frn(_np(x), _np(layer.weight), _np(layer.bias), _np(layer.tau), eps)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-5)


def test_tlu_semantics():
    x = torch.randn(4, 3, 5, 5)
    tau = torch.tensor([-0.5, 0.0, 0.8], requires_grad=True)
    out = tlu(x, tau)
    t = tau.detach().view(1, 3, 1, 1)
    assert torch.all(out >= t)
    above = x > t
    assert torch.equal(out[above], x[above])  # identity above the threshold
    assert torch.all(out[~above] == t.expand_as(x)[~above])  # clamped to tau below it
    out.sum().backward()
    # d out / d tau_c = number of clamped elements of channel c
    np.testing.assert_array_equal(tau.grad.numpy(), (~above).sum(dim=(0, 2, 3)).numpy())
    # FRN layer: TLU replaces ReLU (tau = 0 gives exactly relu of the FRN output)
    layer = FilterResponseNorm(3)
    plain = filter_response_norm(x, layer.weight, layer.bias, 1e-6)
    torch.testing.assert_close(layer(x), torch.relu(plain))


def test_frn_learnable_eps_positive_and_trained():
    layer = FilterResponseNorm(4, learnable_eps=True)
    with torch.no_grad():
        layer.eps_learned.fill_(-0.25)
    assert torch.all(layer.effective_eps() > 0)
    x = torch.zeros(2, 4)  # nu2 = 0: only eps keeps the division finite
    x[0] = torch.tensor([0.5, -0.1, 0.0, 2.0])
    out = layer(x)
    expected = ref_frn(_np(x), np.ones(4), np.zeros(4), np.zeros(4), np.full(4, 0.25 + 1e-6))
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert layer.eps_learned.grad is not None and layer.eps_learned.grad.abs().sum() > 0
    # the method turns learned eps on for (N, C) features only (the paper's 1x1 case)
    method = create_method("frn")
    assert method.norm(8, 0).eps_learned is not None
    assert method.norm(8, 2).eps_learned is None
    assert create_method("frn", learnable_eps=True).norm(8, 2).eps_learned is not None


def test_frn_block_replaces_activation():
    block = create_method("frn").block(8, 2, nn.Sigmoid())
    assert isinstance(block, FilterResponseNorm)
    assert not any(isinstance(m, (nn.Sigmoid, nn.ReLU)) for m in block.modules())


# ---------------------------------------------------------------- Proxy Norm

@pytest.mark.parametrize("gamma, beta", [(1.0, 0.0), (0.5, 0.3), (2.0, -1.0), (1.0, 2.0),
                                         (0.3, -0.2), (-1.5, 0.4), (1.0, -2.5)])
def test_proxy_moments_relu_closed_form(gamma, beta):
    nodes, weights = gaussian_grid(dtype=torch.float64)
    g = torch.tensor([gamma], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([beta], dtype=torch.float64, requires_grad=True)
    mean, var = proxy_moments(nn.ReLU(), g, b, nodes, weights)
    m_ref, v_ref, cdf = relu_gauss_moments(gamma, beta)
    assert mean.item() == pytest.approx(m_ref, rel=1e-12, abs=1e-14)
    assert var.item() == pytest.approx(v_ref, rel=1e-12, abs=1e-14)
    mean.sum().backward()
    # d E[relu]/d beta = Phi(beta/|gamma|), d/d gamma = sign(gamma) phi(beta/|gamma|): exact
    # with the closed form (a quadrature's derivative moves in steps as the kink crosses a
    # node: the 513-node rule was up to 1.6% off here)
    t = beta / abs(gamma)
    assert b.grad.item() == pytest.approx(cdf, rel=1e-12, abs=1e-14)
    assert g.grad.item() == pytest.approx(
        math.copysign(math.exp(-t * t / 2) / math.sqrt(2 * math.pi), gamma), rel=1e-12,
        abs=1e-14)


def test_proxy_moments_sigmoid_against_gauss_hermite():
    z, w = hermegauss(80)  # smooth integrand: Gauss-Hermite converges fast here
    w = w / w.sum()
    gamma, beta = np.array([0.7, 1.5, 3.0]), np.array([0.2, -1.0, 0.5])
    ys = 1 / (1 + np.exp(-(gamma[:, None] * z[None] + beta[:, None])))
    m_ref = ys @ w
    v_ref = ((ys - m_ref[:, None]) ** 2) @ w
    nodes, weights = gaussian_grid(dtype=torch.float64)
    mean, var = proxy_moments(torch.sigmoid, torch.tensor(gamma), torch.tensor(beta),
                              nodes, weights)
    np.testing.assert_allclose(mean.numpy(), m_ref, atol=1e-7)
    np.testing.assert_allclose(var.numpy(), v_ref, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_proxy_norm_layer_matches_closed_form_reference(shape):
    c = shape[1]
    layer = _randomize(ProxyNormActivation(c, nn.ReLU()))
    x = torch.randn(shape)
    g, b = _np(layer.weight), _np(layer.bias)
    g2, b2 = _np(layer.out_weight), _np(layer.out_bias)
    xs = _np(x)
    expected = np.empty_like(xs)
    for i in range(shape[0]):
        for ch in range(c):
            m, v, _ = relu_gauss_moments(g[ch], b[ch])
            y = np.maximum(g[ch] * xs[i, ch] + b[ch], 0)
            expected[i, ch] = g2[ch] * (y - m) / math.sqrt(v + layer.eps) + b2[ch]
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-3, atol=1e-3)


def test_proxy_norm_standardizes_gaussian_preactivations():
    c = 4
    layer = ProxyNormActivation(c, nn.ReLU(), out_affine=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 0.4, 2.5, 0.8]))
        layer.bias.copy_(torch.tensor([0.0, -0.6, 1.2, -1.5]))
    # N(0,1)-distributed pre-activations: the normal quantiles at (k + 1/2) / K, a
    # deterministic sample (random draws of a mostly-zero ReLU output are too noisy)
    k = 200000
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    z = (math.sqrt(2) * torch.erfinv(2 * u - 1))[:, None].expand(k, c)
    out = layer(z).detach()
    np.testing.assert_allclose(out.mean(0).numpy(), 0.0, atol=2e-3)
    np.testing.assert_allclose(out.var(0).numpy(), 1.0, atol=1e-2)
    raw = torch.relu(z * layer.weight + layer.bias)  # without proxy norm: far from standard
    assert (raw.mean(0) - 0).abs().max() > 0.2
    assert (raw.var(0) - 1).abs().max() > 0.2
    # and random pre-activations, loosely (sampling noise)
    out = layer(torch.randn(20000, c, dtype=torch.float64)).detach()
    np.testing.assert_allclose(out.mean(0).numpy(), 0.0, atol=0.05)
    np.testing.assert_allclose(out.var(0).numpy(), 1.0, atol=0.15)


def test_proxy_norm_block_order_and_gradients():
    act = nn.ReLU()
    block = create_method("proxy_norm").block(16, 2, act)
    assert isinstance(block[0], GroupNorm) and block[0].weight is None  # no affine of its own
    assert isinstance(block[1], ProxyNormActivation) and block[1].activation is act
    assert isinstance(ProxyNormMethod(base_norm="layer").block(16, 0, act)[0], GroupNorm1)
    out = block(torch.randn(2, 16, 4, 4))
    out.square().sum().backward()  # proxy moments pass gradients to gamma and beta
    assert block[1].weight.grad.abs().sum() > 0 and block[1].bias.grad.abs().sum() > 0
    assert "nodes" not in block.state_dict() and "1.nodes" not in block.state_dict()


# ---------------------------------------------------------------- batch independence

def _block(name: str, c: int, spatial_dims: int) -> nn.Module:
    block = create_method(name).block(c, spatial_dims, nn.ReLU())
    return _randomize(block).train()


@pytest.mark.parametrize("spatial_dims", [0, 2])
@pytest.mark.parametrize("name", BATCH_FREE)
def test_sample_output_independent_of_batch(name, spatial_dims):
    c = 16
    shape = (5, c) if spatial_dims == 0 else (5, c, 4, 4)
    block = _block(name, c, spatial_dims)
    x = torch.randn(shape)
    y = x.clone()
    y[1:] = torch.randn_like(y[1:]) * 3 + 1  # change every other sample
    torch.testing.assert_close(block(x)[0], block(y)[0])
    torch.testing.assert_close(block(x[:1])[0], block(x)[0])  # batch of one: same output


def test_batch_independence_check_detects_batch_norm():
    """Negative control: the same check fails for the (batch-dependent) IC layer's BN."""
    block = ICLayerMethod(p=0.0).block(16, 2, nn.ReLU()).train()
    x = torch.randn(5, 16, 4, 4)
    y = x.clone()
    y[1:] = torch.randn_like(y[1:]) * 3 + 1
    assert not torch.allclose(block(x)[0], block(y)[0], atol=1e-3)
    # every method's batch_dependent claim: tests/test_registry_methods.py


# ---------------------------------------------------------------- IC layer

@pytest.mark.parametrize("shape", SHAPES)
def test_ic_layer_batch_norm_then_dropout(shape):
    c, p = shape[1], 0.5
    layer = _randomize(ICLayer(c, p=p))
    x = torch.randn(shape) * 2 + 1
    xs = _np(x)
    axes = (0,) + tuple(range(2, x.dim()))
    mu, var = xs.mean(axis=axes, keepdims=True), xs.var(axis=axes, keepdims=True)
    view = (1, c) + (1,) * (x.dim() - 2)
    bn = _np(layer.weight).reshape(view) * (xs - mu) / np.sqrt(var + 1e-5) \
        + _np(layer.bias).reshape(view)
    out = _np(layer(x))  # train: batch statistics, then dropout
    kept = out != 0
    assert 0.35 < 1 - kept.mean() < 0.65  # about p dropped
    # kept entries are the BN output scaled by 1/(1-p): BN saw the undropped input
    np.testing.assert_allclose(out[kept], bn[kept] / (1 - p), rtol=1e-4, atol=1e-5)
    n_per_channel = xs.size / c
    np.testing.assert_allclose(_np(layer.running_mean), 0.1 * mu.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(_np(layer.running_var),
                               0.9 + 0.1 * var.reshape(-1) * n_per_channel / (n_per_channel - 1),
                               rtol=1e-5)
    layer.eval()  # eval: running statistics, no dropout, deterministic
    rm, rv = _np(layer.running_mean).reshape(view), _np(layer.running_var).reshape(view)
    expected = _np(layer.weight).reshape(view) * (xs - rm) / np.sqrt(rv + 1e-5) \
        + _np(layer.bias).reshape(view)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(layer(x)), _np(layer(x)))
    scale, shift = layer.eval_affine()
    np.testing.assert_allclose(xs * _np(scale).reshape(view) + _np(shift).reshape(view),
                               expected, rtol=1e-4, atol=1e-5)


def test_ic_block_order_is_activation_bn_dropout():
    act = nn.ReLU()
    block = create_method("ic_layer").block(8, 2, act)
    assert isinstance(block, nn.Sequential) and len(block) == 2
    assert block[0] is act and isinstance(block[1], ICLayer)
    assert block[1].p == 0.05  # the documented default
    x = -torch.rand(6, 8, 3, 3)  # all negative: relu first makes everything 0
    block.eval()
    torch.testing.assert_close(block(x), block[1](torch.zeros_like(x)))


# ---------------------------------------------------------------- every model

@pytest.mark.parametrize("model", ["cnn", "mlp", "mlp_sigmoid"])
@pytest.mark.parametrize("name", MINE)
def test_models_build_and_train(name, model):
    assert name in METHODS and create_method(name).kind == "layer"
    net = build_model(model, create_method(name), (1, 28, 28), 10)
    logits = net(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    net.eval()
    assert torch.isfinite(net(torch.randn(2, 1, 28, 28))).all()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("make", [
    lambda: GroupNorm(8, 2), lambda: GroupNorm1(8), lambda: InstanceNorm(8),
    lambda: FilterResponseNorm(8), lambda: ProxyNormActivation(8, nn.ReLU()),
    lambda: ICLayer(8),
])
def test_wrong_channels_clear_error(make):
    layer = make()
    with pytest.raises(ValueError, match=r"8 channels.*\(2, 6, 4, 4\)"):
        layer(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(8))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_groups"):
        GroupNorm(10, 4)
    with pytest.raises(ValueError, match="num_groups"):
        create_method("group_norm", num_groups=3).norm(16, 2)
    with pytest.raises(ValueError, match="base_norm"):
        ProxyNormMethod(base_norm="batch")
    with pytest.raises(ValueError, match="p must be"):
        ICLayer(8, p=1.0)
    with pytest.raises(ValueError, match="eps"):
        FilterResponseNorm(8, eps=0.0)
    with pytest.raises(TypeError, match="activation"):
        ProxyNormActivation(8, torch.relu)
    with pytest.raises(TypeError, match="bad options"):
        create_method("frn", learnable_epsilon=True)

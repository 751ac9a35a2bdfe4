"""L1 / top-k / Range batch norm (Hoffer et al. 2018, Banner et al. 2018) and Batch Renorm
(Ioffe 2017): functional forms against naive float64 loops, the papers' unit-variance
property, Batch Renorm against torch BN and hand computations, and the layer contract."""

from __future__ import annotations

import copy
import math

import gaussian_references as G
import numpy as np
import pytest
import torch
from torch import nn

from normlab import functional as F
from normlab.layers import BatchRenorm, L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from normlab.methods import METHODS, create_method

DISPERSION_LAYERS = [L1BatchNorm, LinfBatchNorm, RangeBatchNorm]
ALL_LAYERS = DISPERSION_LAYERS + [BatchRenorm]
NEW_METHODS = ["l1_batch_norm", "linf_batch_norm", "range_batch_norm", "batch_renorm"]


# ---------------------------------------------------------------- naive float64 references

def _channels(x: torch.Tensor) -> list[np.ndarray]:
    a = x.detach().double().numpy()
    return [a[:, c].ravel() for c in range(a.shape[1])]


def ref_dispersion(x, kind, k=None, correction="exact"):
    """Per-channel (mean, dispersion) by a python loop over channels, in numpy float64; the
    Gaussian constants come from :mod:`gaussian_references`, not from normlab."""
    means, disps = [], []
    for v in _channels(x):
        n = v.size
        mu = sum(v) / n
        dev = np.abs(v - mu)
        if kind == "l1":
            d = math.sqrt(math.pi / 2) * sum(dev) / n
        elif kind == "linf":
            kk = min(k, n)
            top = sorted(dev, reverse=True)[:kk]
            m = sum(top) / kk
            d = (m / G.topk_abs_mean(n, kk) if correction == "exact" else
                 m * 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n)))
        else:
            rng = max(v) - min(v)
            d = rng / (G.range_unit_variance(n) if correction == "exact"
                       else math.sqrt(2 * math.log(n)))
        means.append(mu)
        disps.append(d)
    return np.array(means), np.array(disps)


def ref_normalize(x, mean, disp, w, b, eps):
    a = x.detach().double().numpy().copy()
    out = np.empty_like(a)
    for c in range(a.shape[1]):
        out[:, c] = (a[:, c] - mean[c]) / (disp[c] + eps) * w[c] + b[c]
    return out


CASES = [("l1", F.l1_batch_norm, {}), ("linf", F.linf_batch_norm, {"k": 3}),
         ("linf", F.linf_batch_norm, {"k": 3, "correction": "paper"}),
         ("linf", F.linf_batch_norm, {"k": 50}),  # k > n for the (6, 3) input: capped
         ("range", F.range_batch_norm, {}),
         ("range", F.range_batch_norm, {"correction": "paper"})]


# ---------------------------------------------------------------- Gaussian constants

def test_gaussian_constants_closed_forms():
    # E|Z| = sqrt(2/pi) (k = n: the mean of all); E max(|Z1|,|Z2|) = 2/sqrt(pi);
    # E range of 2 and 3 normals = 2/sqrt(pi) and 3/sqrt(pi).
    assert F.gaussian_topk_abs_mean(7, 7) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-5)
    assert F.gaussian_topk_abs_mean(1, 1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-5)
    assert F.gaussian_topk_abs_mean(2, 1) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-5)
    assert F.gaussian_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-5)
    assert F.gaussian_range(3) == pytest.approx(3 / math.sqrt(math.pi), rel=1e-5)


def test_gaussian_constants_monte_carlo():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 2000, generator=g, dtype=torch.float64)
    mc_top = z.abs().topk(10, dim=1).values.mean().item()
    mc_range = (z.amax(1) - z.amin(1)).mean().item()
    assert F.gaussian_topk_abs_mean(2000, 10) == pytest.approx(mc_top, rel=0.01)
    assert F.gaussian_range(2000) == pytest.approx(mc_range, rel=0.01)


# ---------------------------------------------------------------- functional vs reference

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2)])
@pytest.mark.parametrize("kind,fn,kw", CASES)
def test_functional_matches_naive_reference(shape, kind, fn, kw):
    torch.manual_seed(1)
    x = torch.randn(shape) * 2 + 3
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rd = torch.zeros(3), torch.ones(3)
    y = fn(x, rm, rd, w, b, training=True, momentum=0.25, eps=1e-3, **kw)
    mean, disp = ref_dispersion(x, kind, **kw)
    np.testing.assert_allclose(y.numpy(), ref_normalize(x, mean, disp, w.numpy(), b.numpy(), 1e-3),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm.numpy(), 0.25 * mean, rtol=1e-5)
    n = x.numel() // 3
    if kind == "range" and kw.get("correction", "exact") == "exact":  # W / R(n) is averaged
        disp = disp * G.range_unit_variance(n) / G.expected_range(n)
    np.testing.assert_allclose(rd.numpy(), 0.75 + 0.25 * disp, rtol=1e-5)
    # eval: the running statistics, not the batch's
    y_eval = fn(x, rm, rd, w, b, training=False, eps=1e-3, **kw)
    np.testing.assert_allclose(y_eval.numpy(), ref_normalize(x, rm.numpy(), rd.numpy(),
                                                              w.numpy(), b.numpy(), 1e-3),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,fn,kw", CASES[:2] + CASES[4:5])
def test_functional_gradient_through_statistics(kind, fn, kw):
    # autograd through mean, abs, top-k and max/min agrees with finite differences
    torch.manual_seed(2)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fn(x, None, None, w, b, **kw), (x, w, b))


def test_constant_channel_gives_bias_not_nan():
    x = torch.ones(4, 2, 3)
    for fn in (F.l1_batch_norm, F.linf_batch_norm, F.range_batch_norm):
        y = fn(x, bias=torch.tensor([0.5, -1.0]))
        assert torch.equal(y, torch.tensor([0.5, -1.0]).view(1, 2, 1).expand_as(y))


# ---------------------------------------------------------------- the papers' property

@pytest.mark.parametrize("kind,fn,kw,tol", [
    ("l1", F.l1_batch_norm, {}, 0.02),
    ("linf", F.linf_batch_norm, {}, 0.10),
    ("range", F.range_batch_norm, {}, 0.15),
])
def test_unit_variance_on_gaussian_data(kind, fn, kw, tol):
    # The constants exist so that on N(mu, sigma^2) data the output is standardized. The
    # channel-averaged variance must be within tol of 1 (about 3 sampling std of the
    # estimator at n = 16384; range is the noisiest); each channel within 2 tol.
    torch.manual_seed(3)
    x = torch.randn(256, 4, 8, 8) * 2 + 3
    y = fn(x, **kw).double()
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
    assert mean.abs().max() < 1e-5
    assert abs(var.mean().item() - 1) < tol, var
    assert (var - 1).abs().max() < 2 * tol, var


def test_paper_constants_are_not_unit_variance():
    # What the module docstring reports: the papers' asymptotic constants leave the variance
    # near 1/3 (range: C(n) = 1/sqrt(2 ln n) estimates ~2 sigma) and 0.6 (top-10).
    torch.manual_seed(3)
    x = torch.randn(256, 4, 8, 8) * 2 + 3
    v_range = F.range_batch_norm(x, correction="paper").var((0, 2, 3)).mean().item()
    v_linf = F.linf_batch_norm(x, correction="paper").var((0, 2, 3)).mean().item()
    assert 0.2 < v_range < 0.4
    assert 0.5 < v_linf < 0.7


# ---------------------------------------------------------------- Batch Renorm

def _set_running(layer, mean, var):
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)


def test_batch_renorm_r1_d0_equals_torch_batchnorm():
    torch.manual_seed(4)
    ours = BatchRenorm(3, rmax=1.0, dmax=0.0, warmup_start=0, rmax_steps=0, dmax_steps=0)
    ref = nn.BatchNorm2d(3)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    run_m, run_v = torch.randn(3), torch.rand(3) + 0.5  # far from the batch's: r, d would act
    for layer in (ours, ref):
        layer.weight.data.copy_(w)
        layer.bias.data.copy_(b)
        _set_running(layer, run_m, run_v)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    g = torch.randn_like(x)
    outs, grads = [], []
    for layer in (ours, ref):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(g)
        outs.append(y.detach())
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_batch_renorm_clipping_by_hand():
    # Channel 0: batch std 4x the running std (r clips to rmax=2), mean 10 running stds
    # above (d clips to dmax=1.5); channel 1: std 1/4 (r clips to 1/2), mean 0.5 below
    # (d = -0.5, inside); channel 2: r = 1.25 and d = 0.3, inside.
    torch.manual_seed(5)
    z = torch.randn(64, 3)
    z = (z - z.mean(0)) / z.var(0, unbiased=False).sqrt()  # exactly mean 0, std 1
    eps = 0.0
    x = z * torch.tensor([4.0, 0.25, 1.25]) + torch.tensor([10.0, -0.5, 0.3])
    layer = BatchRenorm(3, eps=eps, affine=False, rmax=2.0, dmax=1.5, warmup_start=0,
                        rmax_steps=0, dmax_steps=0)
    y = layer(x)
    r, d = [2.0, 0.5, 1.25], [1.5, -0.5, 0.3]
    a = x.double().numpy()
    for c in range(3):
        mu, sd = a[:, c].mean(), a[:, c].std()
        np.testing.assert_allclose(y[:, c].numpy(), (a[:, c] - mu) / sd * r[c] + d[c],
                                   rtol=1e-5, atol=1e-5)


def _renorm_reference(x, run_m, run_v, w, b, rmax, dmax, eps, detach):
    """Float64 Batch Renorm forward with r and d either constants or functions of x."""
    mu = x.mean((0, 2, 3))
    sd = (x.var((0, 2, 3), unbiased=False) + eps).sqrt()
    run_sd = (run_v + eps).sqrt()
    r = (sd / run_sd).clamp(1 / rmax, rmax)
    d = ((mu - run_m) / run_sd).clamp(-dmax, dmax)
    if detach:
        r, d = r.detach(), d.detach()
    sh = (1, -1, 1, 1)
    return ((x - mu.view(sh)) / sd.view(sh) * r.view(sh) + d.view(sh)) * w.view(sh) + b.view(sh)


def test_batch_renorm_no_gradient_through_r_d():
    torch.manual_seed(6)
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64) * 1.5 + 0.2
    f64 = {"dtype": torch.float64}
    run_m, run_v = torch.tensor([0.0, 0.5], **f64), torch.tensor([1.0, 4.0], **f64)
    w, b = torch.tensor([1.5, 0.7], **f64), torch.tensor([0.1, -0.2], **f64)
    g = torch.randn_like(x)
    layer = BatchRenorm(2, eps=1e-5, rmax=3.0, dmax=5.0, warmup_start=0, rmax_steps=0,
                        dmax_steps=0, dtype=torch.float64)
    layer.weight.data.copy_(w)
    layer.bias.data.copy_(b)
    _set_running(layer, run_m, run_v)
    xi = x.clone().requires_grad_(True)
    layer(xi).backward(g)
    grads = {}
    for detach in (True, False):
        xr = x.clone().requires_grad_(True)
        _renorm_reference(xr, run_m, run_v, w, b, 3.0, 5.0, 1e-5, detach).backward(g)
        grads[detach] = xr.grad
    torch.testing.assert_close(xi.grad, grads[True])
    assert not torch.allclose(grads[True], grads[False], atol=1e-3)  # the check can fail


def test_renorm_limits_schedule_and_counter():
    assert F.renorm_limits(0, 3.0, 5.0, 10, 20, 10) == (1.0, 0.0)
    assert F.renorm_limits(9, 3.0, 5.0, 10, 20, 10) == (1.0, 0.0)
    assert F.renorm_limits(20, 3.0, 5.0, 10, 20, 10) == pytest.approx((2.0, 5.0))
    assert F.renorm_limits(15, 3.0, 5.0, 10, 20, 10) == pytest.approx((1.5, 2.5))
    assert F.renorm_limits(10**6, 3.0, 5.0, 10, 20, 10) == pytest.approx((3.0, 5.0))
    assert F.renorm_limits(0, 3.0, 5.0, 0, 0, 0) == (3.0, 5.0)  # fixed limits
    layer = BatchRenorm(2, warmup_start=1, rmax_steps=2, dmax_steps=1)
    x = torch.randn(4, 2)
    seen = []
    for _ in range(4):
        seen.append(layer.limits())
        layer(x)
    assert seen == [(1.0, 0.0), (1.0, 0.0), (2.0, 5.0), (3.0, 5.0)]
    layer.eval()
    layer(x)
    assert int(layer.num_batches_tracked) == 4


def test_batch_renorm_eval_uses_running_stats():
    layer = BatchRenorm(2, affine=False)
    _set_running(layer, torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25]))
    layer.eval()
    x = torch.randn(5, 2)
    expect = (x - torch.tensor([1.0, -2.0])) / torch.sqrt(torch.tensor([4.0, 0.25]) + 1e-5)
    torch.testing.assert_close(layer(x), expect)
    torch.testing.assert_close(layer(x[:1]), expect[:1])  # a sample alone: same output


# ---------------------------------------------------------------- the layer contract

def _trained(cls, c=3, **kw):
    torch.manual_seed(7)
    layer = cls(c, **kw)
    if layer.weight is not None:
        layer.weight.data.uniform_(0.5, 2.0)
    if layer.bias is not None:
        layer.bias.data.normal_()
    for _ in range(3):
        layer(torch.randn(8, c, 4, 4) * 2 + 1)
    return layer


@pytest.mark.parametrize("cls", ALL_LAYERS)
@pytest.mark.parametrize("scale", [True, False])
def test_eval_affine_reproduces_eval_output(cls, scale):
    layer = _trained(cls, scale=scale).eval()
    x = torch.randn(5, 3, 2, 2)
    s, t = layer.eval_affine()
    assert s.shape == t.shape == (3,)
    torch.testing.assert_close(layer(x), x * s.view(1, 3, 1, 1) + t.view(1, 3, 1, 1))
    if not scale:
        assert layer.weight is None and layer.bias is not None


@pytest.mark.parametrize("cls", DISPERSION_LAYERS)
def test_running_stats_update_and_train_eval_switch(cls):
    torch.manual_seed(8)
    layer = cls(3, momentum=0.2)
    x = torch.randn(16, 3, 3, 3) * 2 + 1
    kind = {L1BatchNorm: "l1", LinfBatchNorm: "linf", RangeBatchNorm: "range"}[cls]
    mean, disp = ref_dispersion(x, kind, k=10)
    if kind == "range":  # the running dispersion averages W / R(n), an estimate of sigma
        disp = disp * G.range_unit_variance(16 * 9) / G.expected_range(16 * 9)
    y_train = layer(x)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.running_disp.numpy(), 0.8 + 0.2 * disp, rtol=1e-5)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y_eval = layer(x)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k  # eval leaves buffers alone
    assert not torch.allclose(y_eval, y_train, atol=1e-2)
    layer.train()
    torch.testing.assert_close(layer(x), y_train)  # batch statistics again


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_state_dict_round_trip(cls):
    layer = _trained(cls)
    fresh = cls(3)
    fresh.load_state_dict(layer.state_dict())
    layer.eval(), fresh.eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(fresh(x), layer(x))
    assert int(fresh.num_batches_tracked) == 3
    assert {"running_mean", "num_batches_tracked", "weight", "bias"} <= set(fresh.state_dict())


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_bad_input_errors(cls):
    layer = cls(3, spatial_dims=2)
    with pytest.raises(ValueError, match="3 channels"):
        layer(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="4-D input"):
        layer(torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="1 value per channel"):
        cls(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="N, C"):
        cls(3)(torch.randn(3))
    with pytest.raises(ValueError, match="floating"):
        cls(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_features"):
        cls(0)
    with pytest.raises(ValueError, match="momentum"):
        cls(3, momentum=1.5)


def test_bad_options_errors():
    with pytest.raises(ValueError, match="k must"):
        LinfBatchNorm(3, k=0)
    with pytest.raises(ValueError, match="correction"):
        RangeBatchNorm(3, correction="asymptotic")
    with pytest.raises(ValueError, match="rmax"):
        BatchRenorm(3, rmax=0.5)


# ---------------------------------------------------------------- the methods

@pytest.mark.parametrize("name", NEW_METHODS)
def test_methods_registered_and_build_every_spatial_dim(name):
    method = create_method(name)
    assert name in METHODS and "arXiv" in method.paper
    for sd in range(4):
        layer = method.norm(4, sd)
        x = torch.randn((3, 4) + (3,) * sd, requires_grad=True)
        layer(x).sum().backward()
        assert x.grad is not None
        # conv_bias=False: the batch statistics absorb a per-channel shift of the input
        shift = torch.randn((1, 4) + (1,) * sd) * 3
        with torch.no_grad():
            torch.testing.assert_close(copy.deepcopy(layer)(x + shift), copy.deepcopy(layer)(x))
            # batch_dependent: sample 0's training output moves with the rest of the batch
            other = x.detach().clone()
            other[1:] = other[1:] * 2 + 1
            assert not torch.allclose(copy.deepcopy(layer)(other)[0], layer(x)[0], atol=1e-3)
            # inference "folded into the weights": the eval map is eval_affine()'s x * a + b
            scale, bias = layer.eval().eval_affine()
            view = (1, 4) + (1,) * sd
            torch.testing.assert_close(layer(x), x * scale.view(view) + bias.view(view))
    assert create_method(name, scale=False).norm(4, 0).weight is None


def test_method_options_reach_the_layer():
    layer = create_method("linf_batch_norm", k=4, correction="paper").norm(2, 2)
    assert (layer.k, layer.correction, layer.spatial_dims) == (4, "paper", 2)
    layer = create_method("batch_renorm", rmax=2.0, warmup_start=0, rmax_steps=0).norm(2, 0)
    assert layer.limits()[0] == 2.0

# Folding into the weights (Method.for_inference): tests/test_deployment.py.

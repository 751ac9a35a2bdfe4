"""L1 / top-k / Range batch norm (Hoffer et al. 2018, Banner et al. 2018): functional forms
against naive float64 loops and the papers' unit-variance property; and the layer contract
and methods these layers share with Batch Renorm (whose own tests: tests/test_batch_renorm.py)."""

from __future__ import annotations

import copy
import math

import gaussian_references as G
import numpy as np
import pytest
import torch

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

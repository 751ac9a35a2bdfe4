"""Batch-statistics norms against references that share no code or constants with normlab.

BN (Ioffe & Szegedy 2015, arXiv:1502.03167), L1 / top-k BN (Hoffer, Banner, Golan & Soudry
2018, arXiv:1803.01814), Range BN (Banner, Hubara, Hoffer & Soudry 2018, arXiv:1805.11046)
and Batch Renorm (Ioffe 2017, arXiv:1702.03275): each reference is a per-channel float64
loop written here from the paper, its gradients are autograd through that loop (normlab's
training step has an analytic backward), and its Gaussian constants come from
:mod:`gaussian_references` (tail-probability integrals, not normlab's density quadrature).
"""

from __future__ import annotations

import math

import gaussian_references as G
import pytest
import torch

from normlab.functional import (
    gaussian_range, gaussian_range_unit_variance, gaussian_topk_abs_mean, l1_batch_norm,
    linf_batch_norm, range_batch_norm,
)
from normlab.methods import create_method

D = torch.float64


# ---------------------------------------------------------------- the Gaussian constants

@pytest.mark.parametrize("n, k", [(2, 1), (5, 2), (10, 3), (10, 10), (40, 10), (400, 10)])
def test_topk_constant_matches_tail_integral(n, k):
    assert gaussian_topk_abs_mean(n, k) == pytest.approx(G.topk_abs_mean(n, k), rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 40, 400, 2000])
def test_expected_range_matches_tail_integral(n):
    assert gaussian_range(n) == pytest.approx(G.expected_range(n), rel=1e-10)


@pytest.mark.parametrize("n", [4, 5, 8, 400])
def test_range_unit_variance_constant_matches_cdf_integral(n):
    assert gaussian_range_unit_variance(n) == pytest.approx(G.range_unit_variance(n), rel=1e-8)


def _mean_and_se(samples: torch.Tensor) -> tuple[float, float]:
    return samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())


@pytest.mark.parametrize("n", [2, 3, 6])
def test_range_constant_and_chi_square_identity_by_monte_carlo(n):
    # C(n)^-2 = E[v / W^2] (v the biased sample variance, W the range) by a seeded Monte
    # Carlo, within 4 standard errors; at n = 6 also the identity n E[v/W^2] = (n-3) E[W^-2]
    # that both quadratures rely on. n = 2, 3 are closed forms in normlab.
    g = torch.Generator().manual_seed(n)
    x = torch.randn(100_000, n, generator=g, dtype=D)
    dev = x - x.mean(dim=1, keepdim=True)
    w = x.amax(dim=1) - x.amin(dim=1)
    est, se = _mean_and_se(dev.square().mean(dim=1) / w.square())
    assert abs(est - gaussian_range_unit_variance(n) ** -2) < 4 * se
    if n >= 4:
        est2, se2 = _mean_and_se((n - 3) / n / w.square())
        assert abs(est2 - G.range_unit_variance(n) ** -2) < 4 * se2


# ---------------------------------------------------------------- unit variance over n

FUNCTIONS = {"l1": l1_batch_norm, "linf": linf_batch_norm, "range": range_batch_norm}


@pytest.mark.parametrize("n", [4, 8, 32, 400])
@pytest.mark.parametrize("kind", ["l1", "linf", "range"])
def test_output_variance_on_gaussian_data_over_n(kind, n):
    # Many independent channels of n values of N(3, 2^2); the output variance estimate is
    # the mean over channels of mean(y^2), with its standard error. Range: exactly 1 at
    # every n. L1 and top-10: within 1.5% for n >= 32, as documented, and below 1 at small n.
    channels = 400_000 // n
    g = torch.Generator().manual_seed(n)
    x = 3.0 + 2.0 * torch.randn(n, channels, generator=g, dtype=D)
    per_channel = FUNCTIONS[kind](x, eps=0.0).square().mean(dim=0)
    est, se = _mean_and_se(per_channel)
    if kind == "range":
        assert abs(est - 1.0) < 4 * se, (est, se)
    elif n >= 32:
        assert abs(est - 1.0) < 0.015 + 4 * se, (est, se)
    else:
        assert 0.8 < est < 0.97, (est, se)


def test_range_running_dispersion_estimates_sigma():
    # Training normalizes by W / C(n); the running dispersion averages W / R(n), whose
    # expectation is sigma (R(n) = E[W] from the tail integral).
    n, sigma = 8, 2.0
    g = torch.Generator().manual_seed(5)
    x = 3.0 + sigma * torch.randn(n, 50_000, generator=g, dtype=D)
    rm, rd = torch.zeros(50_000, dtype=D), torch.zeros(50_000, dtype=D)
    range_batch_norm(x, rm, rd, momentum=1.0)
    w = x.amax(dim=0) - x.amin(dim=0)
    torch.testing.assert_close(rd, w / G.expected_range(n), rtol=1e-12, atol=0)
    est, se = _mean_and_se(rd)
    assert abs(est - sigma) < 4 * se


# ---------------------------------------------------------------- forward and gradients

def _rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Each channel's values of an (N, C, *) tensor, as a 1-D tensor (keeps the graph)."""
    return [x.select(1, c).reshape(-1) for c in range(x.shape[1])]


def _stack(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    shape = (like.shape[0],) + tuple(like.shape[2:])
    return torch.stack([r.reshape(shape) for r in rows], dim=1)


def ref_dispersion_norm(x, kind, weight, bias, eps, k=10):
    """The papers' map, one channel at a time: ``(x - mu) / (s + eps) * w + b``."""
    outs, means, disps = [], [], []
    for c, v in enumerate(_rows(x)):
        n = v.numel()
        mu = v.sum() / n
        dev = v - mu
        if kind == "l1":
            s = math.sqrt(math.pi / 2.0) * dev.abs().sum() / n
        elif kind == "linf":
            kk = min(k, n)
            s = dev.abs().sort(descending=True).values[:kk].sum() / kk / G.topk_abs_mean(n, kk)
        else:
            s = (v.max() - v.min()) / G.range_unit_variance(n)
        outs.append(dev / (s + eps) * weight[c] + bias[c])
        means.append(mu)
        disps.append(s)
    return _stack(outs, x), torch.stack(means), torch.stack(disps)


def ref_batch_norm(x, weight, bias, eps, running_mean=None, running_var=None, r_d=None):
    """Ioffe & Szegedy Algorithm 1 per channel; with ``r_d = (rmax, dmax)`` Ioffe 2017's
    Algorithm 1 (``r``, ``d`` computed from the running statistics and held constant)."""
    outs, means, variances = [], [], []
    for c, v in enumerate(_rows(x)):
        n = v.numel()
        mu = v.sum() / n
        var = ((v - mu) ** 2).sum() / n
        sigma_b = torch.sqrt(var + eps)
        xhat = (v - mu) / sigma_b
        if r_d is not None:
            rmax, dmax = r_d
            sigma = math.sqrt(running_var[c].item() + eps)
            r = min(max(sigma_b.item() / sigma, 1.0 / rmax), rmax)
            d = min(max((mu.item() - running_mean[c].item()) / sigma, -dmax), dmax)
            xhat = xhat * r + d
        outs.append(xhat * weight[c] + bias[c])
        means.append(mu)
        variances.append(var * n / (n - 1))  # the running variance is unbiased (torch's BN)
    return _stack(outs, x), torch.stack(means).detach(), torch.stack(variances).detach()


def _layer(name, channels, **options):
    layer = create_method(name, **options).norm(channels, 2).double().train()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0], dtype=D)[:channels])
        layer.bias.copy_(torch.tensor([0.2, -0.4, 1.0], dtype=D)[:channels])
    return layer


def _compare(layer, reference, x):
    """Forward and input/weight/bias gradients of ``layer`` against ``reference(x, w, b)``
    for the same random upstream gradient."""
    xl = x.clone().requires_grad_(True)
    y = layer(xl)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=D)
    (y * up).sum().backward()
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    yr, *stats = reference(xr, w, b)
    (yr * up).sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xl.grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-10, atol=1e-12)
    if layer.weight.requires_grad:
        torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-10, atol=1e-12)
    else:  # a frozen scale (batch_norm's default) stays 1
        assert layer.weight.grad is None and torch.equal(layer.weight, torch.ones_like(w))
    return stats


def _input(shape=(4, 3, 5, 2)):
    g = torch.Generator().manual_seed(1)
    return 3.0 + 2.0 * torch.randn(shape, generator=g, dtype=D)


@pytest.mark.parametrize("name, kind, options", [
    ("l1_batch_norm", "l1", {}), ("linf_batch_norm", "linf", {}),
    ("linf_batch_norm", "linf", {"k": 3}), ("range_batch_norm", "range", {})])
def test_dispersion_method_matches_paper_loop(name, kind, options):
    x = _input()
    layer = _layer(name, 3, momentum=0.5, eps=1e-3, **options)
    mean, disp = _compare(layer, lambda x, w, b: ref_dispersion_norm(
        x, kind, w, b, 1e-3, options.get("k", 10)), x)
    n = x.numel() // 3
    running = disp * (G.range_unit_variance(n) / G.expected_range(n) if kind == "range" else 1)
    torch.testing.assert_close(layer.running_mean, 0.5 * mean.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.running_disp, 0.5 + 0.5 * running.detach(), rtol=1e-12,
                               atol=0)
    layer.eval()
    expected = ((x - layer.running_mean.view(1, -1, 1, 1))
                / (layer.running_disp.view(1, -1, 1, 1) + 1e-3)
                * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["batch_norm", "batch_norm_affine"])
def test_batch_norm_matches_paper_algorithm(name):
    # batch_norm learns the shift only (its scale stays 1, frozen), batch_norm_affine both.
    x = _input()
    layer = create_method(name).norm(3, 2).double().train()
    with torch.no_grad():
        if layer.weight.requires_grad:
            layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0], dtype=D))
        layer.bias.copy_(torch.tensor([0.2, -0.4, 1.0], dtype=D))
    mean, var = _compare(layer, lambda x, w, b: ref_batch_norm(x, w, b, layer.eps), x)
    m = layer.momentum
    torch.testing.assert_close(layer.running_mean, m * mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.running_var, 1 - m + m * var, rtol=1e-12, atol=0)


def test_batch_renorm_matches_paper_algorithm():
    # Fixed limits small enough that r and d clip in some channels and not in others.
    x = _input()
    rmax, dmax = 1.5, 0.5
    layer = _layer("batch_renorm", 3, rmax=rmax, dmax=dmax, warmup_start=0, rmax_steps=0,
                   dmax_steps=0, eps=1e-3)
    rm = torch.tensor([3.0, 2.0, 3.5], dtype=D)
    rv = torch.tensor([4.0, 16.0, 1.0], dtype=D)
    layer.running_mean.copy_(rm)
    layer.running_var.copy_(rv)
    mean, var = _compare(layer, lambda x, w, b: ref_batch_norm(
        x, w, b, 1e-3, rm, rv, (rmax, dmax)), x)
    torch.testing.assert_close(layer.running_mean, 0.9 * rm + 0.1 * mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.running_var, 0.9 * rv + 0.1 * var, rtol=1e-12, atol=0)

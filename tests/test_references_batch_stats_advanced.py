"""Kalman, mixture and decorrelated BN against references that share no code with normlab.

- Batch Kalman Normalization (Wang, Peng, Luo, Wang & Lin 2018, arXiv:1802.03133): the
  authors' fusion formula in their gain convention (``p`` weights the *prediction*),
  ``var = p v_pred + (1 - p) v_batch + p (1 - p) (m_batch - m_pred)^2``, and their guard
  (no fusion when the predicted variance is on average 100x the batch's).
- Mixture Normalization (Kalayeh & Shah 2019, arXiv:1806.02892): properties that follow from
  the paper on data drawn from a known two-component mixture, without normlab's EM: the fitted
  components are the modes', and each mode's values come out standardized and scaled by
  ``1 / sqrt(lambda_k)`` (the mixture normalizing transform), with the gradient of
  per-mode batch normalization.
- Decorrelated BN (Huang, Yang, Lang & Deng 2018, arXiv:1804.08450) by IterNorm (Huang et
  al. 2019, arXiv:1904.03441): Algorithm 1 of IterNorm in its plain (uncoupled) form, and
  the DBN paper's eigendecomposition ZCA once the iteration has converged.
All in float64, gradients by autograd through the reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from normlab.layers import KalmanNorm
from normlab.methods import create_method

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bn_stats(x):
    """Per-channel batch mean and biased variance of an (N, C) tensor."""
    mu = x.sum(0) / x.shape[0]
    return mu, ((x - mu) ** 2).sum(0) / x.shape[0]


# ---------------------------------------------------------------- Batch Kalman Norm

def _kalman_chain(gain, c1=4, c2=3):
    method = create_method("kalman_norm", gain=gain)
    first, second = method.norm(c1, 0).double(), method.norm(c2, 0).double()
    g = _gen(3)
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.copy_(0.5 + torch.rand(layer.weight.shape, generator=g, dtype=D))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=D))
        second.transition.copy_(0.5 * torch.randn(c2, c1, generator=g, dtype=D))
        second.transition_bias.copy_(torch.randn(c2, generator=g, dtype=D))
        second.log_noise_var.copy_(torch.randn(c2, generator=g, dtype=D))
    return first, second


def ref_kalman(x1, x2, p1, p2, gain, eps):
    """Two layers: the first is BN (no predecessor); the second predicts its statistics
    from the first's through ``A``, ``b``, ``r`` and fuses them the authors' way."""
    m1, v1 = _bn_stats(x1)
    y1 = p1["weight"] * (x1 - m1) / torch.sqrt(v1 + eps) + p1["bias"]
    a, b, r = p2["transition"], p2["transition_bias"], torch.exp(p2["log_noise_var"])
    m_pred = a @ m1 + b
    v_pred = (a * a) @ v1 + r
    m_hat, v_hat = _bn_stats(x2)
    p = 1.0 - gain  # the authors' p is the weight of the prediction
    m = p * m_pred + (1 - p) * m_hat
    v = p * v_pred + (1 - p) * v_hat + p * (1 - p) * (m_hat - m_pred) ** 2
    y2 = p2["weight"] * (x2 - m) / torch.sqrt(v + eps) + p2["bias"]
    return y1, y2, (m, v_pred, m_pred, v_pred / v_hat)


def _run_kalman(first, second, x1, x2):
    x1l, x2l = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    y1, y2 = first(x1l), second(x2l)
    u1 = torch.randn(y1.shape, generator=_gen(8), dtype=D)
    u2 = torch.randn(y2.shape, generator=_gen(9), dtype=D)
    ((y1 * u1).sum() + (y2 * u2).sum()).backward()
    return (y1, y2), (x1l.grad, x2l.grad), (u1, u2)


@pytest.mark.parametrize("gain", [0.9, 0.6])
def test_kalman_fusion_matches_authors_formula(gain):
    first, second = _kalman_chain(gain)
    x1 = 1.0 + 2.0 * torch.randn(16, 4, generator=_gen(1), dtype=D)
    x2 = -0.5 + torch.randn(16, 3, generator=_gen(2), dtype=D)
    (y1, y2), (g1, g2), (u1, u2) = _run_kalman(first, second, x1, x2)
    x1r, x2r = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    p1 = {n: t.detach().clone().requires_grad_(True) for n, t in first.named_parameters()}
    p2 = {n: t.detach().clone().requires_grad_(True) for n, t in second.named_parameters()}
    r1, r2, (m, v_pred, m_pred, ratio) = ref_kalman(x1r, x2r, p1, p2, gain, second.eps)
    assert ratio.mean() < 100  # fused, not guarded
    ((r1 * u1).sum() + (r2 * u2).sum()).backward()
    for got, want in [(y1, r1), (y2, r2), (g1, x1r.grad), (g2, x2r.grad)]:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for layer, ref in [(first, p1), (second, p2)]:
        for name, t in layer.named_parameters():  # the transition learns through the fusion
            torch.testing.assert_close(t.grad, ref[name].grad, rtol=1e-10, atol=1e-12,
                                       msg=name)
    # running statistics: momentum-averaged fused mean, and the fused variance with the
    # unbiased batch variance (torch's BN convention, documented)
    n, p = x2.shape[0], 1.0 - gain
    m_hat, v_hat = _bn_stats(x2)
    v_pred, m_pred = v_pred.detach(), m_pred.detach()
    v_run = p * v_pred + (1 - p) * v_hat * n / (n - 1) + p * (1 - p) * (m_hat - m_pred) ** 2
    torch.testing.assert_close(second.running_mean, 0.1 * m.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second.running_var, 0.9 + 0.1 * v_run, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("noise_var, fused", [(60.0, True), (400.0, False)])
def test_kalman_skips_fusion_when_prediction_is_100x_less_certain(noise_var, fused):
    # Batch variance about 1 and a prediction of variance ~noise_var (A = 0): the authors
    # fuse below a mean ratio of 100 and use the batch statistics alone above it.
    first, second = _kalman_chain(0.9)
    with torch.no_grad():
        second.transition.zero_()
        second.log_noise_var.fill_(math.log(noise_var))
    x1 = torch.randn(32, 4, generator=_gen(1), dtype=D)
    x2 = torch.randn(32, 3, generator=_gen(2), dtype=D)
    (_, y2), _, _ = _run_kalman(first, second, x1, x2)
    params = lambda layer: {n: t.detach() for n, t in layer.named_parameters()}  # noqa: E731
    _, fused_ref, (*_, ratio) = ref_kalman(x1, x2, params(first), params(second), 0.9,
                                             second.eps)
    assert (ratio.mean() >= 100) != fused
    m_hat, v_hat = _bn_stats(x2)
    plain = second.weight * (x2 - m_hat) / torch.sqrt(v_hat + second.eps) + second.bias
    torch.testing.assert_close(y2, fused_ref if fused else plain, rtol=1e-10, atol=1e-12)
    guard_off = _kalman_chain(0.9)
    guard_off[1].skip_ratio = None
    guard_off[1].load_state_dict(second.state_dict())
    (_, y_off), _, _ = _run_kalman(*guard_off, x1, x2)
    torch.testing.assert_close(y_off, fused_ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- Mixture Normalization

# Two channels, each a known mixture of two modes far enough apart (10 standard deviations
# of the wider one) that even the extreme values of 6000 draws have posterior mass below
# 1e-10 on the other mode: each value's responsibility is its label's.
MODES = [((0.3, -6.0, 0.5), (0.7, 6.0, 1.0)), ((0.6, -3.0, 0.8), (0.4, 12.0, 1.5))]


def _mixture_data(m=6000):
    g = _gen(7)
    columns, labels = [], []
    for modes in MODES:
        first = torch.rand(m, generator=g, dtype=D) < modes[0][0]
        values = torch.where(first, modes[0][1] + modes[0][2] * torch.randn(m, generator=g,
                                                                             dtype=D),
                             modes[1][1] + modes[1][2] * torch.randn(m, generator=g, dtype=D))
        columns.append(values)
        labels.append(~first)  # label 1: the second (higher-mean) mode
    return torch.stack(columns, dim=1), torch.stack(labels, dim=1)


def ref_mixture_by_labels(x, labels, weight, bias, eps):
    """The paper's transform with each value's responsibility 1 for its own mode:
    ``(x - mu_k) / sqrt(sigma_k^2 + eps) / sqrt(lambda_k)`` with the mode's batch mean,
    biased variance and fraction, then the per-channel affine map."""
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        for k in (False, True):
            sel = labels[:, c] == k
            v = x[sel, c]
            mu = v.sum() / v.numel()
            var = ((v - mu) ** 2).sum() / v.numel()
            lam = v.numel() / x.shape[0]
            out[sel, c] = (v - mu) / torch.sqrt(var + eps) / math.sqrt(lam)
    return out * weight + bias


def test_mixture_norm_recovers_modes_and_standardizes_each():
    x, labels = _mixture_data()
    layer = create_method("mixture_norm", momentum=1.0).norm(2, 0).double().train()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.7, 1.3], dtype=D))
        layer.bias.copy_(torch.tensor([0.1, -0.2], dtype=D))
    xl = x.clone().requires_grad_(True)
    y = layer(xl)
    up = torch.randn(y.shape, generator=_gen(4), dtype=D)
    (y * up).sum().backward()
    m = x.shape[0]
    # fitted components (running = batch at momentum 1; variances Bessel-corrected) against
    # the generating mixture, within 4 standard errors of their sampling distributions
    for c, modes in enumerate(MODES):
        for k, (lam, mu, sd) in enumerate(modes):
            n_k = lam * m
            assert abs(layer.running_weights[c, k] - lam) < 4 * math.sqrt(lam * (1 - lam) / m)
            assert abs(layer.running_means[c, k] - mu) < 4 * sd / math.sqrt(n_k)
            assert abs(layer.running_vars[c, k] - sd ** 2) < 4 * sd ** 2 * math.sqrt(2 / n_k)
    # each mode's values: mean 0 and variance 1 / lambda_k after the transform (before the
    # affine map; eps in the variance leaves 1 - eps / sigma^2), and the whole output
    # equals per-mode BN, forward and gradient
    xhat = ((y - layer.bias) / layer.weight).detach()
    for c in range(2):
        for k in (False, True):
            v = xhat[labels[:, c] == k, c]
            lam = v.numel() / m
            assert abs(v.mean()) < 1e-9 and abs(v.var(unbiased=False) * lam - 1) < 1e-4
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    yr = ref_mixture_by_labels(xr, labels, w, b, layer.eps)
    (yr * up).sum().backward()
    for got, want in [(y, yr), (xl.grad, xr.grad), (layer.weight.grad, w.grad),
                      (layer.bias.grad, b.grad)]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- Decorrelated BN

def ref_iternorm(x, groups, weight, bias, eps, iterations):
    """IterNorm Algorithm 1 (plain recursion) per channel group of an (N, C) input."""
    out, start = [], 0
    for size in groups:
        xg = x[:, start:start + size]
        mu = xg.sum(0) / xg.shape[0]
        xc = xg - mu
        sigma = xc.T @ xc / xg.shape[0] + eps * torch.eye(size, dtype=D)
        trace = torch.trace(sigma)
        sigma_n = sigma / trace
        p = torch.eye(size, dtype=D)
        for _ in range(iterations):
            p = 0.5 * (3 * p - p @ p @ p @ sigma_n)
        out.append(xc @ (p / torch.sqrt(trace)).T)
        start += size
    return torch.cat(out, dim=1) * weight + bias


def ref_zca(x, groups, weight, bias, eps):
    """The DBN paper's whitening: Sigma^-1/2 = U diag(lambda)^-1/2 U^T per group."""
    out, start = [], 0
    for size in groups:
        xg = x[:, start:start + size]
        xc = xg - xg.mean(0)
        sigma = xc.T @ xc / xg.shape[0] + eps * torch.eye(size, dtype=D)
        lam, u = torch.linalg.eigh(sigma)
        out.append(xc @ (u @ torch.diag(lam.rsqrt()) @ u.T))
        start += size
    return torch.cat(out, dim=1) * weight + bias


def _correlated(n=64, c=6):
    g = _gen(5)
    mix = torch.eye(c, dtype=D) + 0.6 * torch.rand(c, c, generator=g, dtype=D)
    return 2.0 + torch.randn(n, c, generator=g, dtype=D) @ mix


@pytest.mark.parametrize("iterations, reference", [(None, "iternorm"), (40, "zca")])
def test_decorrelated_bn_matches_iternorm_and_zca(iterations, reference):
    # group_size 4 on 6 channels: groups [4, 2] (the remainder forms the last group)
    opts = {"group_size": 4} if iterations is None else {"group_size": 4,
                                                          "iterations": iterations}
    method = create_method("decorrelated_batch_norm", **opts)
    layer = method.norm(6, 0).double().train()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 6, dtype=D))
        layer.bias.copy_(torch.linspace(-0.3, 0.3, 6, dtype=D))
    x = _correlated()
    xl = x.clone().requires_grad_(True)
    y = layer(xl)
    up = torch.randn(y.shape, generator=_gen(6), dtype=D)
    (y * up).sum().backward()
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    if reference == "iternorm":
        yr = ref_iternorm(xr, [4, 2], w, b, method.eps, method.iterations)
        tol = 1e-8  # the plain recursion rounds differently from normlab's coupled form
    else:
        yr = ref_zca(xr, [4, 2], w, b, method.eps)
        tol = 1e-8
    (yr * up).sum().backward()
    for got, want in [(y, yr), (xl.grad, xr.grad), (layer.weight.grad, w.grad),
                      (layer.bias.grad, b.grad)]:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_kalman_skip_ratio_must_be_positive():
    with pytest.raises(ValueError, match="skip_ratio"):
        KalmanNorm(3, prev_features=2, skip_ratio=0.0)

"""Batch Kalman normalization and mixture normalization: torch's BatchNorm for the special
cases, and float64 transcriptions of normlab's own algorithms (EM initialization, sorting,
fusion) that pin the implementation's details. The references that share no code path with
normlab (the authors' fusion formula, a known two-mode mixture) are in
``test_references_batch_stats_advanced.py``."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab.lab.models import MODELS, build_model
from normlab.layers.kalman_norm import KalmanNorm
from normlab.layers.mixture_norm import MixtureNorm, gmm_fit_1d
from normlab.methods import create_method


def _channel_rows(x: np.ndarray) -> np.ndarray:
    """(N, C, *) -> (C, M), written independently of the library's helper."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    c, rest = shape[1], (shape[0],) + tuple(shape[2:])
    return np.moveaxis(rows.reshape((c,) + rest), 0, 1)


# ----------------------------------------------------------------- mixture normalization


def _bn_reference(layer_in: torch.Tensor) -> torch.nn.Module:
    return torch.nn.BatchNorm2d(layer_in.shape[1]) if layer_in.dim() == 4 \
        else torch.nn.BatchNorm1d(layer_in.shape[1])


@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (16, 5)])
def test_mixture_norm_with_one_component_is_batch_norm(shape):
    torch.manual_seed(3)
    x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
    layer = MixtureNorm(shape[1], components=1)
    bn = _bn_reference(x)
    with torch.no_grad():
        for mod in (layer, bn):
            mod.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
            mod.bias.copy_(torch.linspace(-0.2, 0.2, shape[1]))
    g = torch.randn(shape)
    y = layer(x)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    y_bn = bn(x)
    (gx_bn,) = torch.autograd.grad((y_bn * g).sum(), x)
    torch.testing.assert_close(y, y_bn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_bn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_means[:, 0], bn.running_mean)
    torch.testing.assert_close(layer.running_vars[:, 0], bn.running_var)
    layer.eval()
    bn.eval()
    torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)


def test_gmm_fit_recovers_two_modes():
    torch.manual_seed(4)
    m = 4000
    modes = torch.cat([torch.randn(m // 4) * 0.5 - 3.0, torch.randn(3 * m // 4) * 1.0 + 4.0])
    xm = torch.stack([modes[torch.randperm(m)], torch.randn(m)])
    weights, means, variances = gmm_fit_1d(xm, components=2, em_iterations=3, eps=1e-5)
    torch.testing.assert_close(means[0], torch.tensor([-3.0, 4.0]), atol=0.1, rtol=0)
    torch.testing.assert_close(weights[0], torch.tensor([0.25, 0.75]), atol=0.02, rtol=0)
    torch.testing.assert_close(variances[0], torch.tensor([0.25, 1.0]), atol=0.1, rtol=0)
    # Before any EM step: the clusters of the nearest of mean +- std (split at the mean).
    init_weights, init_means, _ = gmm_fit_1d(xm, components=2, em_iterations=0, eps=1e-5)
    row = xm[0]
    below = row < row.mean()
    torch.testing.assert_close(init_means[0], torch.stack([row[below].mean(),
                                                           row[~below].mean()]))
    torch.testing.assert_close(init_weights[0, 0], below.double().mean().float())


def _mixture_reference(x: np.ndarray, k: int, iters: int, eps: float) -> tuple[np.ndarray, ...]:
    """Float64 loop version: EM per channel from the documented init, then the transform."""
    rows = _channel_rows(x.astype(np.float64))
    out = np.zeros_like(rows)
    params = []
    for c, v in enumerate(rows):
        mu, sd = v.mean(), v.std()
        centres = mu + sd * (np.linspace(-1, 1, k) if k > 1 else np.zeros(1))
        nearest = np.array([np.argmin(np.abs(centres - value)) for value in v])
        lam, means, var = np.zeros(k), centres.copy(), np.full(k, sd ** 2)
        for j in range(k):
            members = v[nearest == j]
            lam[j] = len(members) / len(v)
            if len(members):
                means[j], var[j] = members.mean(), members.var()

        def resp(lam, means, var):
            dens = np.array([lam[j] / np.sqrt(2 * np.pi * (var[j] + eps))
                             * np.exp(-(v - means[j]) ** 2 / (2 * (var[j] + eps)))
                             for j in range(k)])
            return dens / dens.sum(axis=0)

        for _ in range(iters):
            tau = resp(lam, means, var)
            lam = tau.mean(axis=1)
            means = (tau * v).sum(axis=1) / tau.sum(axis=1)
            var = np.array([(tau[j] * (v - means[j]) ** 2).sum() / tau[j].sum()
                            for j in range(k)])
        order = np.argsort(means)
        lam, means, var = lam[order], means[order], var[order]
        tau = resp(lam, means, var)
        lam = tau.mean(axis=1)
        means = (tau * v).sum(axis=1) / tau.sum(axis=1)
        var = np.array([(tau[j] * (v - means[j]) ** 2).sum() / tau[j].sum() for j in range(k)])
        for j in range(k):
            out[c] += tau[j] / np.sqrt(lam[j]) * (v - means[j]) / np.sqrt(var[j] + eps)
        params.append((lam, means, var))
    return _from_rows(out, x.shape), params


def test_mixture_norm_matches_float64_loop_reference():
    torch.manual_seed(5)
    x = torch.randn(12, 3, 2, 2, dtype=torch.float64)
    x[:6, 0] += 4.0  # a bimodal channel
    layer = MixtureNorm(3, components=2, em_iterations=2, affine=False, dtype=torch.float64)
    ref, params = _mixture_reference(x.numpy(), 2, 2, layer.eps)
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(layer.running_means[0].numpy(),
                               0.9 * np.array([-1.0, 1.0]) + 0.1 * params[0][1], atol=1e-9)


def test_mixture_norm_finite_on_degenerate_channels():
    x = torch.randn(8, 4, 3, 3)
    x[:, 1] = 2.0  # constant channel
    x[:4, 2] = -1.0  # half the channel at one value
    layer = MixtureNorm(4, components=3)
    y = layer(x.requires_grad_(True))
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    layer.eval()
    assert torch.isfinite(layer(x)).all()


def test_mixture_norm_eval_uses_running_mixture():
    torch.manual_seed(6)
    x = torch.randn(32, 2, dtype=torch.float64)
    x[:16, 0] += 5.0
    layer = MixtureNorm(2, components=2, momentum=1.0, affine=False, dtype=torch.float64)
    layer(x)
    lam, mu, var = (t.numpy() for t in (layer.running_weights, layer.running_means,
                                        layer.running_vars))
    layer.eval()
    y = layer(x).detach().numpy()
    eps = layer.eps
    for c in range(2):
        v = x[:, c].numpy()
        dens = np.array([lam[c, j] / np.sqrt(2 * np.pi * (var[c, j] + eps))
                         * np.exp(-(v - mu[c, j]) ** 2 / (2 * (var[c, j] + eps)))
                         for j in range(2)])
        tau = dens / dens.sum(axis=0)
        expected = sum(tau[j] / np.sqrt(lam[c, j]) * (v - mu[c, j]) / np.sqrt(var[c, j] + eps)
                       for j in range(2))
        np.testing.assert_allclose(y[:, c], expected, atol=1e-10)
    torch.testing.assert_close(layer(x[:5]), layer(x)[:5])


# ----------------------------------------------------------------- batch Kalman norm


def _chain(gain: float, dtype=torch.float64) -> tuple[KalmanNorm, KalmanNorm]:
    first = KalmanNorm(3, gain=gain, dtype=dtype)
    second = KalmanNorm(2, gain=gain, prev_features=3, dtype=dtype)
    second.link(first)
    return first, second


def test_kalman_norm_with_gain_one_is_batch_norm():
    torch.manual_seed(7)
    first, second = _chain(1.0, dtype=torch.float32)
    with torch.no_grad():
        second.transition.normal_()  # irrelevant when p = 1
    x1, x2 = torch.randn(8, 3, 4, 4) * 3 + 1, torch.randn(8, 2, 4, 4) - 2
    bn1, bn2 = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(2)
    torch.testing.assert_close(first(x1), bn1(x1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second(x2), bn2(x2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second.running_mean, bn2.running_mean)
    torch.testing.assert_close(second.running_var, bn2.running_var)


def test_kalman_norm_fused_statistics_by_hand():
    torch.manual_seed(8)
    p = 0.7
    first, second = _chain(p)
    a = np.array([[0.5, -1.0, 0.2], [0.0, 0.3, 2.0]])
    b, log_r = np.array([0.1, -0.4]), np.array([0.0, math.log(0.5)])
    with torch.no_grad():
        second.transition.copy_(torch.from_numpy(a))
        second.transition_bias.copy_(torch.from_numpy(b))
        second.log_noise_var.copy_(torch.from_numpy(log_r))
    x1 = torch.randn(5, 3, dtype=torch.float64) * 2 + 1
    x2 = torch.randn(5, 2, dtype=torch.float64) + 3
    first(x1)
    y = second(x2).detach().numpy()
    # by hand, per channel, in float64
    m1, v1 = x1.numpy().mean(0), x1.numpy().var(0)
    pred_m = np.array([sum(a[i, j] * m1[j] for j in range(3)) + b[i] for i in range(2)])
    pred_v = np.array([sum(a[i, j] ** 2 * v1[j] for j in range(3)) + math.exp(log_r[i])
                       for i in range(2)])
    m2, v2 = x2.numpy().mean(0), x2.numpy().var(0)
    fm = p * m2 + (1 - p) * pred_m
    fv = p * v2 + (1 - p) * pred_v + p * (1 - p) * (m2 - pred_m) ** 2
    np.testing.assert_allclose(second.last_mean.detach().numpy(), fm, atol=1e-12)
    np.testing.assert_allclose(second.last_var.detach().numpy(), fv, atol=1e-12)
    np.testing.assert_allclose(y, (x2.numpy() - fm) / np.sqrt(fv + second.eps), atol=1e-12)
    fv_unbiased = p * v2 * 5 / 4 + (1 - p) * pred_v + p * (1 - p) * (m2 - pred_m) ** 2
    np.testing.assert_allclose(second.running_var.numpy(), 0.9 + 0.1 * fv_unbiased, atol=1e-12)
    # eval: running statistics only, and the eval map is the per-channel affine it reports
    second.eval()
    scale, shift = second.eval_affine()
    torch.testing.assert_close(second(x2), x2 * scale + shift)


def test_kalman_norm_default_prior_and_gradient_to_transition():
    first, second = _chain(0.5)
    x1 = torch.randn(6, 3, dtype=torch.float64)
    x2 = (torch.randn(6, 2, dtype=torch.float64) * 3).requires_grad_(True)
    first(x1)
    second(x2).pow(3).sum().backward()
    # A = 0, b = 0, r = 1 at init: the prior is N(0, 1).
    m, v = x2.detach().mean(0), x2.detach().var(0, unbiased=False)
    torch.testing.assert_close(second.last_var.detach(), 0.5 * v + 0.5 + 0.25 * m ** 2)
    assert second.transition.grad.abs().sum() > 0


def test_kalman_norm_without_prior_or_with_stale_prior():
    first, second = _chain(0.9)
    x2 = torch.randn(4, 2, dtype=torch.float64)
    # predecessor never ran: no prior, plain batch statistics
    torch.testing.assert_close(second(x2), F.batch_norm(x2, None, None, training=True))
    first(torch.randn(4, 3, dtype=torch.float64))
    second(torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="did not run"):
        second(torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects 3"):
        KalmanNorm(2, prev_features=3).link(KalmanNorm(4))
    with pytest.raises(RuntimeError, match="not linked"):
        KalmanNorm(2, prev_features=3).train()(torch.randn(4, 2))


@pytest.mark.parametrize("arch, widths", [("cnn", [32, 16, 8]), ("mlp", [100, 100, 100])])
def test_kalman_layers_are_chained_in_forward_order(arch, widths):
    method = create_method("kalman_norm")
    model = build_model(arch, method, (1, 28, 28), 10)
    layers = [m for m in model.modules() if isinstance(m, KalmanNorm)]
    assert [layer.num_features for layer in layers] == widths
    assert layers[0].prev is None and not hasattr(layers[0], "transition")
    for prev, layer in zip(layers, layers[1:]):
        assert layer.prev is prev
        assert layer.transition.shape == (layer.num_features, prev.num_features)
    # the same instance builds a second model as a fresh chain
    again = [m for m in build_model(arch, method, (1, 28, 28), 10).modules()
             if isinstance(m, KalmanNorm)]
    assert again[0].prev is None and again[1].prev is again[0]
    # a model copy links to its own layers
    copied = [m for m in copy.deepcopy(model).modules() if isinstance(m, KalmanNorm)]
    assert copied[1].prev is copied[0]


def test_kalman_method_detects_chains_across_models():
    method = create_method("kalman_norm")
    MODELS.get("cnn")(method, (1, 28, 28), 10)  # built without build_model: chain stays open
    second = MODELS.get("mlp")(method, (1, 28, 28), 10)
    with pytest.raises(ValueError, match="another model"):
        method.prepare(second)
    method.reset_chain()
    third = MODELS.get("mlp")(method, (1, 28, 28), 10)
    assert method.prepare(third) is third

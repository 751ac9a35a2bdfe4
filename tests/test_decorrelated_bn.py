"""Decorrelated batch normalization against a naive float64 ZCA reference, and what the
three richer batch norms (Kalman, mixture, decorrelated) share: metadata, training in the
paper models, state round trips and bfloat16 autocast."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab.functional.whitening import newton_schulz_inv_sqrt, whitening_groups
from normlab.lab.models import build_model
from normlab.layers.decorrelated_bn import DecorrelatedBatchNorm
from normlab.layers.kalman_norm import KalmanNorm
from normlab.layers.mixture_norm import MixtureNorm
from normlab.methods import METHODS, create_method

NAMES = ["kalman_norm", "mixture_norm", "decorrelated_batch_norm"]


def _channel_rows(x: np.ndarray) -> np.ndarray:
    """(N, C, *) -> (C, M), written independently of the library's helper."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    c, rest = shape[1], (shape[0],) + tuple(shape[2:])
    return np.moveaxis(rows.reshape((c,) + rest), 0, 1)


# ----------------------------------------------------------------- decorrelated batch norm


def test_whitening_groups_split_with_remainder():
    assert whitening_groups(100, 16) == [16] * 6 + [4]
    assert whitening_groups(32, 16) == [16, 16]
    assert whitening_groups(8, 16) == [8]
    with pytest.raises(ValueError, match="group_size"):
        whitening_groups(8, 0)


def test_newton_schulz_converges_to_eigh_inverse_sqrt():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 5))
    cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(5)
    lam, u = np.linalg.eigh(cov)
    expected = u @ (u.transpose(0, 2, 1) / np.sqrt(lam)[:, :, None])
    got = newton_schulz_inv_sqrt(torch.from_numpy(cov), iterations=40).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)


def _zca_reference(x: np.ndarray, group: int, eps: float) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Naive float64 group ZCA by numpy eigh: output, mean, block-diagonal whitening."""
    rows = _channel_rows(x.astype(np.float64))
    c, m = rows.shape
    mean = rows.mean(axis=1)
    out = np.zeros_like(rows)
    whitening = np.zeros((c, c))
    for start in range(0, c, group):
        stop = min(start + group, c)
        xc = rows[start:stop] - mean[start:stop, None]
        cov = sum(np.outer(xc[:, j], xc[:, j]) for j in range(m)) / m
        lam, u = np.linalg.eigh(cov + eps * np.eye(stop - start))
        w = u @ np.diag(lam ** -0.5) @ u.T
        whitening[start:stop, start:stop] = w
        out[start:stop] = w @ xc
    return _from_rows(out, x.shape), mean, whitening


def test_dbn_matches_naive_zca_reference_with_affine():
    torch.manual_seed(0)
    x = torch.randn(16, 6, 3, 3, dtype=torch.float64)
    x[:, 1] += 0.8 * x[:, 0]  # correlate channels within the first group
    x[:, 5] -= 0.5 * x[:, 4]  # and within the remainder group
    layer = DecorrelatedBatchNorm(6, group_size=4, iterations=40, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, 6))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    y = layer(x).detach().numpy()
    ref, _, _ = _zca_reference(x.numpy(), 4, layer.eps)
    w = layer.weight.detach().numpy()[None, :, None, None]
    b = layer.bias.detach().numpy()[None, :, None, None]
    np.testing.assert_allclose(y, ref * w + b, atol=1e-7)


def test_dbn_whitens_correlated_gaussian_per_group_by_default():
    torch.manual_seed(1)
    c, n = 24, 4096
    mixing = torch.eye(c) + 0.4 * torch.randn(c, c) / math.sqrt(c)
    x = torch.randn(n, c) @ mixing.T * 3.0 + 5.0
    layer = DecorrelatedBatchNorm(c, group_size=16)  # groups [16, 8], default iterations
    assert layer.groups == [16, 8]
    y = layer(x).detach()
    yc = y - y.mean(0)
    cov = yc.T @ yc / n
    xc = x - x.mean(0)
    assert ((xc.T @ xc / n)[:16, :16] - torch.eye(16)).abs().max() > 1.0  # not white before
    for sl in (slice(0, 16), slice(16, 24)):
        block = cov[sl, sl]
        torch.testing.assert_close(block, torch.eye(block.shape[0]), atol=0.03, rtol=0)


def test_dbn_running_stats_and_eval():
    torch.manual_seed(2)
    x = torch.randn(64, 5, dtype=torch.float64)
    x[:, 2] += x[:, 0]
    layer = DecorrelatedBatchNorm(5, group_size=3, iterations=40, momentum=0.1,
                                  dtype=torch.float64)
    train_out = layer(x)
    _, mean, whitening = _zca_reference(x.numpy(), 3, layer.eps)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.1 * mean, atol=1e-10)
    np.testing.assert_allclose(layer.running_whitening.numpy(),
                               0.9 * np.eye(5) + 0.1 * whitening, atol=1e-7)
    layer.eval()
    expected = (x.numpy() - layer.running_mean.numpy()) @ layer.running_whitening.numpy().T
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-10)
    # Eval is a per-sample map: a sample's output does not depend on its batch.
    torch.testing.assert_close(layer(x[:3]), layer(x)[:3])
    # With momentum 1 the running statistics are the last batch's: eval == train on it.
    layer1 = DecorrelatedBatchNorm(5, group_size=3, iterations=40, momentum=1.0,
                                   dtype=torch.float64)
    out1 = layer1(x)
    layer1.eval()
    torch.testing.assert_close(layer1(x), out1)
    assert not torch.allclose(train_out, x)


def test_dbn_warns_on_singular_batch_covariance():
    layer = DecorrelatedBatchNorm(8, group_size=8)
    with pytest.warns(RuntimeWarning, match="singular"):
        layer(torch.randn(4, 8))


# ----------------------------------------------------------------- all three, in the models


@pytest.mark.parametrize("name", NAMES)
def test_method_claims(name):
    """What the metadata says, shown on the layer and the built model."""
    method = create_method(name)
    assert name in METHODS and "arXiv:" in method.paper
    torch.manual_seed(11)
    layer = method.norm(6, 2).train()  # kind "layer": it inserts one
    x = torch.randn(8, 6, 3, 3)
    other = x.clone()
    other[1:] = other[1:] * 2 + 1
    shift = torch.randn(1, 6, 1, 1) * 3
    with torch.no_grad():
        out = copy.deepcopy(layer)(x)
        # batch_dependent: sample 0's training output moves with the rest of the batch
        assert not torch.allclose(copy.deepcopy(layer)(other)[0], out[0], atol=1e-3)
        # conv_bias=False: the layer absorbs a per-channel shift, so a bias would be redundant
        torch.testing.assert_close(copy.deepcopy(layer)(x + shift), out, atol=1e-5, rtol=1e-4)
    model = build_model("cnn", create_method(name), (1, 8, 8), 4)  # a Kalman chain per model
    weights = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(w.bias is None for w in weights[:-1])  # the classifier keeps its bias


@pytest.mark.parametrize("name, bad", [("kalman_norm", {"gain": 1.5}),
                                       ("mixture_norm", {"components": 0}),
                                       ("decorrelated_batch_norm", {"group_size": 0})])
def test_bad_options_raise(name, bad):
    with pytest.raises(ValueError):
        create_method(name, **bad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_builds_trains_evals_and_round_trips(name, arch):
    torch.manual_seed(9)
    model = build_model(arch, create_method(name), (1, 28, 28), 10)
    x = torch.randn(32 if arch == "mlp" else 4, 1, 28, 28)
    labels = torch.arange(x.shape[0]) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        logits = model(x)
        assert torch.isfinite(logits).all()
        F.cross_entropy(logits, labels).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(x[:3]), out[:3])  # eval is per sample
    clone = build_model(arch, create_method(name), (1, 28, 28), 10)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), out)


LAYERS = {
    "kalman_norm": lambda: KalmanNorm(6),
    "mixture_norm": lambda: MixtureNorm(6),
    "decorrelated_batch_norm": lambda: DecorrelatedBatchNorm(6, group_size=3),
}


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_uses_float32_statistics(name):
    """Under CPU bfloat16 autocast the layers compute exactly what they compute in float32 on
    the (exactly upcast) bfloat16 input, keep float32 buffers and return bfloat16."""
    torch.manual_seed(10)
    x = (torch.randn(16, 6, 3, 3) * 2 + 1).bfloat16()
    auto, ref = LAYERS[name](), LAYERS[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = auto(x)
    y_ref = ref(x.float())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y_ref.to(torch.bfloat16))
    for (key, a), (_, b) in zip(auto.named_buffers(), ref.named_buffers()):
        assert a.dtype == torch.float32, key
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if name != "mixture_norm":  # 0.1 * the float64 batch mean: no bfloat16 rounding in it
        mean = x.double().mean(dim=(0, 2, 3)) * 0.1
        torch.testing.assert_close(auto.running_mean.double(), mean, rtol=0, atol=1e-6)
    y.float().square().sum().backward()
    assert auto.weight.grad.dtype == torch.float32 and torch.isfinite(auto.weight.grad).all()
    auto.eval()
    ref.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y_eval = auto(x)
    assert y_eval.dtype == torch.bfloat16
    assert torch.equal(y_eval, ref(x.float()).detach().to(torch.bfloat16))

"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275): with r = 1, d = 0 it is torch's
BatchNorm, r and d clip as computed by hand, no gradient flows through r and d (a float64
reference that can tell), the limits' warm-up schedule, and eval with running statistics.

The layer contract it shares with the dispersion batch norms: tests/test_batch_norms.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from normlab import functional as F
from normlab.layers import BatchRenorm

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

"""The fused L1 / top-k / Range batch norm training step (analytic backward) against plain
autograd through the differentiable ``*_moments`` functions and the affine map (Hoffer et al.
2018, arXiv:1803.01814; Banner et al. 2018, arXiv:1805.11046)."""

from __future__ import annotations

import pytest
import torch

from normlab.functional import dispersion_batch_norm as F

EPS = 1e-3


def reference(x, w, b, kind, **kw):
    """Autograd through the moments: the formulation the fused path must reproduce."""
    moments = {"l1": F.l1_moments, "linf": F.linf_moments, "range": F.range_moments}[kind]
    mean, disp = moments(x, **kw)
    return F.dispersion_normalize(x, mean, disp, w, b, EPS), mean, disp


def fused(x, w, b, kind, running, **kw):
    fn = {"l1": F.l1_batch_norm, "linf": F.linf_batch_norm, "range": F.range_batch_norm}[kind]
    return fn(x, *running, w, b, training=True, momentum=1.0, eps=EPS, **kw)


CASES = [("l1", {}), ("linf", {"k": 3}), ("linf", {"k": 10, "correction": "paper"}),
         ("linf", {"k": 500}), ("range", {}), ("range", {"correction": "paper"})]
SHAPES = [(6, 3, 4, 5), (20, 4), (5, 2, 7)]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind, kw", CASES)
def test_fused_matches_autograd_through_moments(kind, kw, shape, affine):
    torch.manual_seed(0)
    x0 = torch.randn(shape, dtype=torch.float64) * 2 + 1
    c = shape[1]
    w0 = torch.rand(c, dtype=torch.float64) + 0.5 if affine else None
    b0 = torch.randn(c, dtype=torch.float64) if affine else None
    g = torch.randn(shape, dtype=torch.float64)
    results = []
    for use_fused in (True, False):
        x = x0.clone().requires_grad_(True)
        w = None if w0 is None else w0.clone().requires_grad_(True)
        b = None if b0 is None else b0.clone().requires_grad_(True)
        running = (torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64))
        if use_fused:
            y = fused(x, w, b, kind, running, **kw)
            stats = running  # momentum 1: the running statistics are the batch's
            if kind == "range":  # ... scaled by C(n) / R(n) for the running dispersion
                n = x0.numel() // c
                stats = (running[0],
                         running[1] / F.range_running_factor(n, kw.get("correction", "exact")))
        else:
            y, *stats = reference(x, w, b, kind, **kw)
        y.backward(g)
        grads = [x.grad] + ([w.grad, b.grad] if affine else [])
        results.append((y.detach(), [s.detach() for s in stats], grads))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    for a, e in zip(s1 + g1, s2 + g2):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_fused_channels_last_and_float32():
    torch.manual_seed(1)
    x = (torch.randn(4, 3, 5, 5) * 3).contiguous(memory_format=torch.channels_last)
    for kind, kw in CASES:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        g = torch.randn(x.shape)
        fused(xa, None, None, kind, (torch.zeros(3), torch.ones(3)), **kw).backward(g)
        reference(xb, None, None, kind, **kw)[0].backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


def test_range_ties_get_the_same_total_gradient():
    """On tied maxima autograd's amax splits the gradient evenly, the fused path gives it to
    one entry: both are subgradients with the same sum over the tied entries."""
    torch.manual_seed(2)
    x0 = torch.randn(8, 2, 3, dtype=torch.float64)
    x0[1, 0, 2] = x0[5, 0, 0] = x0[:, 0].max() + 1.0  # two tied maxima in channel 0
    g = torch.randn_like(x0)
    grads = []
    for use_fused in (True, False):
        x = x0.clone().requires_grad_(True)
        if use_fused:
            fused(x, None, None, "range", (torch.zeros(2, dtype=torch.float64),
                                           torch.ones(2, dtype=torch.float64))).backward(g)
        else:
            reference(x, None, None, "range")[0].backward(g)
        grads.append(x.grad)
    tied = [(1, 0, 2), (5, 0, 0)]
    total = [sum(gr[i] for i in tied) for gr in grads]
    torch.testing.assert_close(total[0], total[1], rtol=1e-10, atol=1e-12)
    assert not torch.equal(grads[0][1, 0, 2], grads[1][1, 0, 2])  # the split does differ
    mask = torch.ones_like(x0, dtype=torch.bool)
    for i in tied:
        mask[i] = False
    torch.testing.assert_close(grads[0][mask], grads[1][mask], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, kw", CASES[:2] + CASES[4:5])
def test_fused_gradcheck_without_affine(kind, kw):
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fused(x, None, None, kind, (None, None), **kw),
                                    (x,))

"""The standardization loss (arXiv:1903.00925, eq. 1-2) against independent references."""

import math

import numpy as np
import pytest
import torch

from normlab.functional import channel_moments, standardization_loss


def exactly_standardized(shape, channel_dim=1, dtype=torch.float64):
    """z with per-channel mean exactly 0 and biased variance exactly 1 (up to rounding)."""
    z = torch.randn(shape, dtype=dtype)
    dims = tuple(d for d in range(z.dim()) if d != channel_dim % z.dim())
    z = z - z.mean(dims, keepdim=True)
    return z / z.pow(2).mean(dims, keepdim=True).sqrt()


def naive_loss(x: np.ndarray, channel_dim: int, eps: float) -> float:
    """Per-channel python loop in float64: 0.5 * sum_c (mu^2 + var - log(var + eps) - 1)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), channel_dim, 0)
    total = 0.0
    for c in range(x.shape[0]):
        v = x[c].ravel()
        mu = sum(v) / len(v)
        var = sum((t - mu) ** 2 for t in v) / len(v)
        total += 0.5 * (mu * mu + var - math.log(var + eps) - 1.0)
    return total


@pytest.mark.parametrize("shape,cd", [((64, 5), 1), ((16, 4, 7), 1), ((8, 3, 6, 5), 1),
                                      ((6, 9, 4), -1), ((4, 3, 2, 3, 2), 1)])
def test_closed_form_for_affine_of_standardized(shape, cd):
    # x = a + b z with z standardized per channel: mu = a, var = b^2, so the KL is in closed form.
    z = exactly_standardized(shape, cd)
    c = shape[cd]
    a = torch.randn(c, dtype=torch.float64) * 2
    b = torch.rand(c, dtype=torch.float64) * 3 + 0.1
    view = [1] * len(shape)
    view[cd] = c
    x = a.view(view) + b.view(view) * z
    expected = 0.5 * torch.sum(a**2 + b**2 - torch.log(b**2) - 1)
    got = standardization_loss(x, channel_dim=cd, eps=0.0)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_matches_naive_loop_with_eps():
    x = torch.randn(5, 3, 4, 2, dtype=torch.float64) * 1.7 + 0.4
    got = standardization_loss(x, eps=1e-3).item()
    assert got == pytest.approx(naive_loss(x.numpy(), 1, 1e-3), rel=1e-12)


def test_about_zero_on_standard_normal_samples():
    x = torch.randn(4096, 16, 4, 4)
    loss = standardization_loss(x)
    # Per channel the KL of the sample moments is O(1/M); M = 65536 here.
    assert 0 <= loss.item() < 16 * 1e-3


def test_is_a_sum_over_channels_not_a_mean():
    x = torch.randn(256, 1, dtype=torch.float64) * 2 + 1
    one = standardization_loss(x)
    four = standardization_loss(x.repeat(1, 4))
    assert torch.allclose(four, 4 * one)


def test_gradcheck_float64():
    x = (torch.randn(6, 3, 4, 4, dtype=torch.float64) * 1.5 + 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: standardization_loss(t, eps=1e-5), (x,))
    y = (torch.randn(7, 5, 3, dtype=torch.float64) + 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: standardization_loss(t, channel_dim=-1), (y,))


def test_gradient_matches_paper_formula():
    # dL/dx = (mu + (1 - 1/(var + eps)) (x - mu)) / M, from differentiating eq. 2.
    x = (torch.randn(10, 3, 2, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    eps = 1e-4
    standardization_loss(x, eps=eps).backward()
    mu = x.detach().mean((0, 2, 3), keepdim=True)
    var = (x.detach() - mu).pow(2).mean((0, 2, 3), keepdim=True)
    expected = (mu + (1 - 1 / (var + eps)) * (x.detach() - mu)) / 40
    assert torch.allclose(x.grad, expected, rtol=1e-10, atol=1e-12)


def test_float32_exact_when_mean_dwarfs_std():
    # sum/sum-of-squares would lose all digits of var here; two passes keep them.
    torch.manual_seed(1)
    x64 = torch.randn(128, 8, 6, 6, dtype=torch.float64) * 0.5 + 1000.0
    ref = naive_loss(x64.numpy(), 1, 1e-5)
    got = standardization_loss(x64.float()).item()
    assert got == pytest.approx(ref, rel=1e-5)
    _, var = channel_moments(x64.float())
    assert torch.allclose(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_reduce_in_float32(dtype):
    x = (torch.randn(32, 4, 3, 3) * 2 + 1).to(dtype)
    got = standardization_loss(x)
    assert got.dtype == torch.float32
    # The half values are exact in float64; a float32 reduction over n values per channel is
    # within n * 2^-24 (relative) of the exact sums, so the loss is too, with room to spare.
    ref = naive_loss(x.double().numpy(), 1, 1e-5)
    n = x.numel() // x.shape[1]
    assert got.item() == pytest.approx(ref, rel=n * 2.0**-24)
    # negative control: a reduction in the half type itself misses by far more than that
    half_mean = x.mean((0, 2, 3), keepdim=True)
    half_var = (x - half_mean).pow(2).mean((0, 2, 3))
    half = 0.5 * (half_mean.flatten() ** 2 + half_var - torch.log(half_var + 1e-5) - 1).sum()
    assert abs(half.double().item() - ref) > n * 2.0**-24 * abs(ref)


def test_constant_channel_is_finite_thanks_to_eps():
    x = torch.ones(8, 2, 3, 3)
    loss = standardization_loss(x, eps=1e-5)
    expected = 2 * 0.5 * (1 + 0 - math.log(1e-5) - 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bad,match", [
    (torch.ones(4, 3, dtype=torch.int64), "floating"),
    (torch.ones(4), ">= 2 dims"),
    (torch.ones(1, 3), "at least 2 values per channel"),
    (torch.ones(0, 3), "empty"),
])
def test_bad_input_raises_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        standardization_loss(bad)


def test_channel_dim_out_of_range():
    with pytest.raises(ValueError, match="channel_dim=3 is out of range"):
        standardization_loss(torch.randn(4, 3, 2), channel_dim=3)

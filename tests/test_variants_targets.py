"""The variant targets of the standardization loss against float64 references written here.

Decorrelation: numpy's covariance and slogdet in the closed form
0.5 (tr Sigma + mu^T mu - log det Sigma - G). Laplace: the KL of two Laplace densities by
numerical quadrature (not the closed form). Bernoulli: math.erf and the Bernoulli KL per
channel in plain Python floats.
"""

import math

import numpy as np
import pytest
import torch

from normlab.functional.gaussian_kl import channel_groups, grouped_gaussian_kl
from normlab.functional.sparse_kl import bernoulli_activity_kl, laplace_kl
from normlab.losses.targets import BernoulliActivityLoss, DecorrelationLoss, LaplaceLoss


def _rows(x: np.ndarray, cd: int) -> np.ndarray:
    return np.moveaxis(x, cd, -1).reshape(-1, x.shape[cd])


def gaussian_kl_reference(x: np.ndarray, cd: int, sizes: list[int], eps: float) -> float:
    rows = _rows(x.astype(np.float64), cd)
    total, start = 0.0, 0
    for g in sizes:
        block = rows[:, start:start + g]
        mu = block.mean(0)
        sigma = np.cov(block, rowvar=False, bias=True).reshape(g, g) + eps * np.eye(g)
        sign, logdet = np.linalg.slogdet(sigma)
        assert sign > 0
        total += 0.5 * (np.trace(sigma) - g * eps + mu @ mu - logdet - g)
        start += g
    return total


def _correlated(shape, cd, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = shape[cd]
    mix = torch.randn(c, c, generator=g, dtype=torch.float64) / math.sqrt(c) + torch.eye(c)
    rows = torch.randn(math.prod(shape) // c, c, generator=g, dtype=torch.float64) @ mix.T
    rows = rows * 1.7 + torch.linspace(-1, 2, c, dtype=torch.float64)
    moved = [s for i, s in enumerate(shape) if i != cd % len(shape)] + [c]
    return rows.reshape(moved).movedim(-1, cd).to(dtype).contiguous()


@pytest.mark.parametrize("shape,cd,group", [((64, 12, 3, 3), 1, 4), ((200, 10), -1, 4),
                                            ((32, 5, 7), 1, 16), ((50, 9), 1, 1)])
def test_grouped_kl_matches_float64_closed_form(shape, cd, group):
    x = _correlated(shape, cd)
    sizes = channel_groups(shape[cd], group)
    assert sum(sizes) == shape[cd]
    ref = gaussian_kl_reference(x.numpy(), cd, sizes, 1e-5)
    assert grouped_gaussian_kl(x, cd, group, 1e-5).item() == pytest.approx(ref, rel=1e-10)


def test_grouped_kl_is_float32_exact_for_moderate_groups():
    x = _correlated((256, 32, 4, 4), 1, dtype=torch.float32)
    ref = gaussian_kl_reference(x.double().numpy(), 1, [16, 16], 1e-5)
    assert grouped_gaussian_kl(x, 1, 16).item() == pytest.approx(ref, rel=2e-5)
    assert grouped_gaussian_kl(x, 1, 16).dtype == torch.float32


def test_grouped_kl_group_of_one_is_the_per_channel_loss_and_correlation_costs_more():
    x = _correlated((300, 6), -1)
    rows = x.numpy()
    mu, var = rows.mean(0), rows.var(0)
    per_channel = 0.5 * np.sum(mu ** 2 + var - np.log(var + 1e-5) - 1)
    assert grouped_gaussian_kl(x, -1, 1).item() == pytest.approx(per_channel, rel=1e-10)
    assert grouped_gaussian_kl(x, -1, 6).item() > per_channel + 0.01  # Hadamard's inequality


def test_grouped_kl_gradient():
    x = _correlated((40, 6), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: grouped_gaussian_kl(t, 1, 4, 1e-3), (x,))


def test_grouped_kl_zero_for_whitened_data():
    rows = torch.randn(500, 4, dtype=torch.float64)
    rows = rows - rows.mean(0)
    evals, evecs = torch.linalg.eigh(rows.T @ rows / 500)
    white = rows @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    assert grouped_gaussian_kl(white, 1, 4, 0.0).item() == pytest.approx(0.0, abs=1e-10)


def laplace_kl_quadrature(m: float, s: float, b: float) -> float:
    """KL(Laplace(m, s) || Laplace(0, b)) by the trapezoid rule on a fine float64 grid."""
    lo, hi = min(m, 0) - 60 * max(s, b), max(m, 0) + 60 * max(s, b)
    t = np.linspace(lo, hi, 2_000_001)
    logp = -np.log(2 * s) - np.abs(t - m) / s
    logq = -np.log(2 * b) - np.abs(t) / b
    return float(np.trapezoid(np.exp(logp) * (logp - logq), t))


@pytest.mark.parametrize("cd", [1, 2])
def test_laplace_kl_matches_quadrature_of_the_fitted_laplace(cd):
    torch.manual_seed(3)
    x = torch.distributions.Laplace(0.0, 1.0).sample((300, 4)).double()
    x = x * torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=torch.float64) \
        + torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64)
    rows = x.numpy()
    # channels in dim 1 of (30, 4, 10) or in dim 2 of (30, 10, 4): the same values per channel
    x = x.reshape(30, 10, 4).transpose(1, 2) if cd == 1 else x.reshape(30, 10, 4)
    ref = 0.0
    for c in range(4):
        m = rows[:, c].mean()
        s = np.abs(rows[:, c] - m).mean()
        ref += laplace_kl_quadrature(m, s, 1 / math.sqrt(2))
    assert laplace_kl(x, cd, eps=0.0).item() == pytest.approx(ref, rel=1e-6)


def test_laplace_kl_zero_at_the_target():
    b = 1 / math.sqrt(2)
    x = torch.tensor([[-b], [b]], dtype=torch.float64)  # mean 0, mean |x - m| = b
    assert laplace_kl(x, 1, eps=0.0).item() == pytest.approx(0.0, abs=1e-15)


def bernoulli_reference(x: np.ndarray, cd: int, rho: float, eps: float) -> float:
    rows = _rows(x.astype(np.float64), cd)
    total = 0.0
    for c in range(rows.shape[1]):
        mu, var = float(rows[:, c].mean()), float(rows[:, c].var())
        p = 0.5 * (1 + math.erf(mu / math.sqrt(var + eps) / math.sqrt(2)))
        total += p * math.log(p / rho) + (1 - p) * math.log((1 - p) / (1 - rho))
        total += 0.5 * (var - math.log(var + eps) - 1)
    return total


@pytest.mark.parametrize("rho", [0.1, 0.5])
def test_bernoulli_activity_kl_matches_per_channel_reference(rho):
    x = _correlated((64, 5, 3), 1)
    ref = bernoulli_reference(x.numpy(), 1, rho, 1e-5)
    assert bernoulli_activity_kl(x, 1, rho).item() == pytest.approx(ref, rel=1e-10)


def test_bernoulli_minimum_is_the_sparsity_level():
    """At fixed unit variance, the term is smallest where P(z > 0) = rho."""
    base = torch.randn(4000, 1, dtype=torch.float64)
    base = (base - base.mean()) / base.std(unbiased=False)
    shifts = torch.linspace(-2, 1, 301, dtype=torch.float64)
    vals = [bernoulli_activity_kl(base + s, 1, 0.2, 0.0).item() for s in shifts]
    best = float(shifts[int(np.argmin(vals))])
    assert best == pytest.approx(float(torch.special.ndtri(torch.tensor(0.2))), abs=0.02)


@pytest.mark.parametrize("bad", [
    lambda: grouped_gaussian_kl(torch.randn(4, 3), 1, 0),
    lambda: grouped_gaussian_kl(torch.randn(1, 3), 1, 2),
    lambda: laplace_kl(torch.randn(4, 3), 1, scale=0.0),
    lambda: bernoulli_activity_kl(torch.randn(4, 3), 1, rho=1.0),
])
def test_bad_input_is_one_clear_error(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("cls,fn,kw", [
    (DecorrelationLoss, lambda o, cd: grouped_gaussian_kl(o, cd, 3), {"group_size": 3}),
    (LaplaceLoss, lambda o, cd: laplace_kl(o, cd), {}),
    (BernoulliActivityLoss, lambda o, cd: bernoulli_activity_kl(o, cd, 0.3), {"rho": 0.3}),
])
def test_losses_hook_every_layer_with_their_target(cls, fn, kw):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3), torch.nn.ReLU(inplace=True),
                              torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5),
                              torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(16, 2, 6, 6)
    with cls(net, weight=0.5, **kw) as loss:
        net(x)
        got = loss()
    z1 = net[0](x)
    z2 = net[3](torch.relu(z1).flatten(1))
    want = 0.5 * (fn(z1, 1) + fn(z2, -1))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)

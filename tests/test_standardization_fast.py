"""The fast paths of the standardization loss (Collins, Ballé & Shlens 2019, arXiv:1903.00925)
against an independent float64 reference: the C++ kernel, the pure-torch path, the
torch.compile path, and the fallback when the kernel cannot be built."""

import pytest
import torch
from torch import nn

from normlab.functional import _std_loss_kernel as kernel_mod
from normlab.functional import standardization as S
from normlab.functional.standardization import standardization_loss
from normlab.losses.standardization import StandardizationLoss

EPS = 1e-5


def reference(x: torch.Tensor, channel_dim: int, eps: float = EPS) -> torch.Tensor:
    """The paper's eq. 1-2 in float64, channel by channel in a Python loop."""
    v = x.double().movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    total = torch.zeros((), dtype=torch.float64)
    for row in v:
        mu = row.sum() / row.numel()
        var = ((row - mu) ** 2).sum() / row.numel()
        total = total + 0.5 * (mu * mu + var - torch.log(var + eps) - 1.0)
    return total


def reference_grad(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    xd = x.detach().double().requires_grad_()
    reference(xd, channel_dim).backward()
    return xd.grad


@pytest.fixture(params=["kernel", "torch"])
def impl(request):
    """Run the test under each CPU implementation; restore "auto" after."""
    if request.param == "kernel" and not kernel_mod.load():
        pytest.skip(f"C++ kernel unavailable here: {kernel_mod.error()}")
    S.set_implementation(request.param)
    yield request.param
    S.set_implementation("auto")


SHAPES = [((64, 7), 1), ((64, 7), -1), ((8, 5, 9), 1), ((6, 5, 9), -1), ((4, 6, 5, 5), 1),
          ((3, 4, 2, 5, 3), 2), ((7, 3, 4), 0)]


@pytest.mark.parametrize("shape,cd", SHAPES)
def test_matches_float64_reference(impl, shape, cd):
    x = (torch.randn(shape) * 2 + 3).requires_grad_()
    loss = standardization_loss(x, channel_dim=cd)
    assert S.implementation(x) == impl
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference(x, cd), rtol=1e-6, atol=1e-5)
    loss.backward()
    torch.testing.assert_close(x.grad.double(), reference_grad(x, cd), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mu", [1000.0, -1000.0])
def test_float32_exact_when_mean_dwarfs_spread(impl, mu):
    # The gradient's (1 - 1/var) (x - mu) / M term exposes the variance: with var = 0.25 an
    # error d in var moves M * grad by about 8 d. Float32 rounding of M * grad (~1000) and of
    # the affine backward's two ~3000-sized terms allows ~2e-3; sum/sum-of-squares in float32
    # is off by more than 1e-2 in var here (checked below), i.e. > 8e-2 in M * grad.
    x = (torch.randn(256, 4, 6, 6) * 0.5 + mu).requires_grad_()
    m = x.numel() // 4
    standardization_loss(x).backward()
    ref = reference_grad(x, 1)
    assert (x.grad.double() - ref).abs().max() * m < 5e-3
    naive_var = (x * x).mean((0, 2, 3)) - x.mean((0, 2, 3)) ** 2
    true_var = x.detach().double().var((0, 2, 3), correction=0)
    assert (naive_var.double() - true_var).abs().max() > 1e-2  # the test can tell


def test_kernel_moments_at_large_mean():
    if not kernel_mod.load():
        pytest.skip(kernel_mod.error())
    for shape in [(512, 6, 1), (64, 6, 49)]:  # channels-last rows and channel-major rows
        x = torch.randn(shape) * 0.5 + 1000.0
        _, mean, var = torch.ops.normlab.std_loss_forward(x, EPS)
        xd = x.double()
        torch.testing.assert_close(mean, xd.mean((0, 2)), rtol=0, atol=1e-9)
        torch.testing.assert_close(var, xd.var((0, 2), correction=0), rtol=1e-7, atol=0)


@pytest.mark.parametrize("shape,cd", [((6, 3), 1), ((5, 3, 4), -1), ((3, 2, 3, 3), 1)])
def test_gradcheck(impl, shape, cd):
    x = (torch.randn(shape, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: standardization_loss(t, channel_dim=cd), (x,))


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_non_contiguous_inputs(impl, layout):
    base = torch.randn(6, 5, 4, 3) * 2 - 1
    x = base.to(memory_format=torch.channels_last) if layout == "channels_last" \
        else base.transpose(2, 3)
    x = x.detach().requires_grad_()
    loss = standardization_loss(x)
    loss.backward()
    torch.testing.assert_close(loss.double(), reference(x, 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), reference_grad(x, 1), rtol=1e-4, atol=1e-7)
    assert x.grad.shape == x.shape


def test_half_precision_reduced_in_float32(impl):
    x = (torch.randn(32, 4, 3, 3) + 1).to(torch.bfloat16)
    loss = standardization_loss(x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference(x.float(), 1), rtol=1e-6, atol=1e-5)


def test_double_backward_raises(impl):
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(standardization_loss(x), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


def test_kernel_independent_of_thread_count():
    if not kernel_mod.load():
        pytest.skip(kernel_mod.error())
    x = torch.randn(300, 40) * 3 + 2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.normlab.std_loss_forward(x.view(300, 40, 1), EPS)
        torch.set_num_threads(2)
        two = torch.ops.normlab.std_loss_forward(x.view(300, 40, 1), EPS)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [torch.zeros(0, 3), torch.ones(1, 4), torch.ones(4, dtype=torch.int64)])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        standardization_loss(bad)
    with pytest.raises(ValueError, match="channel_dim"):
        standardization_loss(torch.ones(4, 3), channel_dim=2)
    with pytest.raises(ValueError, match="eps"):
        standardization_loss(torch.randn(4, 3), eps=-1.0)


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """A process in which the kernel was never loaded and cannot be found."""
    monkeypatch.setattr(kernel_mod, "_state", {"tried": False, "ok": False, "error": ""})
    monkeypatch.setattr(kernel_mod, "_registered", lambda: False)
    monkeypatch.delenv("NORMLAB_CPU_KERNEL", raising=False)  # a shell may have disabled it
    yield monkeypatch
    S.set_implementation("auto")


def test_falls_back_to_torch_when_build_fails(fresh_kernel_state):
    def broken_build():
        raise RuntimeError("Error building extension: g++ not found")

    fresh_kernel_state.setattr(kernel_mod, "_build", broken_build)
    x = (torch.randn(32, 5, 4, 4) + 2).requires_grad_()
    with pytest.warns(RuntimeWarning, match="could not build"):
        loss = standardization_loss(x)
    assert S.implementation(x) == "torch" and "g++ not found" in kernel_mod.error()
    loss.backward()
    torch.testing.assert_close(loss.double(), reference(x, 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), reference_grad(x, 1), rtol=1e-4, atol=1e-7)
    with pytest.raises(RuntimeError, match="unavailable"):
        S.set_implementation("kernel")


def test_env_var_disables_kernel_without_building(fresh_kernel_state):
    fresh_kernel_state.setenv("NORMLAB_CPU_KERNEL", "0")
    fresh_kernel_state.setattr(kernel_mod, "_build", lambda: pytest.fail("must not build"))
    assert S.implementation() == "torch"
    assert kernel_mod.error() == "NORMLAB_CPU_KERNEL=0"


def test_set_implementation_rejects_unknown_names():
    with pytest.raises(ValueError, match="auto"):
        S.set_implementation("cuda")


def test_hooks_survive_torch_compile():
    # aot_eager runs dynamo and AOTAutograd (the graph capture inductor also uses) without
    # generating C++: the hooks' side effects and the compile path's gradient are what matter.
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(8, 1, 6, 6) * 2 + 1
    std = StandardizationLoss(model)
    model(x)
    eager = std()
    eager_grads = torch.autograd.grad(eager, list(model.parameters())[:4])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x)
    comp = std()
    comp_grads = torch.autograd.grad(comp, list(model.parameters())[:4])
    torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    std.remove()
    torch._dynamo.reset()

"""The fast paths of the standardization loss (Collins, Ballé & Shlens 2019, arXiv:1903.00925)
against an independent float64 reference: the pure-torch default, the opt-in C++ kernel, the
torch.compile path, and how the kernel's build fails, times out and falls back."""

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
    """Run the test under each CPU implementation; restore the default after.

    The kernel runs only where it is already built (``set_implementation("kernel")`` builds
    it, about a minute): the suite never waits on a compiler.
    """
    if request.param == "kernel" and not kernel_mod.load(build=False):
        pytest.skip(f"C++ kernel not built here {kernel_mod.error()}".strip())
    assert S.set_implementation(request.param) == request.param
    yield request.param
    S.set_implementation("torch")


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
    if not kernel_mod.load(build=False):
        pytest.skip("C++ kernel not built here")
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x = (torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * 3 + 2)
            x = x.view(300, 40, 1).requires_grad_()
            loss = torch.ops.normlab.std_loss(x, EPS)
            loss.backward()
            out.append((loss.detach(), x.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("bad", [torch.zeros(0, 3), torch.ones(1, 4), torch.ones(4, dtype=torch.int64)])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        standardization_loss(bad)
    with pytest.raises(ValueError, match="channel_dim"):
        standardization_loss(torch.ones(4, 3), channel_dim=2)
    with pytest.raises(ValueError, match="eps"):
        standardization_loss(torch.randn(4, 3), eps=-1.0)


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """A process in which the kernel was never loaded, with an empty build cache."""
    monkeypatch.setattr(kernel_mod, "_state", {"tried": False, "ok": False, "error": ""})
    monkeypatch.setattr(kernel_mod, "_registered", lambda: False)
    monkeypatch.setattr(kernel_mod, "build_directory", lambda: str(tmp_path / "ext"))
    monkeypatch.delenv("NORMLAB_CPU_KERNEL", raising=False)
    yield monkeypatch
    S.set_implementation("torch")


def test_default_never_builds(fresh_kernel_state):
    fresh_kernel_state.setattr(kernel_mod, "_build", lambda folder: pytest.fail("built"))
    x = (torch.randn(16, 4, 3, 3) + 1).requires_grad_()
    standardization_loss(x).backward()
    assert S.implementation(x) == "torch" and not kernel_mod._state["tried"]


def test_failed_build_warns_once_in_full_and_is_not_retried(fresh_kernel_state, recwarn):
    def broken_build(folder):
        raise RuntimeError("Error building extension:\nmain.cpp:3: error: no g++ here\n"
                           "ninja: build stopped: subcommand failed.")

    fresh_kernel_state.setattr(kernel_mod, "_build", broken_build)
    assert S.set_implementation("kernel") == "torch"
    assert S.set_implementation("kernel") == "torch"  # no second warning, no second build
    warned = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1 and "no g++ here" in warned[0] and "subcommand failed" in warned[0]
    x = (torch.randn(32, 5, 4, 4) + 2).requires_grad_()
    loss = standardization_loss(x)
    loss.backward()
    assert S.implementation(x) == "torch"
    torch.testing.assert_close(loss.double(), reference(x, 1), rtol=1e-6, atol=1e-5)
    # Another process (fresh state) reads the recorded error instead of compiling again.
    fresh_kernel_state.setattr(kernel_mod, "_state", {"tried": False, "ok": False, "error": ""})
    fresh_kernel_state.setattr(kernel_mod, "_build", lambda folder: pytest.fail("rebuilt"))
    with pytest.warns(RuntimeWarning, match="no g\\+\\+ here"):
        assert not kernel_mod.load()
    assert "earlier build failed" in kernel_mod.error()


def test_env_var_disables_kernel_without_building(fresh_kernel_state):
    fresh_kernel_state.setenv("NORMLAB_CPU_KERNEL", "0")
    fresh_kernel_state.setattr(kernel_mod, "_build", lambda folder: pytest.fail("must not build"))
    assert S.set_implementation("kernel") == "torch"
    assert kernel_mod.error() == "NORMLAB_CPU_KERNEL=0"


def test_cache_is_portable_and_keyed_on_content():
    assert not any("march" in flag or "mtune" in flag for flag in kernel_mod.CFLAGS)
    assert kernel_mod.NAME.startswith("normlab_std_loss_")
    assert kernel_mod.build_directory().endswith(kernel_mod.NAME)


def test_set_implementation_rejects_unknown_names():
    with pytest.raises(ValueError, match="torch"):
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

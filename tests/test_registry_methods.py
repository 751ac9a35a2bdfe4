"""Every registered method, on every paper model: the contract the trainer relies on."""

import copy

import pytest
import torch
import torch.nn.functional as F

from normlab.lab.models import build_model
from normlab.methods import KINDS, METHODS, Method, create_method
from normlab.surgery import deploy_model

MODELS = ["cnn", "mlp"]
SHAPE = (1, 12, 12)


def build(name, model, dtype=torch.float32):
    method = create_method(name)
    torch.manual_seed(0)
    net = build_model(model, method, SHAPE, 10).to(dtype)
    return method, net


def batch(dtype=torch.float32, n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPE, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def train_step(method, net, x, y):
    aux = method.auxiliary_loss(net)
    opt = method.wrap_optimizer(torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01), net)
    net.train()
    out = net(x)
    loss = F.cross_entropy(out, y)
    if aux is not None:
        loss = loss + aux()
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    opt.step()
    for hook_owner in (aux, opt):
        if hasattr(hook_owner, "remove"):
            hook_owner.remove()
    return out, loss, grads


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, model):
    method, net = build(name, model)
    assert method.kind in KINDS and method.name == name and method.paper
    x, y = batch()
    out, loss, grads = train_step(method, net, x, y)
    assert out.shape == (8, 10) and torch.isfinite(loss)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # train/eval switch: eval is deterministic and finite
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    # state_dict round trip into a fresh build gives the same eval function
    _, fresh = build(name, model)
    fresh.load_state_dict(copy.deepcopy(net.state_dict()))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), a, rtol=1e-5, atol=1e-6)


def _hooks(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in net.modules())


def _bare_module_types():
    _, bare = build("none", "cnn")
    return {type(m) for m in bare.modules()} | {torch.nn.Identity}


@pytest.mark.parametrize("name", METHODS.names())
def test_deployment_form(name):
    """After a few training steps, the deployment form computes the trained eval function, and
    what the method says it costs at inference is what the deployment form is."""
    method, net = build(name, "cnn")
    hooks_before = _hooks(net)
    for step in range(3):
        x, y = batch(n=16)
        train_step(method, net, x * (1 + step), y)  # moving statistics move off their init
    assert _hooks(net) == hooks_before, "the auxiliary loss / optimizer wrapper left hooks"
    x, _ = batch(n=8)
    net.eval()
    with torch.no_grad():
        trained = net(x)
    deployed = deploy_model(net, method)
    overrides = type(method).for_inference is not Method.for_inference or method.folds
    with torch.no_grad():
        out = deployed(x)
        assert torch.equal(net(x), trained), "for_inference changed the trained model"
    assert torch.allclose(out, trained, rtol=1e-4, atol=1e-5)
    if overrides:  # a form built by the method: a different model, not a view of the trained one
        assert deployed is not net
        assert not any(p1.data_ptr() == p2.data_ptr()
                       for p1 in deployed.parameters() for p2 in net.parameters())
    else:  # identity: the trained model itself, with no hook left by training
        assert deployed is net and _hooks(deployed) == 0
    if method.inference.startswith(("none", "folded")):  # costs what the bare network costs
        extra = {type(m) for m in deployed.modules()} - _bare_module_types()
        assert not extra, f"{name} deploys with extra modules {extra}"
        assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in deployed.modules())
        assert _hooks(deployed) == 0
    # every deployment form is per-sample: a sample's output does not depend on its batch
    other = torch.randn(8, *SHAPE) * 3 + 1
    other[0] = x[0]
    with torch.no_grad():
        assert torch.allclose(deployed(other)[0], out[0], rtol=1e-4, atol=1e-5)


def _train_mode_output_of_first(method, net, x):
    net = copy.deepcopy(net).train()  # a forward may update running state; keep it fresh
    for m in net.modules():  # dropout draws masks for the whole batch; compare without them
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ == "ICLayer":
            if isinstance(getattr(m, "p", None), float):
                m.p = 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        return net(x)[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_dependent_claim(name):
    """``batch_dependent`` is what a training forward does: sample 0's output, in a batch and
    in a different batch of the same size."""
    method, net = build(name, "cnn")
    x, _ = batch(n=8)
    y = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(2)) * 3 + 1
    y[0] = x[0]
    a = _train_mode_output_of_first(method, net, x)
    b = _train_mode_output_of_first(method, net, y)
    same = torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert same != method.batch_dependent, (
        f"{name} claims batch_dependent={method.batch_dependent} but sample 0's output "
        f"{'does not change' if same else 'changes by ' + str((a - b).abs().max().item())}")


@pytest.mark.parametrize("name", METHODS.names())
def test_method_float64(name):
    method, net = build(name, "cnn", torch.float64)
    x, y = batch(torch.float64)
    out, loss, grads = train_step(method, net, x, y)
    assert out.dtype == torch.float64 and torch.isfinite(loss)
    assert all(g is None or (g.dtype == torch.float64 and torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_bfloat16_autocast(name):
    method, net = build(name, "cnn")
    x, y = batch(n=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss, grads = train_step(method, net, x, y)
    assert torch.isfinite(loss)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_unknown_method_lists_known_names():
    with pytest.raises(KeyError, match="known methods: .*batch_norm.*std_loss"):
        create_method("batch_nrom")


def test_bad_option_names_what_the_method_takes():
    with pytest.raises(TypeError, match="weight"):
        create_method("std_loss", wieght=0.1)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_channels_last_same_function(name):
    method, net = build(name, "cnn")
    x, y = batch(n=16)
    for m in net.modules():  # dropout masks follow memory order; compare without them
        if hasattr(m, "p") and isinstance(m.p, float):
            m.p = 0.0
    ref = copy.deepcopy(net)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last))
    expected = ref(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())

"""Every registered method, on every paper model: the contract the trainer relies on."""

import copy

import pytest
import torch
import torch.nn.functional as F

from normlab.lab.models import build_model
from normlab.methods import KINDS, METHODS, create_method
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
    # the deployment form computes the same function
    deployed = deploy_model(copy.deepcopy(net).eval(), method)
    with torch.no_grad():
        assert torch.allclose(deployed(x), a, rtol=1e-4, atol=1e-5)


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

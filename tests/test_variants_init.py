"""Standardized-from-step-0 init, the folded scale/shift and the gradient-share weight.

References written here: per-channel moments of the captured pre-activations in float64
numpy; the deployed model's module types and outputs against the bare network; the two parts
of the gradient at a hooked output from two separate ``torch.autograd.grad`` calls.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.lab.models import build_model
from normlab.losses.adaptive import AdaptiveStandardizationLoss
from normlab.losses.data_init import StandardizingInitLoss, standardize_init_
from normlab.losses.standardization import select_layers
from normlab.methods import create_method
from normlab.surgery import deploy_model
from normlab.functional import standardization_loss


class _Block(nn.Module):
    """torchvision-style: in-place ReLU after a conv, a depthwise conv, ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.dw(out)
        out += x
        return self.relu(out)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.act = nn.ReLU(inplace=True)
        self.block = _Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.block(self.act(self.stem(x)))
        return self.fc(torch.relu(self.head(self.pool(x).flatten(1))))


def _captured_moments(net, layers, x):
    """float64 numpy (mean, var) per channel of each hooked output, captured before any
    in-place activation runs."""
    seen = {}

    def grab(name):
        def hook(m, a, out):
            cd = -1 if isinstance(m, nn.Linear) else 1
            rows = np.moveaxis(out.detach().double().numpy(), cd, -1).reshape(-1, out.shape[cd])
            seen[name] = (rows.mean(0), rows.var(0))
        return hook

    handles = [m.register_forward_hook(grab(n)) for n, m in layers]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("model", ["cnn", "mlp", "mobilenet", "zoo"])
def test_init_standardizes_every_hooked_preactivation_on_the_init_batch(model):
    torch.manual_seed(0)
    if model == "zoo":
        net, x = _Net(), torch.randn(32, 3, 12, 12) * 3 + 1
    else:
        net = build_model(model, create_method("std_loss_init"), (1, 16, 16), 10)
        x = torch.rand(64, 1, 16, 16)
    layers = select_layers(net)
    before = _captured_moments(net, layers, x)
    assert any(abs(v - 1).max() > 0.1 for _, v in before.values())  # not standardized yet
    standardize_init_(net.train(), layers, x, eps=1e-12)  # exact: var / (var + eps) -> 1
    after = _captured_moments(net, layers, x)
    assert set(after) == {n for n, _ in layers}
    for name, (mean, var) in after.items():
        np.testing.assert_allclose(mean, 0.0, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(var, 1.0, atol=1e-3, err_msg=name)


def test_init_runs_once_on_the_first_training_forward_and_leaves_no_hook():
    torch.manual_seed(0)
    net = build_model("mlp", create_method("none"), (1, 8, 8), 10)
    x = torch.randn(32, 1, 8, 8) * 4
    loss = StandardizingInitLoss(net)
    net.eval()
    net(x)  # eval: nothing happens
    assert not loss.initialized
    net.train()
    with torch.no_grad():
        net(x)  # no grad: not a training step either
    assert not loss.initialized
    net(x)
    assert loss.initialized and abs(loss().item()) < 1e-2  # standardized: the KL is ~0
    frozen = copy.deepcopy(net.state_dict())
    net(x * 2)
    assert all(torch.equal(frozen[k], v) for k, v in net.state_dict().items())
    loss.remove()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0


def _bare_types():
    return {type(m) for m in build_model("cnn", create_method("none"), (1, 12, 12), 10).modules()}


def _train(method, net, x, y, steps=5):
    aux = method.auxiliary_loss(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.005)
    net.train()
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y) + aux()
        opt.zero_grad()
        loss.backward()
        opt.step()
    aux.remove()
    return net.eval()


@pytest.mark.parametrize("name", ["std_loss_affine", "std_loss_init"])
def test_deployed_model_is_exactly_the_bare_network(name):
    method = create_method(name)
    torch.manual_seed(0)
    net = build_model("cnn", method, (1, 12, 12), 10)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    net = _train(method, net, x, y)
    if name == "std_loss_affine":  # the scale and shift did move off the identity
        gammas = [m.weight for m in net.modules() if type(m).__name__ == "ChannelAffine"]
        assert gammas and any((g - 1).abs().max() > 1e-4 for g in gammas)
    with torch.no_grad():
        trained = net(x)
    deployed = deploy_model(net, method)
    assert {type(m) for m in deployed.modules()} - {nn.Identity} <= _bare_types()
    # load the deployed weights into a freshly built bare network: the same function
    bare = build_model("cnn", create_method("none"), (1, 12, 12), 10).eval()
    weights = [m for m in deployed.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for target, source in zip([m for m in bare.modules()
                               if isinstance(m, (nn.Conv2d, nn.Linear))], weights):
        target.load_state_dict(source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(bare(x), trained, rtol=1e-5, atol=1e-5)


def test_affine_fold_is_gamma_times_weight():
    method = create_method("std_loss_affine")
    torch.manual_seed(0)
    net = build_model("mlp", method, (1, 4, 4), 3).eval()
    lin, affine = net[1], net[2][0]
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2.0)
        affine.bias.uniform_(-1.0, 1.0)
    w = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy()
    g, t = affine.weight.detach().double().numpy(), affine.bias.detach().double().numpy()
    folded = deploy_model(net, method)
    np.testing.assert_allclose(folded[1].weight.detach().double().numpy(), g[:, None] * w,
                               rtol=1e-6)
    np.testing.assert_allclose(folded[1].bias.detach().double().numpy(), g * b + t, rtol=1e-6,
                               atol=1e-7)


def test_adaptive_weight_splits_the_gradient_exactly_and_follows_its_target():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(20, 6) * 3 + 1, torch.randint(0, 3, (20,))
    loss = AdaptiveStandardizationLoss(net, weight=0.7, fraction=0.4, momentum=0.25)
    # reference: the two parts of the gradient at z from two separate autograd calls, on a
    # copy (its hooks are inert: every training forward of `net` would count in the loss)
    ref = copy.deepcopy(net)
    z = ref[0](x)
    task = F.cross_entropy(ref[2](torch.relu(z)), y)
    g_task, = torch.autograd.grad(task, z)
    g_aux, = torch.autograd.grad(0.7 * standardization_loss(z, -1), z)
    net.zero_grad()
    total = F.cross_entropy(net(x), y) + loss()
    total.backward()
    assert loss._aux_sq == pytest.approx(float(g_aux.double().square().sum()), rel=1e-5)
    assert loss._down_sq == pytest.approx(float(g_task.double().square().sum()), rel=1e-5)
    target = 0.4 * g_task.norm().item() / (g_aux.norm().item() / 0.7)
    net(x)
    loss()
    assert loss.weight == pytest.approx(0.75 * 0.7 + 0.25 * target, rel=1e-5)
    loss.remove()

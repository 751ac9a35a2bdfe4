"""The optimizer wrappers (AGC, BNP) behave like a torch optimizer wherever one is used.

References are torch's own optimizers and schedulers on a twin model: with the settings used
here both transforms are exactly the identity (AGC with a threshold no gradient reaches, BNP
with frozen statistics mean 0, variance 1 and no damping), so every step must equal plain SGD
unless a test sets gradients or statistics that the transform visibly changes.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

from normlab.optim import AGC, BNP
from normlab.optim.wrapper import OptimizerWrapper

WRAPPERS = ["agc", "bnp"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _identity_wrapper(name: str, optimizer: Optimizer, model: nn.Module) -> OptimizerWrapper:
    if name == "agc":
        return AGC(optimizer, model, clipping=1e9, exclude=[])
    return BNP(optimizer, model, momentum=0.0, eps=0.0)


def _acting_wrapper(name: str, optimizer: Optimizer, model: nn.Module) -> OptimizerWrapper:
    """A wrapper whose transform changes the gradients of ``model[0]`` (see ``_grads``)."""
    if name == "agc":
        return AGC(optimizer, model, clipping=1e-3, exclude=[])
    bnp = BNP(optimizer, model, momentum=0.0, eps=0.0)
    bnp.stats["0"].var.fill_(4.0)  # the first layer's gradient is divided by 4
    return bnp


def _grads(model: nn.Module, scale: float = 1.0) -> None:
    """Fixed, large gradients (a deterministic stand-in for a backward pass)."""
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scale


@pytest.mark.parametrize("name", WRAPPERS)
def test_scheduler_on_the_wrapper_sets_the_lr_of_every_step(name):
    model, twin = _model(), _model()
    opt = _identity_wrapper(name, torch.optim.SGD(model.parameters(), lr=0.4), model)
    ref = torch.optim.SGD(twin.parameters(), lr=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=1, gamma=0.5)
        for _ in range(3):
            _grads(model)
            _grads(twin)
            before = [p.detach().clone() for p in model.parameters()]
            lr = opt.param_groups[0]["lr"]
            opt.step()
            ref.step()
            sched.step()
            ref_sched.step()
            for p, q, b in zip(model.parameters(), twin.parameters(), before):
                assert torch.equal(p, q)
                torch.testing.assert_close(p, b - lr * p.grad)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert sched.get_last_lr() == ref_sched.get_last_lr()


@pytest.mark.parametrize("name", WRAPPERS)
def test_step_hooks_on_the_wrapper_and_on_the_inner_optimizer(name):
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = _acting_wrapper(name, sgd, model)
    seen = []
    handles = [
        opt.register_step_pre_hook(
            lambda o, a, k: seen.append(("wrapper pre", o is opt, model[0].weight.grad.clone()))),
        sgd.register_step_pre_hook(
            lambda o, a, k: seen.append(("inner pre", o is sgd, model[0].weight.grad.clone()))),
        sgd.register_step_post_hook(lambda o, a, k: seen.append(("inner post", o is sgd, None))),
        opt.register_step_post_hook(lambda o, a, k: seen.append(("wrapper post", o is opt, None))),
    ]
    _grads(model, scale=10.0)
    raw = model[0].weight.grad.clone()
    opt.step()
    assert [(what, ok) for what, ok, _ in seen] == [
        ("wrapper pre", True), ("inner pre", True), ("inner post", True), ("wrapper post", True)]
    # a pre-hook on the wrapper runs before the transform, one on the inner optimizer after it
    assert torch.equal(seen[0][2], raw)
    assert not torch.allclose(seen[1][2], raw)
    for handle in handles:
        handle.remove()
    seen.clear()
    opt.step()
    assert seen == []


def test_a_step_pre_hook_can_replace_the_closure():
    model = _model()
    opt = AGC(torch.optim.SGD(model.parameters(), lr=0.1), model)
    calls = []

    def closure():
        calls.append("user")
        return torch.tensor(1.0)

    def other():
        calls.append("hook's")
        return torch.tensor(2.0)

    opt.register_step_pre_hook(lambda o, args, kwargs: ((args[0], other), kwargs))
    _grads(model)
    assert opt.step(closure).item() == 2.0 and calls == ["hook's"]
    with pytest.raises(RuntimeError, match="pre-hook"):
        opt.register_step_pre_hook(lambda o, args, kwargs: "nonsense")
        opt.step()


@pytest.mark.parametrize("name", WRAPPERS)
def test_remove_restores_the_plain_optimizer(name):
    models = [_model() for _ in range(3)]
    removed, kept = (_acting_wrapper(name, torch.optim.SGD(m.parameters(), lr=0.1,
                                                           momentum=0.9), m)
                     for m in models[:2])
    ref = torch.optim.SGD(models[2].parameters(), lr=0.1, momentum=0.9)
    assert hasattr(removed, "remove") and removed.attached  # what the trainer relies on
    removed.remove()
    removed.remove()
    assert not removed.attached and kept.attached
    for _ in range(2):
        for m, opt in zip(models, (removed, kept, ref)):
            _grads(m, scale=10.0)
            m(torch.randn(5, 4))  # a training forward: BNP's statistics hooks would see it
            opt.step()
    plain, transformed, sgd = models
    for p, q in zip(plain.parameters(), sgd.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(transformed[0].weight, sgd[0].weight)  # the control: it does act
    assert all(not m._forward_pre_hooks for m in plain.modules())


def test_context_manager_removes():
    model = _model()
    with BNP(torch.optim.SGD(model.parameters(), lr=0.1), model) as opt:
        assert model[0]._forward_pre_hooks
    assert not opt.attached and not model[0]._forward_pre_hooks


@pytest.mark.parametrize("name", WRAPPERS)
def test_state_dict_hooks_run_on_the_wrapper(name):
    model = _model()
    opt = _identity_wrapper(name, torch.optim.SGD(model.parameters(), lr=0.1), model)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load pre", sd.pop("extra"))))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("first"), prepend=True)
    sd = opt.state_dict()
    assert sd["extra"] == 1 and calls == ["first", "save pre"]
    opt.load_state_dict(sd)
    assert calls[2:] == [("load pre", 1), "load post"]
    assert "extra" in sd  # the pre-hook popped it from a shallow copy, as torch's do


@pytest.mark.parametrize("name", WRAPPERS)
def test_global_optimizer_hooks_run_once_per_step(name):
    model = _model()
    opt = _identity_wrapper(name, torch.optim.SGD(model.parameters(), lr=0.1), model)
    calls = []
    handle = register_optimizer_step_pre_hook(
        lambda o, a, k: calls.append(type(o).__name__))
    try:
        _grads(model)
        opt.step()
    finally:
        handle.remove()
    assert calls == ["SGD"]


def test_add_param_group_is_shared_and_clipped():
    model = _model()
    extra = nn.Parameter(torch.ones(3, 3))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = AGC(sgd, model, clipping=1e-3)
    opt.add_param_group({"params": iter([extra]), "lr": 0.2})
    assert opt.param_groups is sgd.param_groups and len(sgd.param_groups) == 2
    extra.grad = torch.full((3, 3), 100.0)
    opt.step()
    # clipped to 1e-3 * ||row|| = 1e-3 * sqrt(3) per row, then one SGD step at lr 0.2
    torch.testing.assert_close(extra, torch.ones(3, 3) - 0.2 * 1e-3)


@pytest.mark.parametrize("name", WRAPPERS)
def test_no_private_torch_optimizer_state(name):
    # Every public Optimizer method is the wrapper's own: none reaches torch's private tables.
    methods = [m for m in dir(Optimizer)
               if not m.startswith("_") and inspect.isfunction(getattr(Optimizer, m))]
    assert "register_step_pre_hook" in methods and "load_state_dict" in methods
    inherited = [m for m in methods if getattr(OptimizerWrapper, m) is getattr(Optimizer, m)]
    assert inherited == ["profile_hook_step"]  # a static decorator, reads no instance state
    model = _model()
    opt = _identity_wrapper(name, torch.optim.SGD(model.parameters(), lr=0.1), model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    opt.register_step_pre_hook(lambda o, a, k: None).remove()
    _grads(model)
    opt.step()
    sched.step()
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.zero_grad()
    assert isinstance(opt, Optimizer)
    assert not [k for k in vars(opt) if k.startswith("_optimizer") or "profile" in k]
    assert not getattr(type(opt).step, "hooked", False)  # torch's step patch never applied

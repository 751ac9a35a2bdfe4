"""Tests of Batch Normalization Preconditioning (Lange, Helfrich & Ye 2022, arXiv:2108.01110).

The references are written independently of ``normlab.optim.bnp``: an explicit
reparametrized layer ``z = W~ D^-1 (h - mu) + b~`` stepped with torch's own SGD and mapped
back, and a naive weighted-mixture computation of the running statistics.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.methods import create_method
from normlab.optim.bnp import BNP, bnp_precondition

DT = torch.float64


def _set_stats(bnp: BNP, name: str, mean: torch.Tensor, var: torch.Tensor) -> None:
    bnp.stats[name].mean.copy_(mean)
    bnp.stats[name].var.copy_(var)


def _loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Nonlinear in z so that the bias gradient is not a trivial function of the weights'.
    return (torch.tanh(z) * target).sum() + 0.5 * z.square().mean()


# --------------------------------------------------------------------- dense equivalence

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sgd_momentum,steps", [(0.0, 1), (0.9, 3)])
def test_dense_step_equals_sgd_on_reparametrized_layer(bias, sgd_momentum, steps):
    torch.manual_seed(0)
    n, d_in, d_out, lr, eps = 7, 5, 3, 0.1, 1e-2
    layer = nn.Linear(d_in, d_out, bias=bias).to(DT)
    x = torch.randn(n, d_in, dtype=DT) * 2 + 1.5
    target = torch.randn(n, d_out, dtype=DT)
    mu = torch.randn(d_in, dtype=DT)
    s2 = torch.rand(d_in, dtype=DT) * 3 + 0.1
    dvec = (s2 + eps).sqrt()

    # Reparametrized layer: W = W~ D^-1, b = b~ - W~ D^-1 mu (without bias: scaling only).
    w_t = (layer.weight.detach() * dvec).requires_grad_()
    params = [w_t]
    if bias:
        b_t = (layer.bias.detach() + layer.weight.detach() @ mu).requires_grad_()
        params.append(b_t)
    ref_opt = torch.optim.SGD(params, lr=lr, momentum=sgd_momentum)
    for _ in range(steps):
        h = (x - mu) / dvec if bias else x / dvec
        z = F.linear(h, w_t, b_t if bias else None)
        ref_opt.zero_grad()
        _loss(z, target).backward()
        ref_opt.step()
    w_ref = w_t.detach() / dvec
    b_ref = b_t.detach() - w_ref @ mu if bias else None

    bnp = BNP(torch.optim.SGD(layer.parameters(), lr=lr, momentum=sgd_momentum), layer,
              momentum=0.0, eps=eps)  # momentum 0: the statistics stay fixed
    _set_stats(bnp, "", mu, s2)
    for _ in range(steps):
        bnp.zero_grad()
        _loss(layer(x), target).backward()
        bnp.step()
    torch.testing.assert_close(layer.weight.detach(), w_ref, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.detach(), b_ref, rtol=1e-12, atol=1e-12)
    # and it is not the plain SGD step
    assert not torch.allclose(layer.weight.detach(), w_t.detach(), atol=1e-3)


# ---------------------------------------------------------------------- conv equivalence

def _channel_of_weight(out_ch: int, in_per_group: int, groups: int) -> torch.Tensor:
    """Input channel read by weight entry (o, c): group o // (out/groups), local index c."""
    o = torch.arange(out_ch)[:, None]
    c = torch.arange(in_per_group)[None, :]
    return (o // (out_ch // groups)) * in_per_group + c


CONVS = [
    # (dims, in, out, kernel, stride, padding, groups, padding_mode)
    (2, 3, 4, 3, 2, 1, 1, "zeros"),
    (2, 4, 6, 3, 1, 1, 2, "reflect"),
    (1, 2, 3, 3, 1, 0, 1, "zeros"),
    (3, 2, 2, 2, 1, 1, 1, "zeros"),
]


@pytest.mark.parametrize("dims,cin,cout,k,stride,pad,groups,mode", CONVS)
def test_conv_step_equals_sgd_on_reparametrized_conv(dims, cin, cout, k, stride, pad, groups,
                                                     mode):
    torch.manual_seed(1)
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    lr, eps = 0.05, 1e-3
    conv = conv_cls(cin, cout, k, stride, pad, groups=groups, padding_mode=mode).to(DT)
    x = torch.randn(2, cin, *[5] * dims, dtype=DT) + 0.7
    target = torch.randn_like(conv(x))
    mu = torch.randn(cin, dtype=DT)
    s2 = torch.rand(cin, dtype=DT) * 2 + 0.2
    dvec = (s2 + eps).sqrt()
    idx = _channel_of_weight(cout, cin // groups, groups)
    taps = [1] * dims
    d_w = dvec[idx].view(cout, cin // groups, *taps)
    mu_w = mu[idx].view(cout, cin // groups, *taps)

    class Reparametrized(nn.Module):
        """Pad with the conv's own padding, normalize channels with (mu, D), conv unpadded."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(conv.weight.detach() * d_w)
            self.bias = nn.Parameter(conv.bias.detach()
                                     + (conv.weight.detach() * mu_w).flatten(1).sum(1))

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            if pad:
                inp = F.pad(inp, [pad] * (2 * dims), mode="constant" if mode == "zeros"
                            else mode)
            shape = (1, cin, *taps)
            inp = (inp - mu.view(shape)) / dvec.view(shape)
            return conv_fn(inp, self.weight, self.bias, stride, 0, 1, groups)

    rep = Reparametrized()
    torch.testing.assert_close(rep(x), conv(x), rtol=1e-12, atol=1e-12)  # same function
    ref_opt = torch.optim.SGD(rep.parameters(), lr=lr)
    _loss(rep(x), target).backward()
    ref_opt.step()
    w_ref = rep.weight.detach() / d_w
    b_ref = rep.bias.detach() - (w_ref * mu_w).flatten(1).sum(1)

    bnp = BNP(torch.optim.SGD(conv.parameters(), lr=lr), conv, momentum=0.0, eps=eps)
    _set_stats(bnp, "", mu, s2)
    _loss(conv(x), target).backward()
    bnp.step()
    torch.testing.assert_close(conv.weight.detach(), w_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.bias.detach(), b_ref, rtol=1e-12, atol=1e-12)


def test_unit_statistics_leave_gradients_unchanged():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 16, 4)).to(DT)
    # momentum 0: the statistics stay at their start, mean 0 and variance 1
    bnp = BNP(torch.optim.SGD(model.parameters(), lr=0.1), model, momentum=0.0, eps=0.0)
    model(torch.randn(5, 2, 4, 4, dtype=DT) + 3).square().sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    bnp.precondition()
    for g0, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.grad, g0, rtol=0, atol=0)
    # the same gradients under other statistics do change
    _set_stats(bnp, "0", torch.full((2,), 0.5, dtype=DT), torch.full((2,), 2.0, dtype=DT))
    bnp.precondition()
    assert not torch.allclose(model[0].weight.grad, before[0])
    assert not torch.allclose(model[0].bias.grad, before[1])


# ------------------------------------------------------------------------ running stats

def test_running_statistics_are_the_weighted_mixture_of_all_samples():
    torch.manual_seed(3)
    m = 0.2
    layer = nn.Linear(3, 2).to(DT)
    bnp = BNP(torch.optim.SGD(layer.parameters(), lr=0.1), layer, momentum=m)
    batches = [torch.randn(n, 3, dtype=DT) * 2 + 1 for n in (1, 4, 1, 1, 6)]
    for xb in batches:
        layer(xb)
    # reference: prior N(0, 1) with weight (1-m)^k, batch j with weight m (1-m)^(k-1-j)
    k = len(batches)
    w0 = (1 - m) ** k
    mean = torch.zeros(3, dtype=DT)
    second = torch.full((3,), w0, dtype=DT)
    for j, xb in enumerate(batches):
        w = m * (1 - m) ** (k - 1 - j)
        for row in xb:
            mean += w / len(xb) * row
            second += w / len(xb) * row * row
    stats = bnp.stats[""]
    torch.testing.assert_close(stats.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.var, second - mean * mean, rtol=1e-12, atol=1e-12)
    assert stats.count == k


def test_conv_statistics_are_per_channel_over_batch_and_positions():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 2, 3).to(DT)
    bnp = BNP(torch.optim.SGD(conv.parameters(), lr=0.1), conv, momentum=1.0)
    x = torch.randn(4, 3, 5, 6, dtype=DT) * torch.tensor([1.0, 2.0, 3.0], dtype=DT).view(3, 1, 1)
    conv(x)
    torch.testing.assert_close(bnp.stats[""].mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(bnp.stats[""].var, x.var((0, 2, 3), unbiased=False))
    conv(x[1])  # an unbatched (C, H, W) sample
    torch.testing.assert_close(bnp.stats[""].var, x[1].var((1, 2), unbiased=False))


def test_linear_statistics_are_over_all_leading_dims_and_follow_the_model():
    layer = nn.Linear(4, 2)
    bnp = BNP(torch.optim.SGD(layer.parameters(), lr=0.1), layer, momentum=1.0)
    layer.to(DT)  # moved after wrapping: the statistics follow
    x = torch.randn(2, 3, 4, dtype=DT) + 2  # (N, T, C)
    layer(x)
    assert bnp.stats[""].mean.dtype == DT
    torch.testing.assert_close(bnp.stats[""].mean, x.mean((0, 1)))
    torch.testing.assert_close(bnp.stats[""].var, x.var((0, 1), unbiased=False))
    layer(x[0, 0])  # one unbatched sample: mean is the sample, variance 0
    torch.testing.assert_close(bnp.stats[""].mean, x[0, 0])
    torch.testing.assert_close(bnp.stats[""].var, torch.zeros(4, dtype=DT))


def test_no_statistics_in_eval_mode_under_no_grad_or_after_remove():
    layer = nn.Linear(3, 2)
    bnp = BNP(torch.optim.SGD(layer.parameters(), lr=0.1), layer, momentum=0.5)
    x = torch.randn(4, 3) + 5
    layer.eval()
    layer(x)
    layer.train()
    with torch.no_grad():
        layer(x)
    assert bnp.stats[""].count == 0 and torch.equal(bnp.stats[""].mean, torch.zeros(3))
    layer(x)
    assert bnp.stats[""].count == 1
    bnp.remove()
    bnp.remove()
    assert not bnp.attached
    layer(x)
    assert bnp.stats[""].count == 1 and not layer._forward_pre_hooks


# ---------------------------------------------------------------------------- state dict

def _small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 16, 5))


def _train(model: nn.Module, opt: BNP, batches) -> None:
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def _make_opt(model: nn.Module) -> BNP:
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return BNP(sgd, model, momentum=0.3, eps=1e-3)


def test_state_dict_round_trip_resumes_with_identical_steps():
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(3, 2, 4, 4, generator=g) * 2 + 1,
                torch.randint(0, 5, (3,), generator=g)) for _ in range(6)]
    straight = _small_model(0)
    _train(straight, _make_opt(straight), batches)

    first = _small_model(0)
    opt = _make_opt(first)
    _train(first, opt, batches[:3])
    model_sd, opt_sd = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(opt_sd["bnp"]) == {"0", "3"}

    resumed = _small_model(1)  # a different init, overwritten by the checkpoint
    resumed.load_state_dict(model_sd)
    resumed_opt = _make_opt(resumed)
    resumed_opt.load_state_dict(opt_sd)
    _train(resumed, resumed_opt, batches[3:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    # without the statistics (only the inner SGD's momentum buffers) the run differs
    forgetful = _small_model(1)
    forgetful.load_state_dict(model_sd)
    forgetful_opt = _make_opt(forgetful)
    forgetful_opt.optimizer.load_state_dict({k: v for k, v in opt_sd.items() if k != "bnp"})
    _train(forgetful, forgetful_opt, batches[3:])
    assert not torch.equal(straight[0].weight, forgetful[0].weight)


def test_load_state_dict_rejects_foreign_state():
    model = _small_model(0)
    opt = _make_opt(model)
    with pytest.raises(ValueError, match="bnp"):
        opt.load_state_dict(opt.optimizer.state_dict())
    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    other_opt = BNP(torch.optim.SGD(other.parameters(), lr=0.1), other)
    with pytest.raises(ValueError, match="layers"):
        opt.load_state_dict(other_opt.state_dict())


# ------------------------------------------------------------------ wrapper and errors

def test_wrapper_shares_groups_and_works_with_schedulers():
    model = _small_model(0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    bnp = BNP(sgd, model, skip_first=True)
    assert bnp.param_groups is sgd.param_groups and bnp.state is sgd.state
    assert [n for n, _ in bnp.layers] == ["3"]
    sched = torch.optim.lr_scheduler.StepLR(bnp, step_size=1, gamma=0.5)
    model(torch.randn(2, 2, 4, 4)).sum().backward()
    bnp.step()
    sched.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    bnp.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    bnp.load_state_dict(bnp.state_dict())  # torch replaces the inner lists here
    assert bnp.param_groups is sgd.param_groups and bnp.state is sgd.state


def test_only_layers_the_optimizer_trains_are_hooked():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    bnp = BNP(torch.optim.SGD(model[1].parameters(), lr=0.1), model)
    assert [n for n, _ in bnp.layers] == ["1"]


def test_bad_arguments_raise_clear_errors():
    layer = nn.Linear(3, 2)
    sgd = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        BNP(sgd, layer, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BNP(sgd, layer, eps=-1.0)
    with pytest.raises(TypeError, match="Optimizer"):
        BNP(object(), layer)
    with pytest.raises(ValueError, match="nothing to precondition"):
        BNP(sgd, layer, skip_first=True)
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="no Linear"):
        BNP(sgd, relu)
    with pytest.raises(ValueError, match="do not fit"):
        bnp_precondition(torch.zeros(2, 3), None, torch.zeros(4), torch.ones(4), 1e-3)
    with pytest.raises(ValueError, match="momentum"):
        create_method("bnp", momentum=-0.1)


def test_registered_method():
    method = create_method("bnp", momentum=0.05)
    model = _small_model(0)
    plain = copy.deepcopy(model)
    opt = method.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert isinstance(opt, BNP) and opt.momentum == 0.05
    # kind "gradient": same gradients, a different step than the optimizer it wraps
    torch.manual_seed(1)
    batches = [(torch.randn(8, 2, 4, 4) * 2 + 1, torch.randint(0, 5, (8,)))]
    _train(model, opt, batches)
    _train(plain, torch.optim.SGD(plain.parameters(), lr=0.1), batches)
    assert not torch.allclose(model[0].weight, plain[0].weight, atol=1e-4)
    # no layer (so nothing batch-dependent in the forward), nothing at inference
    relu = nn.ReLU()
    assert method.norm(4, 2) is None and method.block(4, 2, relu) is relu
    assert method.for_inference(model) is model


# ------------------------------------------------------------------- online learning

def _train_batch_one(method_name: str, data, steps: int, lr: float) -> float:
    from normlab.lab.models import build_model

    torch.manual_seed(0)
    method = create_method(method_name)
    model = build_model("mlp", method, (1, 28, 28), 10)
    opt = method.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=lr), model)
    order = torch.randint(0, len(data.x_train), (steps,),
                          generator=torch.Generator().manual_seed(0)).tolist()
    model.train()
    for i in order:
        opt.zero_grad()
        F.cross_entropy(model(data.x_train[i:i + 1]), data.y_train[i:i + 1]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.x_test[:2000]).argmax(1)
    return (pred == data.y_test[:2000]).float().mean().item()


def test_batch_size_one_fashion_mnist_trains_where_batch_norm_cannot():
    from normlab.lab.datasets import load_dataset
    from normlab.lab.models import build_model

    data = load_dataset("fashion_mnist", download=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 steps are tiny: extra threads only contend
    try:
        # the paper's budget: 1000 steps of SGD at batch size 1
        acc_bnp = _train_batch_one("bnp", data, steps=1000, lr=0.003)
        acc_none = _train_batch_one("none", data, steps=1000, lr=0.003)
    finally:
        torch.set_num_threads(threads)
    assert acc_bnp > 0.6, acc_bnp  # chance is 0.1
    assert acc_bnp > acc_none + 0.1, (acc_bnp, acc_none)

    bn_model = build_model("mlp", create_method("batch_norm"), (1, 28, 28), 10).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn_model(data.x_train[:1])

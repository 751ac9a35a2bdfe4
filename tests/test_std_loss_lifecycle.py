"""StandardizationLoss with ordinary training code: parts of a model called separately, several
forwards before one read, gradient accumulation, heads registered first, attention modules
whose weights are used functionally, exclusions, reductions and subclasses."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab import StandardizationLoss
from normlab.losses import ATTENTION, SQUEEZE_EXCITE
from normlab.nn_types import PreActivation
from test_std_loss_zoo import naive_loss as naive
from zoo import ZOO, make_batch


class BackboneHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 8))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.backbone(x))


def test_calling_backbone_then_head_every_step():
    model = BackboneHead()
    std = StandardizationLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    seen = []
    for _ in range(4):
        opt.zero_grad()
        out = model.head(model.backbone(x))
        aux = std()
        (F.cross_entropy(out, y) + aux).backward()  # never "backward a second time"
        opt.step()
        seen.append(aux.item())
    assert [n for n, _ in std.layers] == ["backbone.0", "backbone.2", "head.1"]
    assert max(seen) < 1.05 * seen[0]  # one step's worth each time, not a growing sum
    with torch.no_grad():
        h1 = model.backbone[0](x)
        h2 = model.backbone[2](torch.relu(h1))
        h3 = model.head[1](torch.relu(h2))
    model.head(model.backbone(x))
    expected = naive(h1, -1) + naive(h2, -1) + naive(h3, -1)
    torch.testing.assert_close(std(), expected, rtol=1e-5, atol=1e-5)


def test_two_views_before_one_read_both_count():
    model = BackboneHead()
    std = StandardizationLoss(model)
    a, b = torch.randn(16, 6), torch.randn(16, 6) * 3 + 1
    model(a)
    va = std()
    model(b)
    vb = std()
    model(a)
    model(b)
    both = std()
    torch.testing.assert_close(both, va + vb)
    assert std().item() == 0.0  # consumed when read
    mean = StandardizationLoss(model, reduction="mean", layers=["backbone.0"])
    model(a)
    model(b)
    torch.testing.assert_close(mean(), (naive(model.backbone[0](a), -1)
                                        + naive(model.backbone[0](b), -1)).detach() / 32)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_accumulation(reduction):
    torch.manual_seed(0)
    model = BackboneHead().double()
    std = StandardizationLoss(model, reduction=reduction)
    xs = [torch.randn(8, 6, dtype=torch.float64) for _ in range(4)]
    ys = [torch.randint(0, 3, (8,)) for _ in range(4)]
    k = 0.25 if reduction == "sum" else 1.0  # "mean" already averages over the reads' forwards
    # 1) read and backward after each micro-batch (the usual accumulation loop)
    model.zero_grad()
    for x, y in zip(xs, ys):
        (F.cross_entropy(model(x), y) / 4 + std() * (1 / 4 if reduction == "mean" else k)
         ).backward()
    each = _grads(model)
    # 2) four forwards, one read: the same loss by definition
    model.zero_grad()
    task = sum(F.cross_entropy(model(x), y) for x, y in zip(xs, ys)) / 4
    (task + std() * k).backward()
    torch.testing.assert_close(_grads(model), each, rtol=1e-12, atol=1e-14)
    # 3) one 4x batch made of four copies of a micro-batch has that micro-batch's statistics
    model.zero_grad()
    (F.cross_entropy(model(xs[0]), ys[0]) + std()).backward()
    one = _grads(model)
    model.zero_grad()
    (F.cross_entropy(model(xs[0].repeat(4, 1)), ys[0].repeat(4)) + std()).backward()
    torch.testing.assert_close(_grads(model), one, rtol=1e-9, atol=1e-12)


class HeadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.head(self.body(x))


def test_the_logit_layer_is_the_last_one_run():
    model = HeadFirst()
    std = StandardizationLoss(model)
    model(torch.randn(8, 5))
    assert [n for n, _ in std.layers] == ["body.0"]
    recorded = StandardizationLoss(HeadFirst(), example_input=torch.randn(2, 5))
    assert [n for n, _ in recorded.layers] == ["body.0"]


def test_hooks_that_never_fire_are_reported_once_and_left_out():
    entry = ZOO["vit_style"]
    model = entry.build()
    x, y = make_batch(entry, 4)
    std = StandardizationLoss(model)
    with pytest.warns(UserWarning, match="out_proj") as record:
        model(x)
    assert len([w for w in record if "never ran" in str(w.message)]) == 1
    names = [n for n, _ in std.layers]
    assert not any("out_proj" in n for n in names) and "head" not in names
    assert len(std.values()) == 0 and std().item() > 0
    assert set(std.values()) == set(names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
        std()


def test_exclude_presets_on_residual_cnns_and_transformers():
    eff = ZOO["efficientnet_style"].build()
    std = StandardizationLoss(eff, exclude=SQUEEZE_EXCITE)
    assert std.layers and not any("_se_" in n for n, _ in std.layers)
    vit = ZOO["vit_style"].build()
    std = StandardizationLoss(vit, exclude=list(ATTENTION) + ["*fc2"])
    vit(make_batch("vit_style", 4)[0])
    assert [n for n, _ in std.layers] == ["patch_embed.proj", "blocks.0.mlp.fc1",
                                          "blocks.1.mlp.fc1"]
    assert len(StandardizationLoss(eff, exclude=nn.Linear).layers) < len(StandardizationLoss(eff).layers)
    with pytest.raises(ValueError, match="matches none"):
        StandardizationLoss(eff, exclude="nothing.*")


def test_attaching_to_nothing_raises():
    lstm = ZOO["lstm_classifier"].build()
    with pytest.raises(ValueError, match=r"convert_recurrent\(model\)"):
        StandardizationLoss(lstm)
    with pytest.raises(ValueError, match="besides its logit layer"):
        StandardizationLoss(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_transposed_convs_and_preactivations_are_hooked_by_default():
    class Gates(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Parameter(torch.randn(4, 6))
            self.pre = PreActivation(channel_dim=1)
            self.up1 = nn.ConvTranspose1d(6, 3, 2)
            self.up2 = nn.ConvTranspose2d(3, 2, 2)
            self.up3 = nn.ConvTranspose3d(2, 2, 2)

        def forward(self, x):  # x: (N, 4, L)
            g = self.pre(torch.einsum("ncl,cd->ndl", x, self.proj))  # channels at dim 1
            h = self.up1(torch.tanh(g))
            h = self.up2(h.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous())
            return self.up3(h.unsqueeze(-1).repeat(1, 1, 1, 1, 2))

    model = Gates()
    std = StandardizationLoss(model)
    x = torch.randn(8, 4, 5)
    model(x)
    assert [n for n, _ in std.layers] == ["pre", "up1", "up2"]
    with torch.no_grad():
        g = torch.einsum("ncl,cd->ndl", x, model.proj)
        h = model.up1(torch.tanh(g))
        h2 = model.up2(h.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous())
    torch.testing.assert_close(std(), naive(g, 1) + naive(h, 1) + naive(h2, 1))


def test_mean_reduction_is_the_sum_over_total_channels():
    entry = ZOO["resnet18_style"]
    model = entry.build()
    x, _ = make_batch(entry, 4)
    total = StandardizationLoss(model, weight=2.0)
    mean = StandardizationLoss(model, weight=2.0, reduction="mean")
    model(x)
    channels = sum(m.out_channels for _, m in total.layers)
    s, m = total(), mean()
    torch.testing.assert_close(m, s / channels)
    assert total.values() == pytest.approx(mean.values())
    with pytest.raises(ValueError, match="reduction must be one of"):
        StandardizationLoss(model, reduction="avg")


def test_a_subclass_layer_loss_is_called_for_every_hooked_output():
    class Shifted(StandardizationLoss):
        calls = 0

        def layer_loss(self, output, channel_dim):
            Shifted.calls += 1
            return (output.mean() - 1.0) ** 2

    model = ZOO["resnet18_style"].build()
    std = Shifted(model)
    x, _ = make_batch("resnet18_style", 4)
    model(x)
    n = len(std.layers)
    value = std()
    assert Shifted.calls == n + 1  # the first forward ran the logit layer too (then dropped)
    value.backward()  # in-place ReLU after every conv: the subclass's graph is safe too
    model(x)
    assert Shifted.calls == 2 * n + 1 and set(std.values()) == {k for k, _ in std.layers}

"""Tests of normlab.surgery: replace_norm, remove_norm, fold_batch_norm, fold_weights."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normlab.lab.models import build_model
from normlab.layers.base import NormLayer
from normlab.methods import create_method
from normlab.surgery import (
    ChannelsLast, SurgeryRecord, fold_batch_norm, fold_weights, is_norm_layer, remove_norm, replace_norm,
)


# --- test networks ---------------------------------------------------------------------------

class ScaleShift(NormLayer):
    """A per-channel affine 'norm' that says so through eval_affine()."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.spatial_dims = 2
        self.scale = nn.Parameter(torch.rand(num_features) + 0.5)
        self.shift = nn.Parameter(torch.randn(num_features))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        return self.scale, self.shift


class SampleNorm(NormLayer):
    """Divides by a per-sample, per-channel RMS (FRN-like): not affine at eval."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-5)


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus an identity or conv-bn projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """6 BatchNorm2d (stem, 2 + 2 in the blocks, 1 in the projection); ``gn`` adds a
    conv-GroupNorm head."""

    def __init__(self, gn: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.head = (nn.Sequential(nn.Conv2d(16, 16, 1), nn.GroupNorm(4, 16), nn.ReLU())
                     if gn else nn.Identity())
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.layers(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, so folding uses Sequential adjacency."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Sequential(nn.BatchNorm2d(6), nn.ReLU()),
                                  nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            x = -x
        return self.body(x)


class SharedOutput(nn.Module):
    """The conv's output feeds the BN and the residual sum: the BN must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


IMAGE = (1, 28, 28)


def normlab_model(name: str, method: str) -> nn.Module:
    return build_model(name, create_method(method), IMAGE, 10)


MODELS = {
    "cnn-bn": (lambda: normlab_model("cnn", "batch_norm"), IMAGE, 3),
    "cnn-bn-affine": (lambda: normlab_model("cnn", "batch_norm_affine"), IMAGE, 3),
    "mlp-bn": (lambda: normlab_model("mlp", "batch_norm"), IMAGE, 3),
    "mlp-bn-affine": (lambda: normlab_model("mlp", "batch_norm_affine"), IMAGE, 3),
    "resnet": (lambda: ResNet(), (3, 8, 8), 6),
}


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_norm_layer(m)]


def randomize_and_train(model: nn.Module, in_shape: tuple[int, ...]) -> None:
    """Random affine parameters, and running stats moved away from (0, 1) by train forwards."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
        model.train()
        dtype = next(model.parameters()).dtype
        for _ in range(3):
            model(torch.randn(8, *in_shape, dtype=dtype) * 2 + 1)
    model.eval()


def fold(model: nn.Module, **kwargs) -> tuple[nn.Module, list, list]:
    """``fold_batch_norm`` with its report split into ``folded`` ``(norm, weight layer)`` and
    ``skipped`` ``(norm, reason)`` pairs."""
    report: list = []
    folded = fold_batch_norm(model, report=report, **kwargs)
    assert all(isinstance(r, SurgeryRecord) for r in report)
    return (folded, [(r.name, r.detail) for r in report if r.action == "folded"],
            [(r.name, r.detail) for r in report if r.action == "skipped"])


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --- is_norm_layer ---------------------------------------------------------------------------

def test_is_norm_layer() -> None:
    yes = [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3),
           nn.InstanceNorm2d(3), nn.GroupNorm(1, 3), nn.LayerNorm(3), ScaleShift(3),
           SampleNorm(3)]
    no = [nn.Conv2d(3, 3, 1), nn.Linear(3, 3), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(3)),
          nn.Identity(), torch.ones(3), "batch_norm"]
    assert all(is_norm_layer(m) for m in yes)
    assert not any(is_norm_layer(m) for m in no)


# --- remove_norm / replace_norm: counts, types, copies ---------------------------------------

@pytest.mark.parametrize("key", MODELS)
def test_remove_norm_counts_and_copy(key: str) -> None:
    build, _, n = MODELS[key]
    model = build()
    before = norms(model)
    identities = count(model, nn.Identity)
    assert len(before) == n
    bare = remove_norm(model)
    assert bare is not model and norms(bare) == []
    assert count(bare, nn.Identity) == identities + n
    assert norms(model) == before  # the original is untouched (same objects)
    same = remove_norm(model, inplace=True)
    assert same is model and norms(model) == []


@pytest.mark.parametrize("key", MODELS)
def test_replace_norm_types_and_copy(key: str) -> None:
    build, _, n = MODELS[key]
    model = build()
    before = norms(model)
    affine = replace_norm(model, "batch_norm_affine")
    new = norms(affine)
    assert len(new) == n
    assert [type(m) for m in new] == [type(m) for m in before]  # BN2d stays 2d, BN1d 1d
    assert all(m.weight.requires_grad for m in new)
    assert not any(a is b for a, b in zip(new, before))
    assert norms(model) == before
    same = replace_norm(model, create_method("batch_norm_affine"), inplace=True)
    assert same is model and not any(a is b for a, b in zip(norms(model), before))


def test_replace_carries_weights_and_running_stats() -> None:
    torch.manual_seed(0)
    model = ResNet()
    randomize_and_train(model, (3, 8, 8))
    report: list = []
    new = replace_norm(model, "batch_norm_affine", report=report)
    assert len(report) == 6 and {r.action for r in report} == {"replaced"}
    for old, layer, entry in zip(norms(model), norms(new), report):
        assert layer is not old
        assert set(entry.detail.split(",")) == {"weight", "bias", "running_mean", "running_var",
                                      "num_batches_tracked"}
        for key, value in old.state_dict().items():
            assert torch.equal(layer.state_dict()[key], value), key
        assert (old.running_var - 1).abs().max() > 0.1  # the stats did move
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(new.eval()(x), model(x))


def test_replace_carries_only_matching_names_and_shapes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4),
                          nn.Conv2d(4, 4, 3), nn.LayerNorm((4, 4, 4)))
    with torch.no_grad():
        model[1].weight.normal_()
    with pytest.raises(ValueError, match="spatial_dims"):
        replace_norm(model, "batch_norm_affine")  # GroupNorm does not tell its input's shape
    report: list = []
    new = replace_norm(model, "batch_norm_affine", spatial_dims=2, report=report)
    assert isinstance(new[1], nn.BatchNorm2d) and isinstance(new[3], nn.BatchNorm2d)
    assert report[0].detail == "weight,bias"  # GroupNorm has no running stats
    assert torch.equal(new[1].weight, model[1].weight)
    assert report[1].detail == ""
    assert torch.equal(new[3].weight, torch.ones(4))  # LayerNorm's (4, 4, 4) weight not carried
    flat = replace_norm(nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5)), "batch_norm")
    # LayerNorm(5) normalizes the last dim: its replacement runs on the (M, 5) rows
    assert isinstance(flat[1], ChannelsLast) and isinstance(flat[1].norm, nn.BatchNorm1d)


def test_replace_normlayer_and_dtype() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ScaleShift(4)).double()
    new = replace_norm(model, "batch_norm_affine")
    assert isinstance(new[1], nn.BatchNorm2d) and new[1].weight.dtype == torch.float64
    assert new(torch.randn(2, 3, 5, 5, dtype=torch.float64)).shape == (2, 4, 3, 3)


def test_bad_input() -> None:
    model = normlab_model("mlp", "batch_norm")
    with pytest.raises(KeyError, match="batch_norm_affine.*none"):
        replace_norm(model, "no_such_norm")
    for fn in (remove_norm, fold_batch_norm, lambda m: replace_norm(m, "batch_norm")):
        with pytest.raises(TypeError, match="nn.Module"):
            fn([nn.BatchNorm1d(3)])


# --- folding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key", MODELS)
def test_fold_is_exact(key: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    build, in_shape, n = MODELS[key]
    model = build().to(dtype)
    randomize_and_train(model, in_shape)
    x = torch.randn(4, *in_shape, dtype=dtype) * 2 + 1
    with torch.no_grad():
        ref = model(x)
        folded_model, folded, skipped = fold(model)
        out = folded_model(x)
    assert rel_err(out, ref) < 1e-5
    assert count(folded_model, _BatchNorm) == 0 and len(folded) == n
    assert skipped == []
    assert type(folded_model) is type(model) and count(model, _BatchNorm) == n
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # the original is untouched
    weights = [m for m in folded_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(m.bias is not None for m in weights)  # bias-free convs got one


def test_fold_inplace_returns_same_object() -> None:
    model = normlab_model("cnn", "batch_norm").eval()
    assert fold_batch_norm(model, inplace=True) is model
    assert count(model, _BatchNorm) == 0


def test_fold_leaves_and_reports_groupnorm() -> None:
    torch.manual_seed(0)
    model = ResNet(gn=True)
    randomize_and_train(model, (3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    folded_model, folded, skipped = fold(model)
    assert count(folded_model, _BatchNorm) == 0 and len(folded) == 6
    assert [name for name, _ in skipped] == ["head.1"]
    assert "per-sample" in skipped[0][1]
    assert isinstance(folded_model.head[1], nn.GroupNorm)
    with torch.no_grad():
        assert rel_err(folded_model(x), model(x)) < 1e-5


def test_fold_normlayer_subclasses() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ScaleShift(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), SampleNorm(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    folded_model, folded, skipped = fold(model)
    assert folded == [("1", "0")]
    assert isinstance(folded_model[1], nn.Identity) and isinstance(folded_model[4], SampleNorm)
    assert skipped[0][0] == "4" and "eval_affine() is None" in skipped[0][1]
    with torch.no_grad():
        assert rel_err(folded_model(x), model(x)) < 1e-5


def test_fold_falls_back_to_sequential_adjacency() -> None:
    torch.manual_seed(0)
    model = Untraceable()
    with pytest.raises(Exception):
        fx.symbolic_trace(model)  # else this test would not exercise the fallback
    randomize_and_train(model, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    folded_model, folded, _ = fold(model)
    assert sorted(folded) == [("body.1.0", "body.0"), ("body.3", "body.2")]
    with torch.no_grad():
        assert rel_err(folded_model(x), model(x)) < 1e-5


def test_fold_skips_conv_whose_output_is_used_elsewhere() -> None:
    torch.manual_seed(0)
    model = SharedOutput()
    randomize_and_train(model, (3, 5, 5))
    folded_model, folded, skipped = fold(model)
    assert folded == [] and [name for name, _ in skipped] == ["bn"]
    assert "feeds only" in skipped[0][1]
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.allclose(folded_model(x), model(x))


def test_fold_reports_batch_stats_bn() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    _, folded, skipped = fold(model)
    assert folded == [] and "batch statistics" in skipped[0][1]


# --- fold_weights ----------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_fold_weights_conv_matches_conv_then_affine(bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias).double()
    scale, shift = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    expected = conv(x) * scale[None, :, None, None] + shift[None, :, None, None]
    weight, new_bias = fold_weights(conv.weight, conv.bias, scale, shift)
    got = F.conv2d(x, weight, new_bias, stride=2, padding=1)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fold_weights_linear_and_shapes() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    scale, shift = torch.rand(3) + 0.5, torch.randn(3)
    x = torch.randn(6, 4)
    weight, bias = fold_weights(linear.weight, linear.bias, scale, shift)
    assert weight.dtype == torch.float32
    assert torch.allclose(F.linear(x, weight, bias), linear(x) * scale + shift, atol=1e-6)
    with pytest.raises(ValueError, match="scale must have shape"):
        fold_weights(linear.weight, linear.bias, torch.ones(4), shift)


def test_fold_skips_hooked_or_parametrized_weight_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                          nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)),
                          nn.BatchNorm1d(4)).eval()
    model[0].register_forward_hook(lambda module, args, out: None)
    _, folded, skipped = fold(model)
    assert folded == []
    assert [name for name, _ in skipped] == ["1", "3"]
    assert "cannot fold into 0: it has forward hooks" in skipped[0][1]
    assert "parametrized" in skipped[1][1]

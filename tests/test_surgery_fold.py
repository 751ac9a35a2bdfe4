"""``fold_batch_norm`` against torch's own fusion utilities, on transposed convolutions,
conv subclasses, bad statistics and training-mode models.

The independent reference is ``torch.nn.utils.fusion.fuse_conv_bn_eval`` /
``fuse_linear_bn_eval`` (torch's code, not normlab's), and for what torch cannot fold (grouped
transposed convolutions) the unfolded model's eval output.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from normlab.surgery import fold_batch_norm, fold_weights


def trained_stats(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Random affine parameters and running statistics moved by train forwards; eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)
        model.train()
        for _ in range(3):
            model(torch.randn(8, *shape, generator=g) * 2 + 1)
    return model.eval()


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


class Decoder(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)
        self.bn1 = nn.BatchNorm1d(5)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.fc(F.relu(self.bn(self.up(x))).mean(dim=(2, 3))))


def test_fold_matches_torch_fuse_conv_and_linear_bn_eval():
    torch.set_default_dtype(torch.float64)
    try:
        model = trained_stats(Decoder(), (4, 5, 5))
        report: list = []
        folded = fold_batch_norm(model, report=report)
    finally:
        torch.set_default_dtype(torch.float32)
    assert [(r.name, r.action, r.detail) for r in report] == [
        ("bn", "folded", "up"), ("bn1", "folded", "fc")]
    up = fuse_conv_bn_eval(copy.deepcopy(model.up), model.bn, transpose=True)
    fc = fuse_linear_bn_eval(copy.deepcopy(model.fc), model.bn1)
    for ours, theirs in ((folded.up, up), (folded.fc, fc)):
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-12, atol=1e-12)
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.bn1, nn.Identity)


def test_fold_conv_matches_torch_on_the_zoo_resnet():
    import zoo

    model = trained_stats(zoo.ZOO["resnet18_style"].build(), (3, 32, 32))
    folded = fold_batch_norm(model)
    pairs = [("conv1", "bn1"), ("layer2.0.downsample.0", "layer2.0.downsample.1"),
             ("layer3.0.conv2", "layer3.0.bn2")]
    for conv, bn in pairs:
        theirs = fuse_conv_bn_eval(copy.deepcopy(model.get_submodule(conv)),
                                   model.get_submodule(bn))
        ours = folded.get_submodule(conv)
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-5, atol=1e-6)


def test_fold_grouped_transposed_conv_keeps_eval_output():
    """torch's fuser scales dim 1 by all out channels, so groups > 1 has no torch reference:
    the unfolded model is the reference."""
    model = trained_stats(Decoder(groups=2), (4, 5, 5))
    x = torch.randn(3, 4, 5, 5)
    report: list = []
    folded = fold_batch_norm(model, report=report)
    assert [r.action for r in report] == ["folded", "folded"]
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-5


def test_fold_weights_transposed_layout():
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(4, 6, 3, groups=2).double()
    scale, shift = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    weight, bias = fold_weights(conv.weight, conv.bias, scale, shift, transposed=True, groups=2)
    got = F.conv_transpose1d(x, weight, bias, groups=2)
    torch.testing.assert_close(got, conv(x) * scale[:, None] + shift[:, None])


class Padded(nn.Conv2d):
    """Pads in forward, then a plain conv with the same weight (EfficientNet's style)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride)


class Standardized(nn.Conv2d):
    """Standardizes its weight in forward: folding a scale into it would be undone."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_fold_decides_by_a_probe_forward_not_by_class():
    model = trained_stats(nn.Sequential(Padded(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                        Standardized(4, 4, 3), nn.BatchNorm2d(4)), (3, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    report: list = []
    folded = fold_batch_norm(model, report=report)
    assert [(r.name, r.action) for r in report] == [("1", "folded"), ("4", "skipped")]
    assert "Standardized.forward does not use its weight unchanged" in report[1].detail
    assert torch.equal(folded[3].weight, model[3].weight)  # the refused fold was undone
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-5


def test_fold_efficientnet_same_padding_convs():
    import zoo

    entry = zoo.ZOO["efficientnet_style"]
    model = trained_stats(entry.build(), entry.input_shape)
    report: list = []
    folded = fold_batch_norm(model, report=report)
    assert report and all(r.action == "folded" for r in report)
    x, _ = zoo.make_batch(entry, 4)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-5


def test_fold_refuses_a_model_in_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode.*call model.eval\\(\\) first") as err:
        fold_batch_norm(model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["nan_var", "inf_mean", "zero_var_eps0"])
def test_fold_refuses_non_finite_statistics(bad):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        if bad == "nan_var":
            model[1].running_var[2] = float("nan")
        elif bad == "inf_mean":
            model[1].running_mean[0] = float("inf")
        else:
            model[1].eps = 0.0
            model[1].running_var[1] = 0.0
    weight = model[0].weight.clone()
    with pytest.raises(ValueError, match="cannot fold 1 \\(BatchNorm2d\\): its eval map is "
                                         "not finite") as err:
        fold_batch_norm(model, inplace=True)
    assert "\n" not in str(err.value)
    assert isinstance(model[1], nn.BatchNorm2d) and torch.equal(model[0].weight, weight)

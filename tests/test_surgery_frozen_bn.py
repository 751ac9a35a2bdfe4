"""Surgery on FrozenBatchNorm2d, the BatchNorm of torchvision's detection backbones,
detectron2 and timm's ``freeze_batch_norm_2d``: statistics and affine as buffers, a plain
``nn.Module`` (not torch's BatchNorm)."""

import pytest
import torch
from torch import nn

from normlab import fold_batch_norm, remove_norm, replace_norm
from normlab.surgery import is_norm_layer
from normlab.surgery.detect import is_frozen_batch_norm, norm_features, norm_spatial_dims


class FrozenBatchNorm2d(nn.Module):
    """Written as torchvision.ops.misc writes it: no num_features attribute."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                           ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), fill))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class Bottleneck(nn.Module):
    """torchvision ResNet style with a frozen norm: in-place ReLU, ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), FrozenBatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), FrozenBatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def backbone() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8),
                          nn.ReLU(inplace=True), Bottleneck(8), Bottleneck(8))
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.normal_()
            m.bias.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
    return model.eval()


def test_recognised_by_name_and_buffers():
    frozen = FrozenBatchNorm2d(5)
    assert is_frozen_batch_norm(frozen) and is_norm_layer(frozen)
    assert norm_features("bn", frozen) == 5 and norm_spatial_dims("bn", frozen) == 2

    class Affine(FrozenBatchNorm2d):  # same buffers, another name: not a norm
        pass

    Affine.__name__ = "Affine"
    assert not is_norm_layer(Affine(5))
    bad = FrozenBatchNorm2d(5)
    bad.running_var = torch.ones(4)  # buffers of unequal length
    assert not is_norm_layer(bad)


def test_fold_matches_the_float64_eval_output():
    model = backbone()
    x = torch.randn(2, 3, 8, 8)
    ref = backbone().double()(x.double())
    report = []
    folded = fold_batch_norm(model, report=report)
    assert [r.action for r in report] == ["folded"] * 5
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # a copy
    torch.testing.assert_close(folded(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_fold_refuses_a_non_finite_map_and_skips_without_eps():
    model = backbone()
    model[1].running_var[0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        fold_batch_norm(model)
    model = backbone()
    del model[1].eps
    report = []
    fold_batch_norm(model, report=report)
    assert report[0].action == "skipped" and "eps" in report[0].detail


def test_remove_and_replace():
    x = torch.randn(2, 3, 8, 8)
    removed = remove_norm(backbone())
    assert not any(is_norm_layer(m) for m in removed.modules())
    assert removed(x).shape == (2, 8, 8, 8)
    frozen, report = backbone(), []
    replaced = replace_norm(frozen, "batch_norm", report=report)
    bns = [m for m in replaced.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 5 and all(b.num_features == 8 for b in bns)
    # the frozen statistics and affine carry over: at the same eps, the same eval function
    assert report[0].detail == "weight,bias,running_mean,running_var"
    torch.testing.assert_close(replaced.eval()(x), frozen(x))
    assert replaced.train()(x).shape == (2, 8, 8, 8)

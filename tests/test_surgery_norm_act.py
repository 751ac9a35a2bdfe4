"""Surgery on norm layers that carry their activation (timm's ``BatchNormAct2d`` family):
removing, replacing or folding the normalization keeps the activation."""

import pytest
import torch
from torch import nn

from normlab import fold_batch_norm, remove_norm, replace_norm
from normlab.surgery.detect import is_frozen_batch_norm


class BatchNormAct2d(nn.BatchNorm2d):
    """As timm.layers.norm_act writes it: batch norm, then ``drop``, then ``act``."""

    def __init__(self, c: int, act_layer=nn.SiLU) -> None:
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class FrozenBatchNormAct2d(nn.Module):
    """timm's frozen form: buffers, then ``drop`` and ``act``."""

    def __init__(self, c: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.rand(c) + 0.5)
        self.drop, self.act = nn.Identity(), nn.ReLU(inplace=True)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return self.act(self.drop(x * scale[:, None, None] + shift[:, None, None]))


class ActFirst(nn.BatchNorm2d):
    """Applies its submodule *before* normalizing: nothing simple stays without the norm."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return super().forward(self.act(x))


def net(norm) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), norm(8), nn.Conv2d(8, 2, 1))
    if isinstance(model[1], nn.BatchNorm2d):
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("norm", [BatchNormAct2d, FrozenBatchNormAct2d])
def test_fold_keeps_the_activation_and_the_eval_function(norm):
    model = net(norm)
    x = torch.randn(2, 3, 6, 6)
    report = []
    folded = fold_batch_norm(model, report=report)
    assert [(r.action, r.new) for r in report] == [("folded", type(model[1].act).__name__)]
    assert type(folded[1]) is type(model[1].act)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)


def test_frozen_norm_act_is_a_frozen_batch_norm_and_lookalikes_are_not():
    assert is_frozen_batch_norm(FrozenBatchNormAct2d(4))

    class FrozenBatchNorm1d(FrozenBatchNormAct2d):  # not a 2-d map layer
        pass

    class WithParameter(FrozenBatchNormAct2d):
        def __init__(self, c):
            super().__init__(c)
            self.gain = nn.Parameter(torch.ones(c))

    WithParameter.__name__ = "FrozenBatchNorm2d"
    assert not is_frozen_batch_norm(FrozenBatchNorm1d(4))
    assert not is_frozen_batch_norm(WithParameter(4))


def test_remove_and_replace_keep_the_activation():
    removed = remove_norm(net(BatchNormAct2d))
    assert isinstance(removed[1], nn.SiLU)
    report = []
    replaced = replace_norm(net(BatchNormAct2d), "group_norm", report=report)
    assert isinstance(replaced[1], nn.Sequential) and isinstance(replaced[1][1], nn.SiLU)
    assert report[0].new == "GroupNorm+SiLU"
    x = torch.randn(2, 3, 6, 6)
    assert replaced[:2](x).min() >= -0.2785  # SiLU's minimum: the activation is applied


@pytest.mark.parametrize("surgery", [
    lambda m: remove_norm(m, inplace=True),
    lambda m: replace_norm(m, "group_norm", inplace=True),
    lambda m: fold_batch_norm(m, inplace=True)])
def test_a_norm_whose_submodules_do_not_follow_it_is_refused_before_any_change(surgery):
    model = net(ActFirst)
    with pytest.raises(ValueError, match=r"1 \(ActFirst\).*cannot tell what to keep"):
        surgery(model)
    assert isinstance(model[1], ActFirst)


class LayerNormAct2d(nn.LayerNorm):
    """As timm writes it: a LayerNorm subclass that permutes NCHW maps in its own forward."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop, self.act = nn.Identity(), nn.GELU()

    def forward(self, x):
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                     self.bias, self.eps).permute(0, 3, 1, 2)
        return self.act(self.drop(x))


def test_a_channel_first_layer_norm_with_activation_keeps_it():
    model = net(LayerNormAct2d)
    x = torch.randn(2, 3, 6, 6)
    replaced = replace_norm(model, "batch_norm")
    assert isinstance(replaced[1], nn.Sequential) and isinstance(replaced[1][1], nn.GELU)
    assert replaced(x).shape == (2, 2, 6, 6)
    assert isinstance(remove_norm(model)[1], nn.GELU)


def test_a_norm_registered_under_two_names_is_replaced_under_both():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.norm = nn.BatchNorm2d(8)
            self.again = self.norm

        def forward(self, x):
            return self.again(self.norm(self.conv(x)))

    removed = remove_norm(Shared())
    assert isinstance(removed.norm, nn.Identity) and removed.again is removed.norm
    replaced = replace_norm(Shared(), "group_norm")
    assert type(replaced.again).__name__ == "GroupNorm" and replaced.again is replaced.norm


def test_fresh_layers_are_probed_with_random_statistics():
    """A fresh BatchNorm in eval mode only divides by sqrt(1 + eps), which commutes with a
    ReLU applied before it: the probe randomizes the copy's statistics and affine."""
    fresh = nn.Sequential(nn.Conv2d(3, 8, 1), ActFirst(8), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match="cannot tell what to keep"):
        remove_norm(fresh)


def test_kept_submodules_take_the_layers_mode_so_folding_twice_works():
    class BNDropAct(BatchNormAct2d):
        def __init__(self, c):
            super().__init__(c)
            self.drop = nn.Dropout(0.1)

    folded = fold_batch_norm(net(BNDropAct))
    assert isinstance(folded[1], nn.Sequential) and not folded[1].training
    assert fold_batch_norm(folded)[1] is not None


def test_a_parametrized_norm_is_not_mistaken_for_a_norm_with_submodules():
    from torch.nn.utils import parametrize

    class Positive(nn.Module):
        def forward(self, w):
            return w.abs()

    model = net(nn.BatchNorm2d)
    parametrize.register_parametrization(model[1], "weight", Positive())
    assert isinstance(remove_norm(model)[1], nn.Identity)

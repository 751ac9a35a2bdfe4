"""``replace_norm`` on a ``LayerNorm(C)`` of ``(N, T, C)`` tokens: the replacement normalizes
per channel on the last dim (each token's feature vector is a row).

References are closed forms written here: torch's ``F.layer_norm`` per token, BN statistics
over batch and tokens, GroupNorm per token and group.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.surgery import ChannelsLast, fold_batch_norm, remove_norm, replace_norm


class TokenBlock(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)
        self.norm = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.norm(self.fc(x))


def tokens() -> torch.Tensor:
    return torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0)) * 2 + 1


def test_layer_norm_method_on_tokens_is_the_per_token_layer_norm():
    torch.manual_seed(0)
    model = TokenBlock()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    report: list = []
    new = replace_norm(model, "layer_norm", eps=1e-6, report=report)
    assert isinstance(new.norm, ChannelsLast)
    assert report[0].detail == "weight,bias"  # the LayerNorm's affine map carried over
    x = tokens()
    want = F.layer_norm(model.fc(x), (8,), model.norm.weight, model.norm.bias, eps=1e-6)
    torch.testing.assert_close(new(x), want)


def test_batch_norm_on_tokens_pools_batch_and_tokens():
    new = replace_norm(TokenBlock(), "batch_norm").train()
    x = tokens()
    z = new.fc(x)
    mean, var = z.mean(dim=(0, 1)), z.var(dim=(0, 1), unbiased=False)
    torch.testing.assert_close(new(x), (z - mean) / torch.sqrt(var + 1e-5))
    # one running mean per channel (C = 8 entries), from the N*T rows
    bn = new.norm.norm
    assert bn.running_mean.shape == (8,)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean.detach())


def test_group_norm_options_and_per_token_groups():
    new = replace_norm(TokenBlock(), "group_norm", num_groups=4)
    assert new.norm.norm.num_groups == 4
    x = tokens()
    z = new.fc(x).reshape(3, 5, 4, 2)
    want = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False,
                                                              keepdim=True) + 1e-5)
    torch.testing.assert_close(new(x), want.reshape(3, 5, 8))


@pytest.mark.parametrize("method", ["batch_norm_affine", "l1_batch_norm", "kalman_norm"])
def test_channels_last_bn_folds_into_the_linear_before_it(method):
    """The Linear's out features are the last dim: a channel-last BN after it folds."""
    model = replace_norm(TokenBlock(), method)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(tokens() * 2 + 1)
    model.eval()
    report: list = []
    folded = fold_batch_norm(model, report=report)
    assert [(r.name, r.action, r.detail) for r in report] == [("norm", "folded", "fc")]
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        assert ((folded(x) - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_remove_and_replace_again_see_the_wrapper_as_one_norm():
    new = replace_norm(TokenBlock(), "batch_norm")
    report: list = []
    bare = remove_norm(new, report=report)
    assert isinstance(bare.norm, nn.Identity) and [r.old for r in report] == ["ChannelsLast"]
    again = replace_norm(new, "layer_norm")
    assert isinstance(again.norm, ChannelsLast)
    with pytest.raises(ValueError, match="expects \\(N, \\*, 8\\) input"):
        again.norm(torch.randn(2, 8, 3))


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over C of ``(N, C, H, W)`` maps, permuting itself."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class LayerNormFp32(nn.LayerNorm):
    """A channel-last LayerNorm with its own forward (the float32 up-cast kind)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def test_channel_first_layernorm_subclass_is_replaced_on_its_maps():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8))
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    new = replace_norm(model, "batch_norm").train()
    assert not isinstance(new[1], ChannelsLast)
    y = model[0](x)
    ref = (y - y.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        y.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(new(x), ref, rtol=1e-4, atol=1e-4)  # shift starts at 0


def test_channel_last_layernorm_subclass_stays_on_rows():
    model = nn.Sequential(nn.Linear(8, 8), LayerNormFp32(8))
    new = replace_norm(model, "layer_norm")
    assert isinstance(new[1], ChannelsLast)
    x = tokens()
    torch.testing.assert_close(new(x), F.layer_norm(model[0](x), (8,)), rtol=1e-5, atol=1e-5)

"""``insert_norm``: a norm-free model gets a method's normalization after every weight layer
but the logit layer.

References: the networks ``build_model`` builds with each method (the norm placed by the
model's own code, not by surgery) given the same weights, and closed forms written here
(torch's LayerNorm over each token, BN statistics over batch and tokens).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.lab.models import build_model
from normlab.layers import NormLayer
from normlab.methods import METHODS, create_method
from normlab.surgery import ChannelsLast, insert_norm, is_norm_layer

from surgery_helpers import copy_weights

IMAGE = (1, 12, 12)
LAYER_METHODS = [n for n in METHODS if create_method(n).kind == "layer"]


def batch(n: int = 8) -> torch.Tensor:
    return torch.randn(n, *IMAGE, generator=torch.Generator().manual_seed(1)) * 2 + 0.5


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_insert_equals_the_network_built_with_the_method(method, arch):
    torch.manual_seed(0)
    bare = build_model(arch, create_method("none"), IMAGE, 10)
    report: list = []
    new = insert_norm(bare, method, batch(), report=report)
    assert not any(is_norm_layer(m) for m in bare.modules())  # a copy was changed
    assert [r.action for r in report].count("inserted") == 3
    assert [r for r in report if r.action == "skipped"][-1].detail.startswith("the logit")
    torch.manual_seed(0)
    reference = build_model(arch, create_method(method), IMAGE, 10)
    copy_weights(reference, new)
    norms_new = [m for m in new.modules() if isinstance(m, NormLayer) or is_norm_layer(m)]
    norms_ref = [m for m in reference.modules() if isinstance(m, NormLayer) or is_norm_layer(m)]
    assert [type(m) for m in norms_new] == [type(m) for m in norms_ref]
    for a, b in zip(norms_new, norms_ref):  # same initial state (some layers draw theirs)
        a.load_state_dict(b.state_dict())
    x = batch(48)  # more samples than a decorrelated group has channels
    new.train(), reference.train()
    torch.manual_seed(2)
    got = new(x)
    torch.manual_seed(2)
    want = reference(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class TokenModel(nn.Module):
    """(N, T, F) tokens: Linear embedding, GELU, Linear, mean over tokens, head — the head
    registered first, so "last registered" is not "last executed"."""

    def __init__(self, act_after_mix: bool = False) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.embed = nn.Linear(6, 16)
        self.act = nn.GELU()
        self.mix = nn.Linear(16, 16)
        self.act2 = nn.SiLU() if act_after_mix else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.mix(self.act(self.embed(x)))).mean(dim=1))


def tokens(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 5, 6, generator=torch.Generator().manual_seed(3)) * 3 + 1


def test_insert_on_tokens_normalizes_each_channel_on_the_last_dim():
    torch.manual_seed(0)
    model = TokenModel()
    ln = insert_norm(model, "layer_norm", tokens(), eps=1e-6)
    assert isinstance(ln.embed[1], ChannelsLast) and isinstance(ln.mix[1], ChannelsLast)
    assert isinstance(ln.head, nn.Linear)  # the logit layer, executed last, got no norm
    x = tokens(4)
    # reference: torch's per-token LayerNorm, written out
    h = F.gelu(F.layer_norm(model.embed(x), (16,), eps=1e-6))
    want = model.head(F.layer_norm(model.mix(h), (16,), eps=1e-6).mean(dim=1))
    torch.testing.assert_close(ln(x), want)
    bn = insert_norm(model, "batch_norm_affine", tokens()).train()
    z = model.embed(x)
    mean, var = z.mean(dim=(0, 1)), z.var(dim=(0, 1), unbiased=False)  # over batch and tokens
    torch.testing.assert_close(bn.embed(x), (z - mean) / torch.sqrt(var + 1e-5))


def test_insert_block_method_takes_over_the_activation():
    report: list = []
    proxy = insert_norm(TokenModel(act_after_mix=True), "proxy_norm", tokens(), report=report,
                        base_norm="layer")
    assert isinstance(proxy.act, nn.Identity) and isinstance(proxy.act2, nn.Identity)
    assert [r.name for r in report if r.action == "removed"] == ["act", "act2"]
    assert isinstance(proxy.embed[1][1], ChannelsLast)  # the proxy-normalized activation
    assert isinstance(proxy.embed[1][1].norm.activation, nn.GELU)
    assert proxy(tokens()).shape == (4, 3)
    model = TokenModel()
    with pytest.raises(ValueError, match="'frn'.* but mix \\(Linear\\) is not followed by an "
                                         "activation") as err:
        insert_norm(model, "frn", tokens())
    assert "\n" not in str(err.value)


def test_insert_refusals_are_one_line():
    cases = [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "batch_norm",
         "without normalization layers, but 1 is a BatchNorm1d: use normlab.replace_norm"),
        (nn.Sequential(nn.Linear(3, 2)), "batch_norm", "only weight layer .* is the logit"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), "std_loss", "StandardizationLoss"),
        (nn.Sequential(nn.ReLU()), "batch_norm", "called no Conv"),
    ]
    for model, method, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            insert_norm(model, method, torch.randn(2, 3))
        assert "\n" not in str(err.value)


def test_insert_skips_weight_layers_the_forward_never_calls():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = self.proj(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    report: list = []
    new = insert_norm(WithMHA(), "group_norm", torch.randn(2, 3, 8), report=report,
                      num_groups=2)
    skipped = {r.name: r.detail for r in report if r.action == "skipped"}
    assert "attn.out_proj" in skipped and "never called" in skipped["attn.out_proj"]
    assert new.proj[1].norm.num_groups == 2  # the method option reached the layer

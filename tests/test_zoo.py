"""The model zoo itself: every entry trains, has the right output shape, and is written the
way its family is (in-place activations that really run in place, downsample submodules,
depthwise convs, padding in forward, LayerNorm on (N, T, C) tokens, packed sequences)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo import ZOO, make_batch
from zoo.efficientnet import Conv2dStaticSamePadding
from zoo.recurrent import PackedLSTMClassifier

NAMES = list(ZOO)
NORM_BASES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_three_sgd_steps(name):
    entry = ZOO[name]
    model = entry.build().train()
    x, y = make_batch(entry, 4, seed=1)
    assert model(x).shape == entry.output_shape(4)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    params = list(model.parameters())
    assert all(p.grad is not None for p in params), "a parameter is not on the loss's graph"
    # A gradient can vanish by symmetry (up to rounding): the Mixer's last token-mixing bias
    # adds a per-token constant across channels, which the final LayerNorm subtracts again.
    stepped = [not torch.equal(a, p) for a, p in zip(before, params)]
    assert sum(stepped) >= len(params) - 1, f"{len(params) - sum(stepped)} parameters stuck"


@pytest.mark.parametrize("name", NAMES)
def test_norm_types_are_declared(name):
    entry = ZOO[name]
    found = {type(m) for m in entry.build().modules() if isinstance(m, NORM_BASES)}
    assert found == set(entry.norm_types)
    assert entry.has_norm == bool(found)


@pytest.mark.parametrize("name", [n for n in NAMES if ZOO[n].inplace_types])
def test_inplace_activations_run_in_place(name):
    entry = ZOO[name]
    model = entry.build()
    acts = [m for m in model.modules()
            if isinstance(m, entry.inplace_types) and getattr(m, "inplace", False)]
    assert acts, f"{name} has no in-place {entry.inplace_types}"
    same_storage = []

    def hook(module, args, output):
        same_storage.append(output.data_ptr() == args[0].data_ptr())

    handles = [m.register_forward_hook(hook) for m in acts]
    model(make_batch(entry, 4)[0])
    for h in handles:
        h.remove()
    assert same_storage and all(same_storage)


def test_resnet_is_torchvision_shaped():
    model = ZOO["resnet18_style"].build()
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 4
    with_downsample = [b for b in blocks if b.downsample is not None]
    assert len(with_downsample) == 3  # stages 2-4 change stride and width
    for b in with_downsample:
        conv, bn = b.downsample
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert isinstance(bn, nn.BatchNorm2d)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)


def test_mobilenet_has_depthwise_and_linear_bottlenecks():
    model = ZOO["mobilenet_v2_style"].build()
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d)
                 and m.groups == m.in_channels == m.out_channels > 1]
    assert depthwise
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    assert any(b.use_res_connect for b in blocks) and not all(b.use_res_connect for b in blocks)
    for b in blocks:  # linear bottleneck: the block ends conv1x1 -> BN, no activation
        *_, conv, bn = b.conv
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert isinstance(bn, nn.BatchNorm2d)


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (9, 5, 2), (8, 3, 2), (7, 1, 1)])
def test_static_same_padding_matches_tensorflow_same(size, kernel, stride):
    conv = Conv2dStaticSamePadding(2, 3, kernel, stride=stride)
    assert conv.padding == (0, 0)  # the padding happens in forward only
    x = torch.randn(1, 2, size, size)
    # TensorFlow SAME: output ceil(in / stride), total pad split with the extra on the right
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    lo, hi = total // 2, total - total // 2
    ref = F.conv2d(F.pad(x, [lo, hi, lo, hi]), conv.weight, conv.bias, stride)
    assert conv(x).shape[-2:] == (out, out)
    torch.testing.assert_close(conv(x), ref)


def test_efficientnet_has_squeeze_excite_and_skips():
    model = ZOO["efficientnet_style"].build()
    blocks = list(model._blocks)
    assert all(hasattr(b, "_se_reduce") and hasattr(b, "_se_expand") for b in blocks)
    assert any(b.id_skip for b in blocks)
    assert any(m.groups > 1 for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["vit_style", "mlp_mixer_style"])
def test_layer_norm_sees_tokens(name):
    entry = ZOO[name]
    model = entry.build()
    shapes = []
    handles = [m.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
               for m in model.modules() if isinstance(m, nn.LayerNorm)]
    model(make_batch(entry, 4)[0])
    for h in handles:
        h.remove()
    tokens = (32 // 8) ** 2 + (name == "vit_style")  # 16 patches, plus the ViT's cls token
    assert shapes and all(s == (4, tokens, 32) for s in shapes)


def test_vit_attention_is_batch_first():
    mha = [m for m in ZOO["vit_style"].build().modules() if isinstance(m, nn.MultiheadAttention)]
    assert mha and all(m.batch_first for m in mha)


def test_unet_upsamples_with_transposed_convs():
    ups = [m for m in ZOO["unet_style"].build().modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 2 and all(m.stride == (2, 2) for m in ups)


def test_packed_lstm_ignores_padding():
    entry = ZOO["packed_lstm_classifier"]
    model = entry.build().eval()
    x, _ = make_batch(entry, 4, seed=2)
    lengths = PackedLSTMClassifier.lengths(x)
    assert lengths[0] == 28 and (lengths < 28).any()
    out = model(x)
    for i, n in enumerate(lengths.tolist()):  # reference: the sample alone, unpadded
        _, (h, _) = model.rnn(x[i:i + 1, :n])
        torch.testing.assert_close(out[i], model.fc(h[-1])[0])


def test_make_batch_is_reproducible_and_checks_names():
    a, b = make_batch("unet_style", 3, seed=5), make_batch("unet_style", 3, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (3, 32, 32) and int(a[1].max()) < 4
    assert not torch.equal(a[0], make_batch("unet_style", 3, seed=6)[0])
    with pytest.raises(KeyError, match="known: resnet18_style"):
        make_batch("resnet50", 2)

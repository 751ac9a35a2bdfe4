"""Surgery on layers that carry a nonlinearity (FRN+TLU, Proxy Norm) and on methods whose
block is not norm-then-activation (frn, proxy_norm, ic_layer).

The references are networks built directly: removing the norms of an FRN network must give
the bare ReLU network with the same weights, replacing them must give the network built
with the new method, computed independently by ``build_model``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.lab.models import build_model
from normlab.layers import FilterResponseNorm, ICLayer, NormLayer, ProxyNormActivation
from normlab.layers.base import with_spatial_dims
from normlab.methods import create_method
from normlab.surgery import is_norm_layer, remove_norm, replace_norm

from surgery_helpers import copy_weights

IMAGE = (1, 12, 12)


def build(arch: str, method: str) -> nn.Module:
    return build_model(arch, create_method(method), IMAGE, 10)


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def randomize_tau(model: nn.Module) -> None:
    """Move every TLU threshold off 0, so a test that keeps tau cannot pass by accident."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FilterResponseNorm) and m.tau is not None:
                m.tau.uniform_(-0.5, 0.5)


def x_batch(n: int = 6) -> torch.Tensor:
    return torch.randn(n, *IMAGE, generator=torch.Generator().manual_seed(3)) * 2 + 0.5


# --- without_norm -------------------------------------------------------------------------


def test_without_norm_of_each_layer():
    assert isinstance(FilterResponseNorm(4).without_norm(), nn.ReLU)
    assert isinstance(FilterResponseNorm(4, tlu=False).without_norm(), nn.Identity)
    act = nn.Tanh()
    assert ProxyNormActivation(4, act).without_norm() is act
    assert ProxyNormActivation(4, act).follows_norm and not FilterResponseNorm(4).follows_norm
    assert isinstance(ICLayer(4).without_norm(), nn.Identity)  # its activation is outside


def test_tlu_with_zero_threshold_is_relu():
    """The documented reason FRN+TLU leaves a ReLU: max(y, 0) = ReLU(y)."""
    layer = FilterResponseNorm(3)
    x = torch.randn(4, 3, 5, 5)
    y = layer(x)
    plain = FilterResponseNorm(3, tlu=False)(x)
    torch.testing.assert_close(y, torch.relu(plain), rtol=0, atol=0)
    assert (plain < 0).any()


def test_spatial_dims_recorded_by_methods():
    for method, arch, dims in [("frn", "cnn", 2), ("frn", "mlp", 0), ("ic_layer", "cnn", 2),
                               ("kalman_norm", "mlp", 0), ("group_norm", "cnn", 2)]:
        layers = [m for m in build(arch, method).modules() if isinstance(m, NormLayer)]
        assert layers and all(m.spatial_dims == dims for m in layers), (method, arch)
    with pytest.raises(ValueError, match="spatial_dims"):
        with_spatial_dims(ICLayer(3), -1)


# --- remove_norm keeps the nonlinearity ---------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_remove_norm_of_frn_network_is_the_bare_relu_network(arch):
    torch.manual_seed(0)
    model = build(arch, "frn")
    randomize_tau(model)
    bare = remove_norm(model)
    assert not any(is_norm_layer(m) for m in bare.modules())
    assert count(bare, nn.ReLU) == count(model, FilterResponseNorm) == 3
    reference = copy_weights(model, build(arch, "none"))
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(bare(x), reference(x))
    assert count(model, FilterResponseNorm) == 3  # the original is untouched


@pytest.mark.parametrize("arch", ["cnn", "mlp", "mlp_sigmoid"])
def test_remove_norm_of_proxy_network_keeps_the_model_activation(arch):
    torch.manual_seed(0)
    model = build(arch, "proxy_norm")
    bare = remove_norm(model)
    assert not any(is_norm_layer(m) for m in bare.modules())
    reference = copy_weights(model, build(arch, "none"))
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(bare(x), reference(x))
    kind = nn.Sigmoid if arch == "mlp_sigmoid" else nn.ReLU
    assert count(bare, kind) == count(reference, kind) == 3


def test_remove_norm_of_ic_network_keeps_relu_before_it():
    model = build("cnn", "ic_layer").eval()
    bare = remove_norm(model)
    assert count(bare, ICLayer) == 0 and count(bare, nn.ReLU) == 3
    reference = copy_weights(model, build("cnn", "none"))
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(bare(x), reference(x))


# --- replace_norm keeps the nonlinearity --------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_replace_frn_by_batch_norm_keeps_relu(arch):
    torch.manual_seed(0)
    model = build(arch, "frn")
    randomize_tau(model)
    report: list = []
    new = replace_norm(model, "batch_norm_affine", report=report)
    bn = nn.BatchNorm2d if arch == "cnn" else nn.BatchNorm1d
    assert [r.new for r in report] == [f"{bn.__name__}+ReLU"] * 3
    assert count(new, FilterResponseNorm) == 0 and count(new, bn) == 3
    # the carried FRN weight/bias are the BN's affine map
    assert all({"weight", "bias"} <= set(r.detail.split(",")) for r in report)
    # Train mode: BN subtracts the batch mean, so the conv biases FRN kept cancel and the
    # network equals the batch_norm_affine network built with the same weights.
    reference = copy_weights(model, build(arch, "batch_norm_affine"))
    x = x_batch(16)
    torch.testing.assert_close(new.train()(x), reference.train()(x), rtol=1e-4, atol=1e-5)


def test_replace_proxy_norm_by_batch_norm_replaces_the_whole_block():
    torch.manual_seed(0)
    model = build("cnn", "proxy_norm")
    report: list = []
    new = replace_norm(model, "batch_norm_affine", report=report)
    assert count(new, ProxyNormActivation) == 0
    assert count(new, nn.BatchNorm2d) == 3 and count(new, nn.ReLU) == 3  # one BN per block
    assert [r.new for r in report] == ["BatchNorm2d", "ReLU"] * 3
    reference = copy_weights(model, build("cnn", "batch_norm_affine"))
    x = x_batch(16)
    torch.testing.assert_close(new.train()(x), reference.train()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,hint", [
    ("none", r"remove_norm\(model\)"),
    ("std_loss", r"remove_norm\(model\), then attach normlab.StandardizationLoss\(bare\)"),
    ("bnp", r"remove_norm\(model\), then wrap the optimizer: normlab.BNP\(optimizer, bare\)"),
    ("weight_norm", r"prepare\(bare\)"),
])
def test_replace_by_a_method_without_layers_says_what_to_call(method, hint):
    model = build("cnn", "batch_norm")
    with pytest.raises(ValueError, match=hint) as err:
        replace_norm(model, method, inplace=True)
    assert "\n" not in str(err.value)
    assert count(model, nn.BatchNorm2d) == 3  # nothing was changed


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("method", ["frn", "proxy_norm", "ic_layer"])
def test_replace_by_block_method_equals_the_network_built_with_it(method, arch):
    """The norm and the activation after it become the method's block: the result computes
    what ``build_model`` with that method computes, given the same weights."""
    torch.manual_seed(0)
    model = build(arch, "batch_norm")
    report: list = []
    new = replace_norm(model, method, report=report)
    assert [r.action for r in report].count("removed") == 3  # each ReLU went into a block
    assert count(new, nn.BatchNorm2d) + count(new, nn.BatchNorm1d) == 0
    reference = copy_weights(new, build(arch, method))
    assert count(new, type(norm_of(reference))) == count(reference, type(norm_of(reference)))
    x = x_batch(16)
    new.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(new(x), reference(x), rtol=1e-5, atol=1e-6)


def norm_of(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, NormLayer))


@pytest.mark.parametrize("method", ["frn", "proxy_norm", "ic_layer"])
def test_replace_by_block_method_without_activation_raises(method):
    """A norm before a residual sum or a linear bottleneck has no activation to take over."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=f"'{method}'.* but 4 \\(BatchNorm2d\\) is not "
                                         f"followed by an activation") as err:
        replace_norm(model, method, inplace=True)
    assert "\n" not in str(err.value)
    assert count(model, nn.BatchNorm2d) == 2 and count(model, nn.ReLU) == 1  # unchanged


def test_replace_by_frn_keeps_a_shared_activation_out():
    """torchvision's ``self.relu`` is called after bn1 and after the residual sum: FRN cannot
    take it over at one call site only."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU()

        def forward(self, x):
            return self.relu(self.relu(self.bn(self.conv(x))) + x)

    with pytest.raises(ValueError, match="bn \\(BatchNorm2d\\) is not followed"):
        replace_norm(Shared(), "frn")

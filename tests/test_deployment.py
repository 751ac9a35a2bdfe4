"""``deploy_model`` of the BN-family methods (``folds = True``: eval map per-channel affine):
the deployed model is the bare network (every norm folded into the weight layer before it)
and computes the trained model's eval function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.lab.models import build_model
from normlab.layers import NormLayer
from normlab.methods import METHODS, create_method
from normlab.surgery import deploy_model, is_norm_layer

FOLDED = ["l1_batch_norm", "linf_batch_norm", "range_batch_norm", "batch_renorm", "kalman_norm"]
IMAGE = (1, 12, 12)


def trained(name: str, arch: str) -> tuple[object, nn.Module]:
    """A model after a few SGD steps with random affine parameters (running statistics and
    scales away from their initial values, so folding has something to fold)."""
    torch.manual_seed(0)
    method = create_method(name, momentum=0.5) if name != "kalman_norm" else \
        create_method(name, gain=0.7, momentum=0.5)
    model = build_model(arch, method, IMAGE, 10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NormLayer) and getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(32, *IMAGE, generator=g) * 2 + 1
        loss = F.cross_entropy(model(x), torch.randint(0, 10, (32,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return method, model.eval()


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("name", FOLDED)
def test_for_inference_folds_every_norm_and_keeps_eval_outputs(name, arch):
    method, model = trained(name, arch)
    norms = [m for m in model.modules() if isinstance(m, NormLayer)]
    assert len(norms) == 3
    # the running statistics moved: a fold with the initial ones would not match
    assert any((m.running_mean.abs() > 0.05).any() for m in norms)
    x = torch.randn(8, *IMAGE, generator=torch.Generator().manual_seed(2)) * 2 + 1
    with torch.no_grad():
        expected = model(x)
        deployed = deploy_model(model, method)
        got = deployed(x)
    assert deployed is not model and not deployed.training
    assert not any(is_norm_layer(m) for m in deployed.modules())
    scale = expected.abs().max()
    assert ((got - expected).abs().max() / scale).item() < 1e-5
    # the original keeps its norm layers and its outputs
    assert [m for m in model.modules() if isinstance(m, NormLayer)] == norms
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    # same parameter count as the bare network of the same shape (biases added by folding)
    bare = build_model(arch, create_method("none"), IMAGE, 10)
    assert sum(p.numel() for p in deployed.parameters()) == \
        sum(p.numel() for p in bare.parameters())


def test_for_inference_of_a_copy_is_idempotent():
    method, model = trained("l1_batch_norm", "cnn")
    once = deploy_model(model, method)
    twice = deploy_model(copy.deepcopy(once), method)
    x = torch.randn(4, *IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(twice(x), once(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mixture_norm", "decorrelated_batch_norm", "ic_layer"])
def test_methods_without_a_fold_deploy_unchanged(name):
    """Their eval map is not per-channel affine, or follows the activation: no folding."""
    method = create_method(name)
    model = build_model("cnn", method, IMAGE, 10).eval()
    assert deploy_model(model, method) is model


def test_the_folding_methods_are_those_that_declare_it():
    folding = {name for name in METHODS if create_method(name).folds}
    assert folding == set(FOLDED) | {"batch_norm", "batch_norm_affine"}

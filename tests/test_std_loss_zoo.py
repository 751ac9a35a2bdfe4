"""StandardizationLoss on models written like torchvision/timm (tests/zoo): in-place
activations after hooked layers, copies and pickling with the loss attached, remove_norm."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab
from normlab import StandardizationLoss
from normlab.losses.hooks import InertHook
from zoo import ZOO, make_batch

INPLACE = ["resnet18_style", "mobilenet_v2_style", "efficientnet_style", "unet_style"]


def naive_loss(x: torch.Tensor, cd: int, eps: float = 1e-5) -> torch.Tensor:
    """The paper's eq. 1-2 with plain ops: nothing here saves ``x`` itself for backward."""
    dims = [d for d in range(x.dim()) if d != cd % x.dim()]
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims)
    mu = mu.flatten()
    return 0.5 * (mu ** 2 + var - torch.log(var + eps) - 1).sum()


def out_of_place(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_activations_give_the_out_of_place_gradient(name):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = normlab.remove_norm(entry.build()).double().train()
    reference = out_of_place(copy.deepcopy(model))
    x, y = make_batch(entry, 4, seed=3)
    x = x.double()
    std = StandardizationLoss(model, weight=0.5)
    torch.manual_seed(1)  # the same dropout masks in both models
    loss = F.cross_entropy(model(x), y) + std()
    loss.backward()
    hooked = dict(std.layers)
    assert len(hooked) >= 5
    terms = []
    handles = [m.register_forward_hook(
        lambda mod, a, out, cd=(-1 if isinstance(m, nn.Linear) else 1): terms.append(naive_loss(out, cd)))
        for n, m in reference.named_modules() if n in hooked]
    torch.manual_seed(1)
    ref_loss = F.cross_entropy(reference(x), y) + 0.5 * sum(terms)
    ref_loss.backward()
    for h in handles:
        h.remove()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads(model), grads(reference), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore:StandardizationLoss")
@pytest.mark.parametrize("name", list(ZOO))
def test_deepcopy_and_pickle_with_the_loss_attached(name):
    entry = ZOO[name]
    model = entry.build().train()
    x, y = make_batch(entry, 4)
    try:
        std = StandardizationLoss(model)
    except ValueError as err:  # recurrent-only models: nothing to hook without conversion
        assert "convert_recurrent" in str(err)
        return
    before = copy.deepcopy(model)  # before any forward
    model(x)
    after = copy.deepcopy(model)  # with pending graphs in the loss
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    pickled = pickle.loads(pickle.dumps(model))
    value = std()
    assert torch.isfinite(value) and value > 0
    kept = std.values()
    for clone in (before, after, loaded, pickled):
        out = clone(x)  # a copy trains without feeding the original loss
        F.cross_entropy(out, y).backward()
        assert std().item() == 0.0 and std.values() == {}
        # inert hooks unregister themselves when called (out_proj's never are: never run)
        live = [h for m in clone.modules() for h in m._forward_hooks.values()
                if not isinstance(h, InertHook)]
        assert live == []
        assert sum(len(m._forward_hooks) for m in clone.modules()) <= 2
    model(x)
    assert std.values() == {} and std().item() > 0 and std.values().keys() == kept.keys()


@pytest.mark.filterwarnings("ignore:StandardizationLoss")
@pytest.mark.parametrize("name", ["resnet18_style", "vit_style", "unet_style"])
def test_remove_norm_with_the_loss_attached(name):
    entry = ZOO[name]
    model = entry.build().train()
    x, y = make_batch(entry, 4)
    std = StandardizationLoss(model)
    model(x)
    bare = normlab.remove_norm(model)
    F.cross_entropy(bare(x), y).backward()
    loss = F.cross_entropy(model(x), y) + std()
    loss.backward()
    assert torch.isfinite(loss)


def test_the_loss_itself_refuses_to_be_copied():
    model = ZOO["resnet18_style"].build()
    std = StandardizationLoss(model)
    with pytest.raises(TypeError, match="attach a new StandardizationLoss"):
        copy.deepcopy(std)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        pickle.dumps(std)


@pytest.mark.filterwarnings("ignore:StandardizationLoss")
@pytest.mark.parametrize("name", ["resnet18_style", "mobilenet_v2_style", "efficientnet_style",
                                  "vit_style", "mlp_mixer_style", "unet_style"])
def test_trains_a_few_steps_with_finite_values(name):
    entry = ZOO[name]
    model = entry.build().train()
    x, y = make_batch(entry, 8)
    std = StandardizationLoss(model, weight=1.0, reduction="mean")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + std()
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert all(map(lambda v: v == v, std.values().values())) and std.values()

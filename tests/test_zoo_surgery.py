"""Surgery and BNP on every model of the zoo (architectures written the way torchvision,
timm and model-zoo packages write them): each call works, or raises one clear line.

Pinned outcomes: the refusals are listed in :data:`REFUSED` with the words they must say, so
a method that starts or stops working on a zoo model changes this test. References: the
unfolded model's eval output (folding), the original class and parameters (removal).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import normlab
from normlab.methods import METHODS, create_method
from normlab.surgery import fold_batch_norm, insert_norm, is_norm_layer, remove_norm, \
    replace_norm

from zoo import ZOO, make_batch

NAMES = list(ZOO)
WITH_NORM = [n for n in NAMES if ZOO[n].has_norm]
LAYER_METHODS = [n for n in METHODS if create_method(n).kind == "layer"]
FOLDING = [n for n in LAYER_METHODS if create_method(n).folds]
BLOCK = ("frn", "proxy_norm", "ic_layer")
NO_ACTIVATION = "is not followed by an activation module used only there"
REFUSED = {
    **{(model, method): NO_ACTIVATION
       for model in ("resnet18_style", "mobilenet_v2_style", "efficientnet_style",
                     "vit_style", "mlp_mixer_style") for method in BLOCK},
    # ResNet's last stage is 1x1 at 32x32 input: one value per channel and sample
    ("resnet18_style", "instance_norm"): "more than one spatial position per channel",
}


def loss_of(entry, model, x, y):
    return F.cross_entropy(model(x), y)  # (N, K) or (N, K, H, W) logits


def trained_stats(model, entry, steps: int = 3):
    """Running statistics moved away from their initial values; eval mode."""
    x, _ = make_batch(entry, 8, seed=5)
    with torch.no_grad():
        model.train()
        for _ in range(steps):
            model(x * 2 + 1)
    return model.eval()


def fold_and_compare(model, entry) -> list:
    """Fold ``model`` (eval mode); its eval output must stay within 1e-5 relative. Returns
    the report."""
    x, _ = make_batch(entry, 4, seed=1)
    report: list = []
    folded = fold_batch_norm(model, report=report)
    with torch.no_grad():
        ref = model(x)
        assert ((folded(x) - ref).abs().max() / ref.abs().max()).item() < 1e-5
    return report


@pytest.mark.parametrize("name", NAMES)
def test_remove_norm_trains(name):
    entry = ZOO[name]
    model = entry.build()
    report: list = []
    bare = remove_norm(model, report=report)
    assert len(report) == sum(is_norm_layer(m) for m in model.modules())
    assert not any(is_norm_layer(m) for m in bare.modules())
    assert type(bare) is type(model)
    x, y = make_batch(entry, 4)
    loss = loss_of(entry, bare.train(), x, y)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("method", LAYER_METHODS)
@pytest.mark.parametrize("name", WITH_NORM)
def test_replace_norm_works_or_says_why(name, method):
    entry = ZOO[name]
    model = entry.build()
    x, y = make_batch(entry, 4)
    expected = REFUSED.get((name, method))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # small-batch whitening warnings
        try:
            report: list = []
            new = replace_norm(model, method, report=report)
            loss = loss_of(entry, new.train(), x, y)
            loss.backward()
            with torch.no_grad():
                out = new.eval()(x)
        except ValueError as err:
            assert expected is not None, f"{name} + {method} refused: {err}"
            assert expected in str(err) and "\n" not in str(err)
            return
    assert expected is None, f"{name} + {method} should have been refused ({expected})"
    assert torch.isfinite(loss) and torch.isfinite(out).all()
    assert all(r.action in ("replaced", "removed") for r in report)
    old = {id(m) for m in model.modules() if is_norm_layer(m)}
    assert sum(r.action == "replaced" for r in report) == len(old)
    assert not any(id(m) in old for m in new.modules())


@pytest.mark.parametrize("name", NAMES)
def test_fold_batch_norm_keeps_eval_outputs(name):
    entry = ZOO[name]
    model = trained_stats(entry.build(), entry)
    report = fold_and_compare(model, entry)
    actions = {r.action for r in report}
    if not entry.has_norm:
        assert report == []
    elif entry.norm_types == (torch.nn.BatchNorm2d,):
        assert actions == {"folded"}  # every BN, EfficientNet's same-padding convs included
    else:  # LayerNorm: per-sample statistics, not an affine map at eval
        assert actions == {"skipped"} and all("per-sample" in r.detail for r in report)


@pytest.mark.parametrize("method", FOLDING)
@pytest.mark.parametrize("name", WITH_NORM)
def test_fold_after_replacing_with_each_folding_method(name, method):
    entry = ZOO[name]
    model = trained_stats(replace_norm(entry.build(), method), entry)
    report = fold_and_compare(model, entry)
    if entry.norm_types == (torch.nn.BatchNorm2d,):
        assert {r.action for r in report} == {"folded"}
    else:  # pre-norm transformers: every norm reads a residual sum, not a weight layer
        assert {r.action for r in report} == {"skipped"}
        assert all("feeds only" in r.detail for r in report)


@pytest.mark.parametrize("name", NAMES)
def test_bnp_wraps_the_optimizer_and_trains(name):
    entry = ZOO[name]
    model = entry.build().train()
    x, y = make_batch(entry, 4)
    opt = normlab.BNP(torch.optim.SGD(model.parameters(), lr=0.05), model)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = loss_of(entry, model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    opt.remove()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", [n for n in NAMES if not ZOO[n].has_norm])
def test_insert_norm_on_norm_free_zoo_models(name):
    """The recurrent classifiers' only Linear/Conv is their logit layer."""
    entry = ZOO[name]
    x, _ = make_batch(entry, 4)
    with pytest.raises(ValueError, match="the only weight layer the forward calls is the "
                                         "logit layer fc"):
        insert_norm(entry.build(), "batch_norm", x)


@pytest.mark.parametrize("name", WITH_NORM)
def test_insert_norm_on_the_bare_zoo_models(name):
    entry = ZOO[name]
    x, y = make_batch(entry, 8)
    report: list = []
    new = insert_norm(remove_norm(entry.build()), "batch_norm", x, report=report)
    assert [r.action for r in report].count("inserted") >= 2
    loss = loss_of(entry, new.train(), x, y)
    loss.backward()
    assert torch.isfinite(loss)

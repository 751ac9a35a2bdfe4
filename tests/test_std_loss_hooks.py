"""StandardizationLoss: which layers it hooks, what it returns, and that it leaves no trace."""

import pytest
import torch
from torch import nn

from normlab import StandardizationLoss, standardization_loss
from normlab.lab.models import build_model
from normlab.methods import create_method


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))


def count_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_default_hooks_every_weight_layer_but_the_logits():
    model = small_cnn()
    std = StandardizationLoss(model)
    assert [n for n, _ in std.layers] == ["0", "2", "5"]
    cnn = build_model("cnn", create_method("none"), (1, 28, 28), 10)
    assert len(StandardizationLoss(cnn).layers) == 3  # three convs, not the classifier


def test_value_is_weighted_sum_of_per_layer_losses():
    model = small_cnn()
    x = torch.randn(16, 1, 8, 8)
    with StandardizationLoss(model, weight=0.25) as std:
        model(x)
        with torch.no_grad():  # reference pass; the hooks skip no_grad calls
            h1 = model[0](x)
            h2 = model[2](torch.relu(h1))
            h3 = model[5](torch.relu(h2).flatten(1))
        expected = sum(standardization_loss(h, channel_dim=cd) for h, cd in ((h1, 1), (h2, 1), (h3, -1)))
        assert torch.allclose(std(), 0.25 * expected, rtol=1e-6)
        assert set(std.values()) == {"0", "2", "5"}
        assert sum(std.values().values()) == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_flows_into_the_model():
    model = small_cnn()
    std = StandardizationLoss(model)
    model(torch.randn(8, 1, 8, 8))
    std().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert model[7].weight.grad is None  # the logit layer is not part of the loss


def test_layers_by_type_and_glob_and_errors():
    model = small_cnn()
    assert [n for n, _ in StandardizationLoss(model, layers=nn.Linear).layers] == ["5", "7"]
    assert [n for n, _ in StandardizationLoss(model, layers=["0", nn.Linear]).layers] == ["0", "5", "7"]
    with pytest.raises(ValueError, match="matches no module"):
        StandardizationLoss(model, layers="features.*")
    with pytest.raises(ValueError, match="no Conv/ConvTranspose/Linear"):
        StandardizationLoss(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="weight must be >= 0"):
        StandardizationLoss(model, weight=-1)


def test_remove_and_context_exit_leave_no_hooks():
    model = small_cnn()
    before = count_hooks(model)
    std = StandardizationLoss(model)
    assert count_hooks(model) == before + 5  # 4 candidates (the logit layer too) + the root
    std.remove()
    std.remove()  # idempotent
    assert count_hooks(model) == before and not std.attached
    with StandardizationLoss(model):
        assert count_hooks(model) == before + 5
    assert count_hooks(model) == before


def test_nothing_computed_in_eval_or_no_grad(monkeypatch):
    import normlab.losses.standardization as mod

    calls = []
    real = mod.tap
    monkeypatch.setattr(mod, "tap", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = small_cnn()
    std = StandardizationLoss(model)
    model.eval()
    model(torch.randn(4, 1, 8, 8))
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 8, 8))
    assert calls == [] and std().item() == 0.0
    model(torch.randn(4, 1, 8, 8))
    assert len(calls) == 4  # every candidate runs in the first forward, the logit layer too
    std()
    model(torch.randn(4, 1, 8, 8))
    assert len(calls) == 7  # from then on the logit layer is unhooked


def test_each_training_forward_replaces_the_previous_values():
    model = small_cnn()
    std = StandardizationLoss(model)
    model(torch.randn(4, 1, 8, 8) * 10)
    big = std().item()
    model(torch.randn(4, 1, 8, 8) * 0.1)
    assert std().item() != big


def test_shared_layer_counts_once_per_call():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(4, 2))
    std = StandardizationLoss(model, layers=["0"])
    x = torch.randn(32, 4)
    model(x)
    with torch.no_grad():
        h1 = lin(x)
        h2 = lin(torch.relu(h1))
    expected = standardization_loss(h1) + standardization_loss(h2)
    assert torch.allclose(std(), expected, rtol=1e-6)


def test_inference_of_trained_model_equals_bare_model():
    model = small_cnn()
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    bare = model(x)
    with StandardizationLoss(model):
        assert torch.equal(model(x), bare)


@pytest.mark.parametrize("rows", [128, 20000])  # both sides of taps.FUSED_ROWS
def test_linear_taps_match_float64_far_from_zero(rows):
    """|mu| = 1000 in float32: the tap's moments (one fused call for short columns, the
    cascaded mean for long ones) give the float64 loss and weight gradient."""
    torch.manual_seed(0)
    lin, head = nn.Linear(8, 6), nn.Linear(6, 2)
    with torch.no_grad():
        lin.bias.fill_(1000.0)
    model = nn.Sequential(lin, nn.ReLU(inplace=True), head)
    std = StandardizationLoss(model)
    x = torch.randn(rows, 8)
    model(x)
    loss = std()
    loss.backward()
    w64 = lin.weight.detach().double().requires_grad_()
    y64 = x.double() @ w64.T + lin.bias.detach().double()
    mu = y64.sum(0) / rows
    var = ((y64 - mu) ** 2).sum(0) / rows
    ref = 0.5 * (mu ** 2 + var - torch.log(var + 1e-5) - 1).sum()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=2e-6)
    torch.testing.assert_close(lin.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("upstream", [1.0, 2.5, -0.5, 0.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_scales_with_the_upstream_gradient(upstream, reduction):
    """Backward uses coefficients computed for a unit upstream gradient; any other upstream
    gradient (a weighted sum, ``autograd.grad`` with ``grad_outputs``) scales them: the
    gradient of every hooked layer equals float64 autograd through the plain formula."""
    torch.manual_seed(1)
    model = small_cnn().double()
    ref_model = small_cnn().double()
    ref_model.load_state_dict(model.state_dict())
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    std = StandardizationLoss(model, weight=0.7, reduction=reduction)
    model(x)
    loss = std()
    params = [model[0].weight, model[2].weight, model[5].weight]
    grads = torch.autograd.grad(loss, params, torch.tensor(upstream, dtype=torch.float64))
    outs, h = [], x
    for i, layer in enumerate(ref_model):
        h = layer(h)
        if i in (0, 2, 5):
            outs.append((h, 1 if h.dim() == 4 else -1))
    ref = sum(standardization_loss(o, channel_dim=cd) for o, cd in outs) * 0.7
    if reduction == "mean":
        ref = ref / sum(o.shape[cd] for o, cd in outs)
    ref_params = [ref_model[0].weight, ref_model[2].weight, ref_model[5].weight]
    expected = torch.autograd.grad(ref * upstream, ref_params)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

"""The standardization loss under activation checkpointing (``torch.utils.checkpoint``).

Checkpointed blocks run their forward again inside backward; the loss must count each
training forward once, as if nothing were checkpointed.
"""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from normlab import StandardizationLoss
from normlab.losses.targets import DecorrelationLoss, LaplaceLoss


class Block(nn.Module):
    """timm/torchvision style: conv, in-place ReLU, residual add in place."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        out = self.fc(self.act(self.conv(x)))
        out += x
        return out


class Net(nn.Module):
    def __init__(self, checkpointed: tuple[int, ...] = (), reentrant: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(Block(8) for _ in range(3))
        self.head = nn.Linear(8, 4)
        self.checkpointed, self.reentrant = checkpointed, reentrant

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if self.training and i in self.checkpointed:
                x = checkpoint(block, x, use_reentrant=self.reentrant)
            else:
                x = block(x)
        return self.head(x.mean((2, 3)))


def train(model, steps=3, loss_class=StandardizationLoss):
    """(loss values, per-layer values, gradients) of each step; plain SGD between steps."""
    std = loss_class(model, weight=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=gen, requires_grad=True)
        opt.zero_grad()
        aux = std()  # nothing may be left over from the last step's backward
        assert aux.item() == 0.0
        loss = model(x).square().mean() + std()
        loss.backward()
        history.append((loss.item(), std.values(),
                        [p.grad.clone() for p in model.parameters()]))
        opt.step()
    std.remove()
    return history


@pytest.mark.parametrize("loss_class", [StandardizationLoss, LaplaceLoss, DecorrelationLoss])
def test_non_reentrant_checkpointing_gives_the_plain_models_losses_and_gradients(loss_class):
    """The fused taps and a subclass's per-layer term (whose graph the rerun rebuilds)."""
    torch.manual_seed(0)
    plain = Net()
    ckpt = Net(checkpointed=(0, 2))
    ckpt.load_state_dict(plain.state_dict())
    for (l0, v0, g0), (l1, v1, g1) in zip(train(plain, loss_class=loss_class),
                                          train(ckpt, loss_class=loss_class)):
        assert l1 == pytest.approx(l0, rel=1e-6)
        assert v1.keys() == v0.keys() and len(v0) == 7  # stem + 2 convs per block
        for name in v0:
            assert v1[name] == pytest.approx(v0[name], rel=1e-5)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_reentrant_checkpointed_layers_are_named_and_left_out():
    torch.manual_seed(0)
    model = Net(checkpointed=(1,), reentrant=True)
    with pytest.warns(UserWarning, match=r"blocks\.1\.conv.*use_reentrant=True"):
        history = train(model)
    for loss, values, grads in history:
        assert "blocks.1.conv" not in values and "blocks.0.conv" in values
        assert all(torch.isfinite(g).all() for g in grads)


def test_every_block_checkpointed_reentrantly_is_a_clear_error():
    """Only the logits ran with gradients: nothing is left to standardize, and the message
    says what to change."""
    model = Net(checkpointed=(0, 1, 2), reentrant=True)
    model.stem = nn.Identity()
    model.blocks[0].conv = nn.Conv2d(3, 8, 3, padding=1)
    model.blocks[0].fc = nn.Conv2d(8, 3, 1)
    model.head = nn.Linear(3, 4)
    for block in model.blocks[1:]:
        block.conv, block.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)
    std = StandardizationLoss(model)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with pytest.warns(UserWarning, match="never ran"), \
            pytest.raises(RuntimeError, match="use_reentrant=False"):
        model(x)
    std.remove()


def test_a_model_checkpointed_whole_reentrantly_warns_that_the_loss_sees_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    std = StandardizationLoss(model)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(UserWarning, match="only inside backward.*use_reentrant=False"):
        (checkpoint(model, x, use_reentrant=True).sum() + std()).backward()
    assert std().item() == 0.0
    std.remove()

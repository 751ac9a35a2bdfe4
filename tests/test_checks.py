"""normlab.checks: one message per kind of bad argument, the same in every layer, method and
optimizer that takes it (what the shared checks are for)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.checks import check_count, check_eps, check_momentum
from normlab.layers import (
    DecorrelatedBatchNorm,
    FilterResponseNorm,
    GroupNorm,
    ICLayer,
    KalmanNorm,
    MixtureNorm,
    ProxyNormActivation,
)
from normlab.methods import create_method
from normlab.optim.bnp import BNP


def test_check_count_messages_and_bools():
    check_count(1, "n")
    check_count(0, "n", minimum=0)
    for bad in (0, -3, 2.0, True, "4"):
        with pytest.raises(ValueError, match=r"^n must be a positive int, got "):
            check_count(bad, "n")
    with pytest.raises(ValueError, match=r"^k must be an int >= 0, got -1$"):
        check_count(-1, "k", minimum=0)


def test_check_eps_and_momentum_bounds():
    check_eps(1e-9)
    check_eps(0.0, zero_ok=True)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^eps must be > 0, got "):
            check_eps(bad)
    with pytest.raises(ValueError, match=r"^eps must be >= 0, got -1"):
        check_eps(-1.0, zero_ok=True)
    check_momentum(0.0)
    check_momentum(1.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\], got "):
            check_momentum(bad)


LAYERS = [
    lambda n, **kw: FilterResponseNorm(n, **kw),
    lambda n, **kw: GroupNorm(n, num_groups=1, **kw),
    lambda n, **kw: ProxyNormActivation(n, nn.ReLU(), **kw),
    lambda n, **kw: ICLayer(n, **kw),
    lambda n, **kw: KalmanNorm(n, **kw),
    lambda n, **kw: MixtureNorm(n, **kw),
    lambda n, **kw: DecorrelatedBatchNorm(n, **kw),
]


@pytest.mark.parametrize("build", LAYERS)
def test_every_layer_rejects_a_bad_channel_count_alike(build):
    for bad in (0, True, 3.0):
        with pytest.raises(ValueError, match=r"^num_features must be a positive int, got "):
            build(bad)


def test_same_message_for_the_same_bad_argument_everywhere():
    for build in (FilterResponseNorm, ICLayer, MixtureNorm):
        with pytest.raises(ValueError, match=r"^eps must be > 0, got 0"):
            build(4, eps=0.0)
    with pytest.raises(ValueError, match=r"^eps must be >= 0, got -1"):
        ProxyNormActivation(4, nn.ReLU(), eps=-1.0)
    with pytest.raises(ValueError, match=r"^em_iterations must be an int >= 0, got -1$"):
        create_method("mixture_norm", em_iterations=-1)
    with pytest.raises(ValueError, match=r"^iterations must be a positive int, got 0$"):
        create_method("decorrelated_batch_norm", iterations=0)
    model = nn.Linear(3, 2)
    for bad in ({"momentum": 1.5}, {"eps": -1.0}):
        with pytest.raises(ValueError) as from_method:
            create_method("bnp", **bad)
        with pytest.raises(ValueError) as from_optimizer:
            BNP(torch.optim.SGD(model.parameters(), lr=0.1), model, **bad)
        assert str(from_method.value) == str(from_optimizer.value)

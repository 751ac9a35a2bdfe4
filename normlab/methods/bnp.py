"""``bnp``: Batch Normalization Preconditioning as a normlab method (a gradient transform).

Lange, Helfrich & Ye, "Batch Normalization Preconditioning for Neural Network Training", JMLR
23(72), 2022, arXiv:2108.01110.

No layer is inserted and nothing runs at inference: the trainer's optimizer is wrapped in
:class:`normlab.optim.bnp.BNP`, which preconditions each Linear/Conv layer's gradient with the
running statistics of its input. See that module for the formula and the choices made.
"""

from __future__ import annotations

from torch import nn
from torch.optim import Optimizer

from ..checks import check_eps, check_momentum
from ..optim.bnp import BNP
from . import METHODS
from .base import Method


@METHODS.register("bnp")
class BNPMethod(Method):
    """Batch Normalization Preconditioning of every Linear/Conv layer's gradient.

    Args:
        momentum: weight of a new batch in the running input statistics.
        eps: damping added to the running variance.
        skip_first: do not precondition the first weight layer (whose input is the data).
        skip_last: do not precondition the last weight layer (the classifier).
    """

    kind = "gradient"
    paper = "Lange, Helfrich & Ye 2022, JMLR 23(72), arXiv:2108.01110"
    batch_dependent = False
    inference = "none"
    conv_bias = True  # the centering part of the preconditioner acts through the bias

    def __init__(self, momentum: float = 0.01, eps: float = 1e-3, skip_first: bool = False,
                 skip_last: bool = False) -> None:
        check_momentum(momentum)
        check_eps(eps, zero_ok=True)
        self.momentum = momentum
        self.eps = eps
        self.skip_first = skip_first
        self.skip_last = skip_last

    def wrap_optimizer(self, optimizer: Optimizer, model: nn.Module) -> BNP:
        return BNP(optimizer, model, momentum=self.momentum, eps=self.eps,
                   skip_first=self.skip_first, skip_last=self.skip_last)

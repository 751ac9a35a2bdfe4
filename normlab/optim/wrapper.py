"""The plumbing shared by normlab's optimizer wrappers (gradient-side methods).

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations that act on the data with ones that act
on the gradients; the latter (:class:`normlab.optim.AGC`, :class:`normlab.optim.BNP`) wrap
any torch optimizer: they change ``.grad`` and then call the inner ``step``. What both need
to look like the inner optimizer to LR schedulers, checkpoints and other wrappers is here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.optim import Optimizer

__all__ = ["OptimizerWrapper"]


class OptimizerWrapper(Optimizer):
    """Base of optimizer wrappers that share the inner optimizer's groups and state.

    ``param_groups``, ``state`` and ``defaults`` are properties reading through to the inner
    optimizer (not copies: torch's ``load_state_dict`` replaces the inner lists), and
    ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict`` are forwarded
    to it. A subclass validates its arguments, calls ``super().__init__(optimizer)`` and
    defines ``step``. It is a ``torch.optim.Optimizer`` for ``isinstance`` checks but keeps
    no groups or state of its own: ``Optimizer.__init__`` is deliberately not called.

    Args:
        optimizer: the inner optimizer.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        # Hook tables that Optimizer's hook-registration methods expect to exist.
        self._optimizer_step_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable] = OrderedDict()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return getattr(self.optimizer, "defaults", {})

    @staticmethod
    def _closure_loss(closure: Callable[[], Any] | None) -> Any:
        """Evaluate ``closure`` once with grad enabled (``None`` without a closure).

        Wrappers evaluate it before changing the gradients; optimizers that re-evaluate the
        closure inside their own step (LBFGS) would see unchanged gradients and are not
        supported.
        """
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict)

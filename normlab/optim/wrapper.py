"""The plumbing shared by normlab's optimizer wrappers (gradient-side methods).

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations that act on the data with ones that act
on the gradients; the latter (:class:`normlab.optim.AGC`, :class:`normlab.optim.BNP`) wrap
any torch optimizer: they change ``.grad`` and then call the inner ``step``. What both need
to look like the inner optimizer to LR schedulers, checkpoints, step hooks and other wrappers
is here.

Design. LR schedulers accept only ``isinstance(optimizer, torch.optim.Optimizer)``, so the
wrapper subclasses ``Optimizer``; it does not call ``Optimizer.__init__``, which would build a
second set of parameter groups and state. Instead every public ``Optimizer`` method is defined
here on public ground only: groups, state and defaults read through to the inner optimizer,
and the six hook registries are the wrapper's own tables of
:class:`torch.utils.hooks.RemovableHandle`. Nothing reads or writes torch's private optimizer
attributes, so a torch release that changes them cannot break the wrapper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

__all__ = ["OptimizerWrapper"]

_HOOK_KINDS = ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
               "load_state_dict_pre", "load_state_dict_post")


class OptimizerWrapper(Optimizer):
    """Base of optimizer wrappers that transform gradients, then step the inner optimizer.

    ``param_groups``, ``state`` and ``defaults`` are properties reading through to the inner
    optimizer (not copies: torch's ``load_state_dict`` replaces the inner lists), and
    ``zero_grad`` and ``add_param_group`` are forwarded to it. ``step(closure)`` runs, in
    order: the step pre-hooks registered on the wrapper, the closure (once, grad enabled), the
    gradient transform (while :attr:`attached`), the inner ``step()`` (which runs the hooks
    registered on the inner optimizer), the wrapper's step post-hooks. ``state_dict`` and
    ``load_state_dict`` run the wrapper's own state-dict hooks around the inner optimizer's.
    Hook signatures and return values are torch's (see ``torch.optim.Optimizer``).

    A subclass validates its arguments, calls ``super().__init__(optimizer)`` and defines
    ``_transform_grads``; it may extend ``_save_state``/``_load_state`` and ``_detach``.

    Args:
        optimizer: the inner optimizer.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self._attached = True
        self._hooks: dict[str, OrderedDict[int, Callable]] = {
            kind: OrderedDict() for kind in _HOOK_KINDS}

    # ------------------------------------------------------------ the inner optimizer's data

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return getattr(self.optimizer, "defaults", {})

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.add_param_group(param_group)

    # ---------------------------------------------------------------------------- stepping

    def _transform_grads(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _transform_grads")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Pre-hooks, closure, gradient transform, inner ``step()``, post-hooks.

        A ``closure`` is evaluated once (with grad enabled) before the transform; optimizers
        that re-evaluate the closure inside their own step (LBFGS) would see untransformed
        gradients and are not supported.
        """
        # As in torch, hooks see the call's positional args including the optimizer itself.
        args: tuple = (self,) if closure is None else (self, closure)
        kwargs: dict[str, Any] = {}
        for hook in list(self._hooks["step_pre"].values()):
            result = hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(f"a step pre-hook must return None or (new_args, "
                                       f"new_kwargs), got {result!r}")
                args, kwargs = result
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._attached:
            self._transform_grads()
        self.optimizer.step()
        for hook in list(self._hooks["step_post"].values()):
            hook(self, args, kwargs)
        return loss

    # ----------------------------------------------------------------------- checkpoints

    def _save_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The inner optimizer's state dict (plus what a subclass adds), through the hooks."""
        for hook in list(self._hooks["state_dict_pre"].values()):
            hook(self)
        state_dict = self._save_state()
        for hook in list(self._hooks["state_dict_post"].values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load what :meth:`state_dict` saved, through the hooks (they get a shallow copy)."""
        state_dict = dict(state_dict)
        for hook in list(self._hooks["load_state_dict_pre"].values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load_state(state_dict)
        for hook in list(self._hooks["load_state_dict_post"].values()):
            hook(self)

    # ----------------------------------------------------------------------------- hooks

    def _register(self, kind: str, hook: Callable, prepend: bool = False) -> RemovableHandle:
        table = self._hooks[kind]
        handle = RemovableHandle(table)
        table[handle.id] = hook
        if prepend:
            table.move_to_end(handle.id, last=False)
        return handle

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:  # type: ignore[override]
        """``hook(wrapper, args, kwargs) -> None | (args, kwargs)`` before the transform."""
        return self._register("step_pre", hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:  # type: ignore[override]
        """``hook(wrapper, args, kwargs) -> None`` after the inner step."""
        return self._register("step_post", hook)

    def register_state_dict_pre_hook(self, hook: Callable,  # type: ignore[override]
                                     prepend: bool = False) -> RemovableHandle:
        """``hook(wrapper) -> None`` before :meth:`state_dict` builds the dict."""
        return self._register("state_dict_pre", hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable,  # type: ignore[override]
                                      prepend: bool = False) -> RemovableHandle:
        """``hook(wrapper, state_dict) -> None | state_dict`` on what :meth:`state_dict` returns."""
        return self._register("state_dict_post", hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable,  # type: ignore[override]
                                          prepend: bool = False) -> RemovableHandle:
        """``hook(wrapper, state_dict) -> None | state_dict`` before loading."""
        return self._register("load_state_dict_pre", hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable,  # type: ignore[override]
                                           prepend: bool = False) -> RemovableHandle:
        """``hook(wrapper) -> None`` after loading."""
        return self._register("load_state_dict_post", hook, prepend)

    # ------------------------------------------------------------------------- lifecycle

    @property
    def attached(self) -> bool:
        """Whether ``step`` still transforms the gradients (until :meth:`remove`)."""
        return self._attached

    def _detach(self) -> None:
        """Remove what the subclass attached to the model (nothing by default)."""

    def remove(self) -> None:
        """Stop transforming: ``step`` is the inner optimizer's from now on. Safe to call twice.

        Hooks the wrapper attached to the model are removed too; its groups, state and any
        statistics stay (and are still saved by :meth:`state_dict`).
        """
        self._attached = False
        self._detach()

    def __enter__(self) -> "OptimizerWrapper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"

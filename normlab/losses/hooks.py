"""Forward hooks of the standardization loss that copies of a model do not carry along.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925: the loss hooks layer outputs of a model it does not own.

``copy.deepcopy(model)``, ``pickle`` and ``torch.save(model)`` copy a module's hook
dictionaries. A live hook copied along would either drag the loss's pending autograd graphs
into the copy (which cannot be deep-copied) or keep feeding the *original* loss from the
copy's forwards (an EMA or SWA copy training into the model's loss). So a hook copies to an
:class:`InertHook`: it does nothing and unregisters itself the first time the copy runs. A
copy is the bare model; attach a new loss to it to train it with one.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerHook", "RootHook", "InertHook", "CopiesInert", "in_backward"]


def in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread.

    Activation checkpointing (``torch.utils.checkpoint``, timm's ``set_grad_checkpointing``)
    runs a block's forward again inside backward to rebuild what it did not save; that is not
    a new training forward, and an output tapped there would reach the next read after its
    graph was freed. torch has no public query for this; the graph-task id is -1 outside
    backward. Under ``torch.compile`` hooks are traced into the graph, never rerun: False.
    """
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


class InertHook:
    """What a loss hook becomes in a copied module: a no-op that removes itself when called."""

    def __call__(self, module: nn.Module, *args) -> None:
        keys = [k for name in ("_forward_hooks", "_forward_pre_hooks")
                for k, h in list(getattr(module, name, {}).items()) if h is self]
        for key in keys:
            for name in _HOOK_DICTS:
                getattr(module, name, {}).pop(key, None)
        return None


class CopiesInert:
    """Base of a loss's hooks: deep copies and pickles of it are :class:`InertHook`."""

    def __deepcopy__(self, memo) -> InertHook:
        return InertHook()

    def __reduce__(self):
        return (InertHook, ())

    def __copy__(self):  # a shallow copy shares the loss, as the module it hooks is shared
        return self


class LayerHook(CopiesInert):
    """Forward hook on one hooked layer: ``loss._on_output(index, module, output)``."""

    __slots__ = ("loss", "index")

    def __init__(self, loss, index: int) -> None:
        self.loss, self.index = loss, index

    def __call__(self, module: nn.Module, args, output):
        return self.loss._on_output(self.index, module, output)


class RootHook(CopiesInert):
    """Forward hook on the model itself: the end of a forward of the whole model."""

    __slots__ = ("loss",)

    def __init__(self, loss) -> None:
        self.loss = loss

    def __call__(self, module: nn.Module, args, output) -> None:
        self.loss._on_root_forward(module)

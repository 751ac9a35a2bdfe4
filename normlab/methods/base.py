"""The method abstraction: one object per normalization, four optional hooks.

Every normalization in the seed papers intervenes in training in one (or more) of four ways
(``docs/design.md`` in the repository says more):

=========  ==========================================  =====================================
kind       hook                                        examples
=========  ==========================================  =====================================
layer      :meth:`Method.block` / :meth:`Method.norm`  BatchNorm, GN, FRN, Range BN, ...
loss       :meth:`Method.auxiliary_loss`               the standardization loss
gradient   :meth:`Method.wrap_optimizer`               BN preconditioning, gradient clipping
weight     :meth:`Method.prepare`                      weight norm, weight standardization
=========  ==========================================  =====================================

A model asks the method for the block that follows each weight layer (``block``); the trainer
asks it to ``prepare`` the built model, for an auxiliary loss and for an optimizer wrapper;
deployment asks it for the inference model (``for_inference``). Every hook defaults to "do
nothing", so a method overrides only what it uses and models, trainer and CLI never change
when a method is added.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["Method", "AuxiliaryLoss", "KINDS"]

KINDS = ("none", "layer", "loss", "gradient", "weight")


class AuxiliaryLoss(Protocol):
    """What :meth:`Method.auxiliary_loss` returns: a removable, callable loss term."""

    def __call__(self) -> Tensor:
        """The weighted term for the latest training forward (add it to the task loss)."""

    def values(self) -> dict[str, float]:
        """Unweighted per-layer values of the latest training forward, for logging."""

    def remove(self) -> None:
        """Detach every hook; the model is left as it was."""


class Method:
    """Base class of a registered normalization method.

    Class attributes describe the method for tables and ``normlab list``:

    Attributes:
        name: registry name.
        kind: one of ``KINDS``.
        paper: short citation (authors, year, arXiv id or venue).
        batch_dependent: whether a sample's training output depends on the rest of its batch.
        inference: what the method costs at inference, in words ("none", "folded", "layer").
        conv_bias: whether weight layers before this method's block keep their bias (a
            normalization with a learned shift makes the bias redundant).
    """

    name: str = ""
    kind: str = "none"
    paper: str = ""
    batch_dependent: bool = False
    inference: str = "none"
    conv_bias: bool = True

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        """The normalization layer for a pre-activation with ``num_features`` channels.

        Args:
            num_features: channels (dim 1 of the pre-activation).
            spatial_dims: 0 for ``(N, C)``, 1 for ``(N, C, L)``, 2 for ``(N, C, H, W)``, ...

        Returns:
            A module, or ``None`` when the method inserts no layer.
        """
        return None

    def block(self, num_features: int, spatial_dims: int, activation: nn.Module) -> nn.Module:
        """What follows a weight layer: by default ``norm`` then ``activation``.

        Methods that act on or replace the activation (FRN's TLU, Proxy Norm, the IC layer)
        override this. Models call it once per weight layer, in forward order.
        """
        layer = self.norm(num_features, spatial_dims)
        return activation if layer is None else nn.Sequential(layer, activation)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Transform a built model (weight reparametrizations); returns the model to train."""
        return model

    def auxiliary_loss(self, model: nn.Module) -> AuxiliaryLoss | None:
        """Attach an auxiliary loss to ``model``; ``None`` for methods without one."""
        return None

    def wrap_optimizer(self, optimizer: Optimizer, model: nn.Module) -> Optimizer:
        """Wrap the optimizer (gradient transforms); the identity by default."""
        return optimizer

    def for_inference(self, model: nn.Module) -> nn.Module:
        """The deployment form of a trained model (e.g. BN folded, hooks removed)."""
        return model

    def options(self) -> dict[str, object]:
        """The constructor options of this instance, recorded beside every result."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

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
deployment (:func:`normlab.surgery.deploy_model`) applies its ``for_inference`` and, for a
method that declares ``folds = True``, folds its layers into the weights. Every hook defaults
to "do nothing", so a method overrides only what it uses and models, trainer and CLI never
change when a method is added.

A method is declared once: ``@METHODS.register("name")`` sets its ``name``, and
:meth:`Method.options` reads the constructor's parameters back from the same-named attributes,
so a method file lists neither again.
"""

from __future__ import annotations

import inspect
from typing import ClassVar, Protocol

from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["Method", "BatchStatsMethod", "AuxiliaryLoss", "KINDS"]

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
        name: registry name (set by ``METHODS.register``).
        kind: one of ``KINDS``.
        paper: short citation (authors, year, arXiv id or venue).
        batch_dependent: whether a sample's training output depends on the rest of its batch.
        inference: what the method costs at inference, in words ("none", "folded", "layer").
        conv_bias: whether weight layers before this method's block keep their bias (a
            normalization with a learned shift makes the bias redundant).
        folds: whether deployment folds the method's normalization layers into the weight
            layer before each (their eval map is per-channel affine); done by
            :func:`normlab.surgery.deploy_model`, after :meth:`for_inference`.
        option_attributes: constructor parameters stored under another attribute name
            (``{"norm": "norm_kind"}`` where ``norm`` would shadow the hook); read by
            :meth:`options`.
    """

    name: str = ""
    kind: str = "none"
    paper: str = ""
    batch_dependent: bool = False
    inference: str = "none"
    conv_bias: bool = True
    folds: bool = False
    option_attributes: ClassVar[dict[str, str]] = {}

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
        """The method's own step of deployment (weights baked in, hooks removed); folding
        is declared with ``folds`` and done by :func:`normlab.surgery.deploy_model`."""
        return model

    def options(self) -> dict[str, object]:
        """The constructor options of this instance, recorded beside every result.

        Derived from the constructor's signature: each parameter's value is read from the
        instance attribute of the same name (or the one ``option_attributes`` names), so
        ``create_method(self.name, **self.options())`` rebuilds an equal method.

        Raises:
            AttributeError: the constructor does not store a parameter under its name.
        """
        params = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        state = vars(self)
        out: dict[str, object] = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            attr = self.option_attributes.get(p.name, p.name)
            if attr not in state:
                raise AttributeError(
                    f"{type(self).__name__}.__init__ does not store its argument {p.name!r} "
                    f"as self.{attr}: store it under that name or map it in option_attributes"
                )
            out[p.name] = state[attr]
        return out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class BatchStatsMethod(Method):
    """Base of the layer methods that normalize with batch statistics in training and with
    running averages in eval, with a learned shift: BatchNorm and its variants.

    Their eval map is per-channel affine, so deployment folds each layer into the weight
    layer before it (``folds``) and the deployed model costs what the bare network costs;
    the learned shift makes that weight layer's bias redundant (``conv_bias = False``).
    """

    kind = "layer"
    batch_dependent = True
    inference = "folded into the weights"
    conv_bias = False
    folds = True

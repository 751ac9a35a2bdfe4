"""Adaptive gradient clipping (AGC).

Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", 2021, arXiv:2102.06171, section 4.1. For each unit ``i`` of each parameter
(a row of a Linear weight, a filter of a conv weight; Frobenius norms over every dim but
dim 0)::

    G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i   if ||G_i|| / max(||W_i||, eps) > lambda
    G_i <- G_i                                           otherwise

A parameter with fewer than 2 dims (a bias, a gain) is one unit (its whole-vector norm): the
paper defines units only for weight matrices and filters. ``eps = 1e-3`` (the paper's value)
stops zero-initialized parameters from never moving. The paper does not clip the final linear
layer; :class:`AGC` given a model skips its last Linear/Conv by default.

Choice of lambda: the paper uses 0.01 for its batch-4096 ImageNet runs and reports that the
best threshold gets smaller as the batch grows (its Figure 3). normlab's nets train with
batches of ~100, so :data:`DEFAULT_CLIPPING` is 0.1 (a choice, not tuned on these nets).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..nn_types import WEIGHT_LAYERS
from .wrapper import OptimizerWrapper

__all__ = ["AGC", "adaptive_grad_clip_", "clipped_parameters", "unitwise_norm", "DEFAULT_CLIPPING"]

DEFAULT_CLIPPING = 0.1


def unitwise_norm(x: Tensor) -> Tensor:
    """Frobenius norm of each unit: over dims ``1..`` (keepdim) for ``x.dim() >= 2``, over the
    whole tensor for scalars and vectors. Broadcasts against ``x``."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_grad_clip_(params: Iterable[Tensor] | Tensor, clipping: float = DEFAULT_CLIPPING,
                        eps: float = 1e-3) -> None:
    """Clip the ``.grad`` of every parameter in place, unit by unit (see the module docstring).

    Parameters without a gradient are skipped.

    Args:
        params: tensors whose ``.grad`` to clip.
        clipping: the threshold ``lambda`` on ``||G_i|| / max(||W_i||, eps)``.
        eps: lower bound on the weight norm.
    """
    if not clipping > 0:
        raise ValueError(f"clipping must be > 0, got {clipping}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if isinstance(params, Tensor):
        params = [params]
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise TypeError("adaptive_grad_clip_ does not support sparse gradients")
        max_norm = unitwise_norm(p).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        # The floor on grad_norm only guards the division; where it bites, no clipping happens.
        scale = torch.where(grad_norm > max_norm,
                            max_norm / grad_norm.clamp_min(torch.finfo(grad_norm.dtype).tiny),
                            torch.ones_like(grad_norm))
        p.grad.mul_(scale)


def _last_weight_layer(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    return names[-1] if names else None


def clipped_parameters(model: nn.Module, exclude: Sequence[str] | None = None) -> list[Tensor]:
    """The trainable parameters of ``model`` that AGC clips.

    Args:
        model: the model.
        exclude: names of submodules (as in ``named_modules``) whose parameters are not
            clipped; ``None`` excludes the last Linear/Conv (the classifier, as in the paper).
    """
    if exclude is None:
        last = _last_weight_layer(model)
        exclude = [] if last is None else [last]
    elif isinstance(exclude, str):
        raise TypeError("exclude must be a sequence of module names, not a single string")
    modules = dict(model.named_modules())
    for name in exclude:
        if name not in modules:
            raise ValueError(f"exclude names unknown submodule {name!r}")
    prefixes = tuple(f"{n}." if n else "" for n in exclude)
    return [p for n, p in model.named_parameters()
            if p.requires_grad and not (prefixes and n.startswith(prefixes))]


class AGC(OptimizerWrapper):
    """Wraps any optimizer: clips gradients unit-wise (AGC), then runs the inner ``step``.

    ``step(closure=None)`` runs the wrapper's step pre-hooks, the closure, :meth:`clip_`, the
    inner ``step()`` and the post-hooks (see :class:`~normlab.optim.wrapper.OptimizerWrapper`).
    The wrapper shares ``param_groups``, ``state`` and ``defaults`` with the inner optimizer and
    forwards ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict``, so LR
    schedulers, checkpoints and other wrappers (e.g. BN preconditioning) see the inner
    optimizer. It is a ``torch.optim.Optimizer`` for ``isinstance`` checks but keeps no state of
    its own. :meth:`remove` stops the clipping (``step`` is then the inner optimizer's).

    Args:
        optimizer: the inner optimizer (anything with ``step``, ``zero_grad``,
            ``param_groups``, ``state_dict`` and ``load_state_dict``).
        model_or_params: a model (its parameters minus ``exclude``) or the tensors to clip.
        clipping: the threshold ``lambda``.
        eps: lower bound on each unit's weight norm.
        exclude: with a model, names of submodules not to clip; ``None`` = its last
            Linear/Conv. Not allowed with a parameter list (pass only the tensors to clip).

    Example:
        >>> opt = AGC(torch.optim.SGD(model.parameters(), lr=0.1), model, clipping=0.1)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> opt.remove()  # from here on, plain SGD
    """

    def __init__(self, optimizer: Optimizer, model_or_params: nn.Module | Iterable[Tensor],
                 clipping: float = DEFAULT_CLIPPING, eps: float = 1e-3,
                 exclude: Sequence[str] | None = None) -> None:
        for attr in ("step", "zero_grad", "param_groups", "state_dict", "load_state_dict"):
            if not hasattr(optimizer, attr):
                raise TypeError(f"optimizer must have {attr!r} (got {type(optimizer).__name__})")
        if not clipping > 0:
            raise ValueError(f"clipping must be > 0, got {clipping}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if isinstance(model_or_params, nn.Module):
            params = clipped_parameters(model_or_params, exclude)
        else:
            if exclude:
                raise ValueError("exclude needs a model; with a parameter list pass only the "
                                 "tensors to clip")
            params = list(model_or_params)
            if not all(isinstance(p, Tensor) for p in params):
                raise TypeError("model_or_params must be an nn.Module or an iterable of tensors")
        super().__init__(optimizer)
        self.params = params
        self.clipping = clipping
        self.eps = eps

    def clip_(self) -> None:
        """Clip the gradients of the wrapped parameters in place (what ``step`` does first)."""
        adaptive_grad_clip_(self.params, self.clipping, self.eps)

    def _transform_grads(self) -> None:
        self.clip_()

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # type: ignore[override]
        """Add a group to the inner optimizer; its parameters are clipped too."""
        super().add_param_group(param_group)
        # Read back the inner group: torch has already turned a generator into a list.
        self.params.extend(self.optimizer.param_groups[-1]["params"])

    def __repr__(self) -> str:
        return (f"AGC(clipping={self.clipping}, eps={self.eps}, params={len(self.params)},\n"
                f"    {self.optimizer!r})")

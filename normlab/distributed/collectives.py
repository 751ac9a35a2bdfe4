"""Differentiable collectives for batch statistics shared across data-parallel replicas.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167 — whose statistics are those of the whole batch, and
Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925 — whose moments were per TPU core.

Every function here is the identity (no communication) when ``torch.distributed`` is not
initialized or the group has one process, so the same code runs single-process.

Gradient convention. Under DistributedDataParallel every rank ``r`` backpropagates its own
objective ``L_r``; DDP then averages parameter gradients over the ``W`` ranks, so the step
follows ``d/dtheta (1/W) sum_r L_r``. For that to be the true gradient, a statistic ``S``
built from all ranks must pass each rank the gradient of the *sum* of all objectives:
``dS/dx_r`` times ``sum_r' dL_r'/dS``. :func:`all_reduce_sum` does exactly that (its backward
is again an all-reduce sum), as does torch's ``SyncBatchNorm``. Consequences, checked by the
tests: a task loss that is a per-rank mean gives the full-batch mean's gradient, and a term
computed identically on every rank from global statistics (the global standardization loss)
gets the full-batch gradient too — it is counted ``W`` times and averaged ``W`` times.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["group_size", "group_rank", "is_distributed", "all_reduce_sum", "all_gather_cat",
           "all_reduce_max"]

_F = TypeVar("_F", bound=Callable)


def _outside_compiled_graphs(fn: _F) -> _F:
    """``torch.compiler.disable(fn)``, built the first time ``fn`` is called while compiling.

    Decorating with ``torch.compiler.disable`` at import would import ``torch._dynamo`` (over a
    second) in every process that imports normlab; eager calls go straight to ``fn``, and under
    ``torch.compile`` the call is a graph break that runs ``fn`` eagerly, as the decorator's.
    """
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether a process group is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_size(group: dist.ProcessGroup | None = None) -> int:
    """Processes in ``group`` (1 without ``torch.distributed``)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def group_rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (0 without ``torch.distributed``)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward sums the incoming gradients over ranks (see module docstring).

    Own class rather than ``torch.distributed.nn.functional.all_reduce``, which is deprecated
    in torch 2.13 and warns on every call.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


@_outside_compiled_graphs  # a collective inside a compiled graph would need functional c10d ops
def all_reduce_sum(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Differentiable element-wise sum of ``tensor`` over the ranks of ``group``.

    Returns ``tensor`` itself when not distributed. Every rank must call it with the same
    shape, in the same order.
    """
    if not is_distributed(group):
        return tensor
    return _AllReduceSum.apply(tensor, group)


def all_gather_cat(tensor: Tensor, dim: int = 0,
                   group: dist.ProcessGroup | None = None) -> Tensor:
    """Differentiable concatenation of every rank's ``tensor`` along ``dim``, in rank order.

    Built on :func:`all_reduce_sum` of a zero-padded ``(W, *shape)`` buffer (gloo has no
    reduce-scatter for torch's autograd all-gather): each rank's slot receives the summed
    gradient of all ranks' objectives. Shapes must agree across ranks.
    """
    world = group_size(group)
    if world == 1:
        return tensor
    slots = [torch.zeros_like(tensor) for _ in range(world)]
    slots[group_rank(group)] = tensor
    gathered = all_reduce_sum(torch.stack(slots), group)
    return torch.cat(gathered.unbind(0), dim=dim)


def all_reduce_max(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Differentiable element-wise maximum over ranks.

    The forward value is exactly the maximum; the gradient of every rank's objective with
    respect to it goes to the rank(s) holding it (split evenly over tied ranks), as autograd's
    ``amax`` routes it within one tensor. Use ``-all_reduce_max(-t)`` for the minimum.
    """
    if not is_distributed(group):
        return tensor
    with torch.no_grad():
        top = tensor.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        owner = (tensor.detach() == top).to(tensor.dtype)
        owners = owner.clone()
        dist.all_reduce(owners, op=dist.ReduceOp.SUM, group=group)
        share = owner / owners
    # Forward: top + 0 exactly; backward: share * (sum over ranks of the incoming gradient).
    return top + all_reduce_sum(share * (tensor - tensor.detach()), group)

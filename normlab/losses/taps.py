"""The standardization loss of many hooked outputs as one autograd node per read.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925 (eq. 1-2): for each channel ``c`` of a pre-activation ``x``
with ``M`` values, mean ``mu_c``, biased variance ``var_c`` and ``r_c = var_c + eps``,

    L = 0.5 * sum_c (mu_c^2 + var_c - log r_c - 1),  dL/dx = a_c * x + b_c,
    a_c = (1 - 1/r_c) / M,  b_c = mu_c / (M r_c).

The gradient is affine in ``x`` per channel, so a hooked output costs its moments in forward
and one ``a * x + b`` pass in backward, and nothing else needs autograd:

- :func:`tap` (in the layer's forward hook) takes the output's moments *outside* autograd and
  hands the network a copy of the output: the loss keeps the output itself for its backward,
  and in-place activations after the layer (``ReLU(inplace=True)``, ``out += identity``)
  overwrite the copy, never what the loss keeps. Peak memory is that of BatchNorm, which also
  keeps its input beside the output the activation overwrites.
- :class:`StandardizationSum` (one per read of the loss) takes every output tapped since the
  last read as its inputs and their moments as constants: forward computes the loss of all
  channels in a handful of vectorized ops, backward the coefficients ``a_c``, ``b_c`` of all
  channels at once and then each output's ``a * x + b``.

One Python autograd node per read instead of one per layer plus one per read: on the paper's
3x100 MLP (batch 128, one thread) that took a training step from 1.52x to 1.36x the bare
network's (``python -m normlab.lab.bench.cpu_time --models mlp``; BatchNorm 1.18x).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..functional.standardization import _channel_stats

__all__ = ["moments", "tap", "Tapped", "StandardizationSum", "affine_grad"]


class Tapped(NamedTuple):
    """One hooked output waiting for the next read: its moments, its values per channel
    (``count``) and the output itself, which the gradient flows into."""

    index: int  # the layer's index among the loss's candidates
    mean: Tensor
    var: Tensor
    count: int
    output: Tensor
    cd: int  # channel dimension (non-negative)


_HALF = (torch.float16, torch.bfloat16)

#: Up to this many rows per channel, channels-last moments come from one
#: ``batch_norm_update_stats`` call (mean and two-pass variance together). Its row-by-row mean
#: loses accuracy as rows grow (at ``|mu| = 1000`` in float32: 2e-7 relative at 128 rows,
#: 1e-6 at 4,096, 4e-6 at 65,536, against about 1e-7 for torch's cascaded ``mean``), so
#: longer columns take the cascaded mean.
FUSED_ROWS = 8192


def moments(x: Tensor, cd: int) -> tuple[Tensor, Tensor]:
    """``(mu, var)`` per channel of dim ``cd`` (non-negative): constants (taken from a detached
    view, so no graph), in float32 for half inputs."""
    d = x.detach()
    if d.dtype in _HALF:
        d = d.float()
    if cd == d.dim() - 1 and d.numel() <= FUSED_ROWS * d.shape[cd]:
        return torch.batch_norm_update_stats(d.reshape(-1, d.shape[cd]), None, None, 0.0)
    _, mean, var = _channel_stats(d, cd)
    return mean, var


def tap(x: Tensor, cd: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(copy of x for the network, mu, var)``: :func:`moments`, and the copy that in-place
    operations after the layer may overwrite instead of ``x``."""
    mean, var = moments(x, cd)
    return x.clone(), mean, var


def affine_grad(x: Tensor, cd: int, a: Tensor, b: Tensor) -> Tensor:
    """``x * a + b`` with ``a``, ``b`` per channel of dim ``cd``, in ``x``'s dtype."""
    out_dtype = x.dtype
    if x.dtype in _HALF:
        x = x.float()
    if cd == x.dim() - 1:
        term = torch.addcmul(b, x, a)
    elif cd == 1:
        # x * a + b per channel as an inference-mode batch norm (mean 0, var 1, eps 0):
        # one vectorized pass over channel-major data, 1.3-3.6x faster than addcmul.
        zeros = torch.zeros_like(a)
        term = torch.native_batch_norm(x, a, b, zeros, zeros + 1, False, 0.0, 0.0)[0]
    else:
        view = [1] * x.dim()
        view[cd] = -1
        term = torch.addcmul(b.view(view), x, a.view(view))
    return term.to(out_dtype)


class StandardizationSum(torch.autograd.Function):
    """``scale * 0.5 * sum_c (mu^2 + var - log(var + eps) - 1)`` over the tapped channels.

    Args (of ``apply``):
        scale: a Python float (weight, and 1/channels for the mean reduction).
        eps: inside the log.
        inv_m: ``(C_total,)`` tensor of ``1/M`` of each channel's output.
        taps: the :class:`Tapped` outputs, in order; their moments are constants.
        *outputs: ``taps``' outputs (autograd's inputs: what the gradient flows into).

    Returns ``(loss, terms)``; ``terms`` (not differentiable) holds each channel's
    ``mu^2 + var - log(var + eps) - 1``, for per-layer logging.
    """

    @staticmethod
    def forward(ctx, scale: float, eps: float, inv_m: Tensor, taps: list, *outputs: Tensor):
        if len(taps) > 1:
            mean = torch.cat([t.mean for t in taps])
            r = torch.cat([t.var for t in taps]).add_(eps)
        else:
            mean, r = taps[0].mean, taps[0].var + eps
        terms = torch.addcmul(r - torch.log(r), mean, mean).sub_(1.0 + eps)
        loss = terms.sum().mul_(0.5 * scale)
        ctx.save_for_backward(mean, r, inv_m, *outputs)
        ctx.scale = scale
        ctx.layout = [(t.mean.numel(), t.cd) for t in taps]
        ctx.mark_non_differentiable(terms)
        ctx.set_materialize_grads(False)  # no zeros for the terms' (absent) gradient
        return loss, terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor | None, _terms_grad):
        nothing = (None,) * (4 + len(ctx.layout))
        if grad is None:
            return nothing
        mean, r, inv_m, *outputs = ctx.saved_tensors
        g = inv_m * (grad * ctx.scale)
        q = r.reciprocal_().mul_(g)  # r is not needed again: once-differentiable
        a = g.sub_(q)
        b = q.mul_(mean)
        sizes = [n for n, _ in ctx.layout]
        grads = [affine_grad(x, cd, ai, bi) for x, (_, cd), ai, bi
                 in zip(outputs, ctx.layout, a.split(sizes), b.split(sizes))]
        return (None, None, None, None, *grads)

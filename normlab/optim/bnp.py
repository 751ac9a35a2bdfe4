"""Batch Normalization Preconditioning (BNP): BN's statistics used on the gradients, not the data.

Lange, Helfrich & Ye, "Batch Normalization Preconditioning for Neural Network Training", JMLR
23(72), 2022, arXiv:2108.01110.

For a dense layer ``z = W h + b`` keep running estimates of the per-feature mean ``mu`` and
variance ``s2`` of its input ``h`` and let ``D = diag(sqrt(s2 + eps))``. Batch-normalizing the
input is the reparametrization ``z = W~ D^-1 (h - mu) + b~``, i.e. ``W = W~ D^-1`` and
``b = b~ - W~ D^-1 mu``. By the chain rule ``G_W~ = (G_W - g_b mu^T) D^-1`` and
``g_b~ = g_b``; an SGD step on ``(W~, b~)`` mapped back with ``mu, D`` held fixed is

.. math::

    W \\leftarrow W - lr\\,A, \\qquad A = (G_W - g_b \\mu^T) D^{-2}, \\qquad
    b \\leftarrow b - lr\\,(g_b - A \\mu).

So BNP replaces ``(G_W, g_b)`` by ``(A, g_b - A mu)`` — a fixed linear, symmetric positive
definite preconditioner — and then lets any torch optimizer take its step. The network is not
changed, nothing is normalized at inference and, because the statistics are running averages
across steps, any batch size works, including 1 (online learning).

Choices (the paper's full text could not be read from here; these are ours, all arguments):

- **Statistics**: an exponentially weighted mean and variance of every sample the layer saw in
  training, ``new = (1 - momentum) old + momentum batch`` as in torch's BatchNorm, where the
  variance update also adds the between-batch term ``momentum (1 - momentum) (batch_mean -
  old_mean)^2``. This is the variance of the weighted mixture of all past samples, so with
  batch size 1 (where every within-batch variance is 0) it is still the population variance.
- **Warm-up**: the running mean starts at 0 and the variance at 1, so with ``eps = 0`` the
  first steps are the base optimizer's own and BNP blends in at the rate ``momentum`` (no
  division by a one-sample variance of 0 at step 1).
- **Damping**: ``eps`` inside the square root, as in BN (default ``1e-3``: larger than BN's
  1e-5 because the preconditioner multiplies gradients by ``1 / (s2 + eps)``, and a unit whose
  lagging running variance is ~0 while it is alive would otherwise get a 1e5 step).
- **Layers**: every ``Linear`` and ``Conv1d/2d/3d`` whose weight the wrapped optimizer trains,
  including the first (normalizing the data, which BNP does for free) and the last (whose
  input is the last hidden layer's output). ``skip_first`` / ``skip_last`` leave out the
  first / last such layer in registration order.
- **Convolutions** are dense layers on patches: statistics are per input channel over batch
  and positions (what BN2d of the input computes) and repeated over the kernel taps; with
  ``groups > 1`` each output channel sees its group's input channels. Zero padding is treated
  as input value 0 (pad, then normalize): that is the only reading under which the update is
  exactly a step on an equivalent reparametrized conv with a position-independent bias. The
  statistics are of the unpadded input. Reflect/replicate/circular padding commutes with the
  per-channel affine normalization, so those modes are exact too.
- **No bias** (or a bias without a gradient): only the scaling part, ``A = G_W D^-2``.
- **Other optimizers**: momentum, weight decay and Adam act on the preconditioned gradient.
  Momentum SGD with fixed statistics is exactly momentum SGD on ``(W~, b~)``; Adam is not
  (its per-coordinate scaling is not invariant to the reparametrization). Weight decay is
  added by the base optimizer to the preconditioned gradient, so it sees (and shrinks) the
  original ``W`` and ``b``, un-preconditioned.
- Statistics are updated by forward pre-hooks in training mode with grad enabled only, so
  evaluation and ``torch.no_grad()`` forwards cost nothing and change nothing; a layer called
  several times per step updates its statistics once per call.

Example:
    >>> opt = BNP(torch.optim.SGD(model.parameters(), lr=0.1), model, momentum=0.01)
    >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    >>> opt.remove()  # training done: plain SGD again, statistics hooks detached
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..checks import check_eps, check_momentum
from ..nn_types import WEIGHT_LAYERS as BNP_LAYERS
from .wrapper import OptimizerWrapper

__all__ = ["BNP", "BNP_LAYERS", "bnp_precondition", "input_moments", "update_running_moments_"]


def input_moments(x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population (ddof=0) variance of ``x`` over all other dims.

    Two passes (mean, then mean squared deviation): precise when ``|mean| >> std`` and, on CPU,
    much faster than ``torch.var_mean`` over several dims.
    """
    dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims)
    return mean.reshape(-1), var


def update_running_moments_(running_mean: Tensor, running_var: Tensor, batch_mean: Tensor,
                            batch_var: Tensor, momentum: float) -> None:
    """Merge a batch into exponentially weighted running moments, in place.

    The result is the mean and variance of the mixture ``(1 - m) * old + m * batch``:
    ``var = (1 - m) var + m batch_var + m (1 - m) (batch_mean - mean)^2``.
    """
    delta = batch_mean - running_mean
    running_var.mul_(1 - momentum).add_(batch_var, alpha=momentum)
    running_var.add_(delta.square(), alpha=momentum * (1 - momentum))
    running_mean.add_(delta, alpha=momentum)


def _per_weight(stat: Tensor, weight_shape: torch.Size, groups: int) -> Tensor:
    """A per-input-channel statistic laid out to broadcast against a weight of this shape."""
    out_ch, in_per_group = weight_shape[0], weight_shape[1]
    taps = [1] * (len(weight_shape) - 2)
    if groups == 1:
        return stat.view(1, in_per_group, *taps)
    # Output channel o of a grouped conv reads input channels of group o // (out / groups).
    per_out = stat.view(groups, in_per_group).repeat_interleave(out_ch // groups, dim=0)
    return per_out.view(out_ch, in_per_group, *taps)


def bnp_precondition(grad_weight: Tensor, grad_bias: Tensor | None, mean: Tensor, var: Tensor,
                     eps: float, groups: int = 1) -> tuple[Tensor, Tensor | None]:
    """The BNP-preconditioned gradients of one dense or conv layer.

    .. math::

        A = (G_W - g_b \\mu^T)\\,\\mathrm{diag}(s^2 + \\epsilon)^{-1}, \\qquad
        g_b' = g_b - A \\mu

    with ``mu, s2`` repeated over kernel taps; without ``grad_bias`` only ``A = G_W D^-2``.

    Args:
        grad_weight: ``(out, in / groups, *kernel)``; a Linear weight is ``(out, in)``.
        grad_bias: ``(out,)`` or ``None``.
        mean, var: ``(in,)`` per-input-channel running statistics.
        eps: added to ``var``.
        groups: the conv's ``groups``.

    Returns:
        ``(A, g_b')`` (``g_b'`` is ``None`` when ``grad_bias`` is).
    """
    if grad_weight.dim() < 2:
        raise ValueError(f"grad_weight must be (out, in, *kernel), got shape "
                         f"{tuple(grad_weight.shape)}")
    out_ch, in_per_group = grad_weight.shape[0], grad_weight.shape[1]
    if out_ch % groups or mean.shape != (in_per_group * groups,) or var.shape != mean.shape:
        raise ValueError(f"statistics of shape {tuple(mean.shape)}/{tuple(var.shape)} do not "
                         f"fit a weight of shape {tuple(grad_weight.shape)} with groups={groups}")
    inv = _per_weight((var + eps).reciprocal(), grad_weight.shape, groups)
    if grad_bias is None:
        return grad_weight * inv, None
    mu = _per_weight(mean, grad_weight.shape, groups)
    bias_view = grad_bias.view(out_ch, *[1] * (grad_weight.dim() - 1))
    a = (grad_weight - bias_view * mu) * inv
    return a, grad_bias - (a * mu).flatten(1).sum(1)


class _LayerStats:
    """Running input statistics of one layer (mean starts at 0, variance at 1)."""

    def __init__(self, channels: int, like: Tensor) -> None:
        self.mean = torch.zeros(channels, dtype=like.dtype, device=like.device)
        self.var = torch.ones(channels, dtype=like.dtype, device=like.device)
        self.count = 0  # training forwards seen

    def follow(self, weight: Tensor) -> None:
        """Move to the weight's device and dtype (the model may be moved after wrapping)."""
        if self.mean.device != weight.device or self.mean.dtype != weight.dtype:
            self.mean = self.mean.to(weight.device, weight.dtype)
            self.var = self.var.to(weight.device, weight.dtype)


class BNP(OptimizerWrapper):
    """Wraps any torch optimizer with Batch Normalization Preconditioning of its gradients.

    ``step(closure=None)`` runs the wrapper's step pre-hooks and the closure, replaces the
    ``.grad`` of every hooked layer's weight and bias in place by the BNP-preconditioned
    gradient (:meth:`precondition`, see the module docstring), then calls the inner
    optimizer's ``step()`` and the post-hooks. ``param_groups``, ``state`` and ``defaults`` read
    through to the inner optimizer's own objects (also after ``load_state_dict``), so LR
    schedulers work unchanged; ``state_dict()`` is the inner one plus ``"bnp"`` (every layer's
    running statistics), which ``load_state_dict`` requires. :meth:`remove` stops the
    preconditioning and detaches the statistics hooks (the statistics are kept).

    Args:
        optimizer: the base optimizer (already holding the model's parameters).
        model: the network whose Linear/Conv1d/2d/3d layers are preconditioned.
        momentum: weight of a new batch in the running statistics (torch's convention;
            0 freezes them, 1 keeps only the latest batch). 0.01 averages ~100 steps, which
            with batch size 1 is ~100 samples.
        eps: added to the running variance (damping).
        skip_first: leave out the first selected layer (registration order).
        skip_last: leave out the last selected layer.

    Raises:
        TypeError: ``optimizer`` is not a torch optimizer or ``model`` not a module.
        ValueError: bad momentum/eps, a parametrized layer weight, or no layer to precondition.
    """

    def __init__(self, optimizer: Optimizer, model: nn.Module, momentum: float = 0.01,
                 eps: float = 1e-3, skip_first: bool = False, skip_last: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_momentum(momentum)
        check_eps(eps, zero_ok=True)
        super().__init__(optimizer)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.skip_first = skip_first
        self.skip_last = skip_last
        self.layers = self._select_layers(model)
        self.stats = {name: _LayerStats(self._in_channels(m), m.weight)
                      for name, m in self.layers}
        self._handles = [m.register_forward_pre_hook(self._make_hook(name))
                         for name, m in self.layers]

    def _select_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        trained = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        chosen = []
        for name, module in model.named_modules():
            if not isinstance(module, BNP_LAYERS):
                continue
            if nn.utils.parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"layer {name!r} has a parametrized weight; BNP preconditions "
                                 f"plain Linear/Conv weights only")
            if isinstance(module.weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"layer {name!r} is lazy and uninitialized; run one forward "
                                 f"before wrapping the optimizer")
            if id(module.weight) in trained:
                chosen.append((name, module))
        if self.skip_first:
            chosen = chosen[1:]
        if self.skip_last:
            chosen = chosen[:-1]
        if not chosen:
            raise ValueError(f"{type(model).__name__} has no Linear/Conv1d/2d/3d layer whose "
                             f"weight the optimizer trains (after skip_first={self.skip_first}, "
                             f"skip_last={self.skip_last}); nothing to precondition")
        return chosen

    @staticmethod
    def _in_channels(module: nn.Module) -> int:
        return module.in_features if isinstance(module, nn.Linear) else module.in_channels

    def _make_hook(self, name: str) -> Callable:
        stats = self.stats[name]

        def hook(module: nn.Module, args: tuple) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            x = args[0].detach()
            if isinstance(module, nn.Linear):
                channel_dim = -1
                if x.dim() == 1:  # one unbatched sample
                    x = x.unsqueeze(0)
            else:  # (N, C, *spatial) or unbatched (C, *spatial)
                channel_dim = x.dim() - (module.weight.dim() - 2) - 1
            stats.follow(module.weight)
            with torch.no_grad():
                mean, var = input_moments(x.to(stats.mean.dtype), channel_dim)
                update_running_moments_(stats.mean, stats.var, mean, var, self.momentum)
            stats.count += 1

        return hook

    @torch.no_grad()
    def precondition(self) -> None:
        """Replace each hooked layer's ``.grad`` by its BNP-preconditioned gradient, in place."""
        for name, module in self.layers:
            weight = module.weight
            if weight.grad is None:
                continue
            bias = module.bias
            grad_bias = bias.grad if bias is not None else None
            stats = self.stats[name]
            stats.follow(weight)
            groups = 1 if isinstance(module, nn.Linear) else module.groups
            new_w, new_b = bnp_precondition(weight.grad, grad_bias, stats.mean, stats.var,
                                            self.eps, groups)
            weight.grad.copy_(new_w)
            if new_b is not None:
                grad_bias.copy_(new_b)

    def _transform_grads(self) -> None:
        self.precondition()

    def _save_state(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus ``"bnp"``: every layer's running statistics."""
        sd = self.optimizer.state_dict()
        sd["bnp"] = {name: {"mean": s.mean.clone(), "var": s.var.clone(), "count": s.count}
                     for name, s in self.stats.items()}
        return sd

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        """Restore the inner optimizer and the running statistics (layers must match by name)."""
        sd = dict(state_dict)
        if "bnp" not in sd:
            raise ValueError("state_dict has no 'bnp' entry: it was not saved by BNP")
        saved = sd.pop("bnp")
        if set(saved) != set(self.stats):
            raise ValueError(f"state_dict has statistics for layers {sorted(saved)}, this BNP "
                             f"hooks {sorted(self.stats)}")
        for name, entry in saved.items():
            stats = self.stats[name]
            if entry["mean"].shape != stats.mean.shape:
                raise ValueError(f"layer {name!r}: saved statistics of shape "
                                 f"{tuple(entry['mean'].shape)}, expected "
                                 f"{tuple(stats.mean.shape)}")
        self.optimizer.load_state_dict(sd)
        for name, entry in saved.items():
            stats = self.stats[name]
            stats.mean.copy_(entry["mean"])
            stats.var.copy_(entry["var"])
            stats.count = int(entry["count"])

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        names = [n for n, _ in self.layers]
        return (f"BNP({type(self.optimizer).__name__}, momentum={self.momentum}, eps={self.eps},"
                f" layers={names})")

"""Synchronized batch-statistics layers that work on CPU (gloo) and GPU, and the converter.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167 (BN's statistics are those of the whole batch);
Hoffer, Banner, Golan & Soudry, "Norm matters", 2018, arXiv:1803.01814 (L1, top-k BN);
Banner, Hubara, Hoffer & Soudry, "Scalable methods for 8-bit training of neural networks",
2018, arXiv:1805.11046 (Range BN); Ioffe, "Batch Renormalization", 2017, arXiv:1702.03275.

Under data parallelism each replica sees ``1/W`` of the batch; a plain BN normalizes with
that shard's statistics. The layers here compute the statistics of the global batch through
differentiable all-reduces (:mod:`normlab.distributed.moments`), so the forward, the gradient
and the running statistics are those of a single process over the concatenated batch, and
the running statistics are identical on every rank. ``torch.nn.SyncBatchNorm`` does this for
BN on GPU only; these work wherever ``torch.distributed`` does (gloo on CPU, nccl on GPU).

:func:`sync_norm` swaps the class of every supported layer in place, as
``torch.nn.utils.parametrize`` does: the module objects, their parameters, buffers and hooks
stay the same objects (so an optimizer or hook that holds them keeps working), and
:func:`revert_sync_norm` swaps them back. Evaluation uses the running statistics and never
communicates. Not distributed (or one process), a synchronized layer computes what the
original computes.

Supported: torch's BatchNorm1d/2d/3d, normlab's
:class:`~normlab.layers.dispersion_batch_norm.L1BatchNorm`, ``LinfBatchNorm`` (global top-k, see
:mod:`normlab.distributed.moments`), ``RangeBatchNorm`` and ``BatchRenorm``. Other layers are
left as they are; :func:`unsynced_batch_layers` lists the batch-statistics ones among them.

Example:
    >>> model = normlab.sync_norm(build_model(...))     # before DDP and the optimizer
    >>> ddp = DistributedDataParallel(model)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..functional.dispersion_batch_norm import dispersion_normalize, range_running_factor
from ..layers.batch_renormalization import BatchRenorm
from ..layers.dispersion_batch_norm import L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from .moments import (global_l1_moments, global_linf_moments, global_mean_var,
                      global_range_moments)

__all__ = ["SyncBatchNorm", "SyncL1BatchNorm", "SyncLinfBatchNorm", "SyncRangeBatchNorm",
           "SyncBatchRenorm", "sync_norm", "revert_sync_norm", "unsynced_batch_layers",
           "SYNC_CLASSES"]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (x.dim() - 2))


class _Synced:
    """Mixin: the process group and the class to revert to (set by :func:`sync_norm`)."""

    process_group: dist.ProcessGroup | None
    _unsynced_class: type

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, synced={self._unsynced_class.__name__}"


class SyncBatchNorm(_Synced, _BatchNorm):
    """torch's BatchNorm (any dimensionality) with global-batch statistics on any device.

    Training: ``y = (x - mu) / sqrt(var + eps) * weight + bias`` with ``mu``, ``var`` (biased)
    of the global batch; running statistics as torch's BN (unbiased variance with the global
    count, ``momentum=None`` for a cumulative average). Evaluation: running statistics.
    Made by :func:`sync_norm` from a ``BatchNorm{1,2,3}d``, whose input checks it keeps.

    Shape:
        Input ``(N, C, *)``, output the same.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        self._unsynced_class._check_input_dim(self, x)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        mean, var, n = global_mean_var(x, 1, self.process_group)
        if self.training and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return dispersion_normalize(x, mean, torch.sqrt(var + self.eps), self.weight,
                                    self.bias, 0.0).to(x.dtype)


class _SyncDispersion(_Synced):
    """Training forward of the synchronized L1/top-k/Range BN: global moments, then
    exactly the single-process normalization and running-statistics update."""

    def _global_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        raise NotImplementedError

    def _running_factor(self, n: int) -> float:
        """What the batch dispersion is scaled by in the running one (Range BN's)."""
        return 1.0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input(x)
        self.num_batches_tracked.add_(1)
        mean, disp, n = self._global_moments(x)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            running = disp.detach() * self._running_factor(n)
            self.running_disp.lerp_(running.to(self.running_disp.dtype), self.momentum)
        return dispersion_normalize(x, mean, disp, self.weight, self.bias, self.eps).to(x.dtype)


class SyncL1BatchNorm(_SyncDispersion, L1BatchNorm):
    """:class:`~normlab.layers.dispersion_batch_norm.L1BatchNorm` with global-batch mean and
    ``sqrt(pi/2) mean|x - mu|``."""

    def _global_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        return global_l1_moments(x, self.process_group)


class SyncLinfBatchNorm(_SyncDispersion, LinfBatchNorm):
    """:class:`~normlab.layers.dispersion_batch_norm.LinfBatchNorm` with the global batch's top-k:
    the ``k`` largest deviations of the whole batch, ``E_k(n)`` for the global ``n``."""

    def _global_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        return global_linf_moments(x, self.k, self.correction, self.process_group)


class SyncRangeBatchNorm(_SyncDispersion, RangeBatchNorm):
    """:class:`~normlab.layers.dispersion_batch_norm.RangeBatchNorm` with the global batch's range
    and ``C(n)`` for the global ``n``."""

    def _global_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        return global_range_moments(x, self.correction, self.process_group)

    def _running_factor(self, n: int) -> float:
        return range_running_factor(n, self.correction)


class SyncBatchRenorm(_Synced, BatchRenorm):
    """:class:`~normlab.layers.batch_renormalization.BatchRenorm` with global-batch ``mu_B``,
    ``sigma_B``; ``r``, ``d`` and the running update exactly as the single-process layer."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input(x)
        rmax, dmax = self.limits()
        self.num_batches_tracked.add_(1)
        mean, var, n = global_mean_var(x, 1, self.process_group)
        std = torch.sqrt(var + self.eps)
        with torch.no_grad():
            run_std = torch.sqrt(self.running_var + self.eps)
            r = (std / run_std).clamp(1.0 / rmax, rmax)
            d = ((mean - self.running_mean) / run_std).clamp(-dmax, dmax)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype),
                                   self.momentum)
        scale = r / std
        shift = d - mean * scale
        if self.weight is not None:
            scale, shift = scale * self.weight, shift * self.weight
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x)).to(x.dtype)


# Exact types only: a user subclass may override forward, which a swap would silently drop.
SYNC_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: SyncBatchNorm, nn.BatchNorm2d: SyncBatchNorm,
    nn.BatchNorm3d: SyncBatchNorm,
    L1BatchNorm: SyncL1BatchNorm, LinfBatchNorm: SyncLinfBatchNorm,
    RangeBatchNorm: SyncRangeBatchNorm, BatchRenorm: SyncBatchRenorm,
}


def sync_norm(model: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Make every supported batch-statistics layer of ``model`` use global-batch statistics.

    In place (see the module docstring); call it before wrapping in DDP and building the
    optimizer, on every rank. Already synchronized layers get the new ``process_group``.

    Args:
        model: any module (the root itself may be a norm layer).
        process_group: the group whose ranks share statistics (default: the world).

    Returns:
        ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sync_norm expects an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, _Synced):
            module.process_group = process_group
            continue
        cls = SYNC_CLASSES.get(type(module))
        if cls is None:
            continue
        if isinstance(module, _BatchNorm) and (module.running_mean is not None
                                               and module.running_mean.is_meta):
            raise ValueError(f"cannot synchronize an uninitialized {type(module).__name__}")
        module._unsynced_class = type(module)
        module.process_group = process_group
        module.__class__ = cls
    return model


def revert_sync_norm(model: nn.Module) -> nn.Module:
    """Undo :func:`sync_norm` in place: every synchronized layer gets its original class
    back (with its trained parameters and running statistics). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, _Synced):
            module.__class__ = module._unsynced_class
            del module._unsynced_class, module.process_group
    return model


def unsynced_batch_layers(model: nn.Module) -> list[str]:
    """Names of the modules that normalize with batch statistics but :func:`sync_norm` cannot
    synchronize (they keep per-replica statistics under DDP): torch BN subclasses and
    normlab layers with running statistics that are not in :data:`SYNC_CLASSES`."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, _Synced) or type(module) in SYNC_CLASSES:
            continue
        if isinstance(module, _BatchNorm) or hasattr(module, "running_mean"):
            names.append(name or type(module).__name__)
    return names

"""Data-parallel training with per-replica or global normalization statistics.

Data parallelism with torch's DistributedDataParallel (Li et al., "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", 2020, arXiv:2006.15704); the statistics
question it raises for BN (Ioffe & Szegedy 2015, arXiv:1502.03167) and for the standardization
loss (Collins, Ballé & Shlens 2019, arXiv:1903.00925, whose moments were per TPU core).

- :mod:`~normlab.distributed.collectives`: differentiable all-reduce sum / max / gather.
- :mod:`~normlab.distributed.moments`: global-batch moments and the global standardization loss.
- :mod:`~normlab.distributed.sync_norm`: synchronized BN, L1/top-k/Range BN, Batch Renorm on
  CPU and GPU; :func:`sync_norm` / :func:`revert_sync_norm`.
- :mod:`~normlab.distributed.runtime`: :class:`DistributedConfig`, :class:`Replica` (what the
  trainer asks of a rank), process-group setup and clean shutdown.
- :mod:`~normlab.distributed.launch`: :func:`launch` / :func:`spawn` local processes or join
  torchrun's; :class:`RankFailedError`.
"""

from .collectives import all_gather_cat, all_reduce_max, all_reduce_sum, is_distributed
from .launch import RankFailedError, launch, spawn
from .moments import (global_l1_moments, global_linf_moments, global_mean_var,
                      global_range_moments, global_standardization_loss)
from .runtime import (BACKENDS, STATS, DistributedConfig, Replica, init_replica, shutdown,
                      torchrun_world)
from .sync_norm import (SyncBatchNorm, SyncBatchRenorm, SyncL1BatchNorm, SyncLinfBatchNorm,
                        SyncRangeBatchNorm, revert_sync_norm, sync_norm, unsynced_batch_layers)

__all__ = [
    "all_gather_cat", "all_reduce_max", "all_reduce_sum", "is_distributed",
    "RankFailedError", "launch", "spawn",
    "global_l1_moments", "global_linf_moments", "global_mean_var", "global_range_moments",
    "global_standardization_loss",
    "BACKENDS", "STATS", "DistributedConfig", "Replica", "init_replica", "shutdown",
    "torchrun_world",
    "SyncBatchNorm", "SyncBatchRenorm", "SyncL1BatchNorm", "SyncLinfBatchNorm",
    "SyncRangeBatchNorm", "revert_sync_norm", "sync_norm", "unsynced_batch_layers",
]

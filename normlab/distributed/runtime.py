"""One training process among several: process group, device, and what the trainer needs.

Data parallelism as in Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1
Hour", 2017, arXiv:1706.02677, with torch's DistributedDataParallel: every rank holds the
whole model, takes ``batch_size / W`` examples of each global batch, and DDP averages the
gradients, so the global batch size and the learning rate mean what they mean in one process.

Statistics (``stats``), the choice data parallelism forces on normalization:

- ``"replica"``: each rank's own shard. BN layers normalize with shard statistics (torch's
  default under DDP; DDP copies rank 0's running statistics to every rank at each forward);
  the standardization loss is the mean over ranks of per-shard losses, as the paper's TPU
  training computed it per core (Collins, Ballé & Shlens 2019, arXiv:1903.00925).
- ``"global"``: the global batch's. Batch-statistics layers are synchronized
  (:func:`normlab.distributed.sync_norm`) and the standardization loss uses all-reduced
  moments: forward and gradients equal a single process on the whole batch.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .sync_norm import revert_sync_norm, sync_norm, unsynced_batch_layers

__all__ = ["DistributedConfig", "Replica", "STATS", "BACKENDS", "torchrun_world",
           "init_replica", "shutdown"]

STATS = ("replica", "global")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistributedConfig:
    """How a run is spread over processes.

    Attributes:
        nproc: processes on this machine (1: no ``torch.distributed`` at all).
        stats: ``"replica"`` or ``"global"`` batch statistics (module docstring).
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"`` (nccl when CUDA is available).
        timeout_s: how long a collective waits for a missing rank before failing the run.
    """

    nproc: int = 1
    stats: str = "replica"
    backend: str = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.nproc, bool) or not isinstance(self.nproc, int) or self.nproc < 1:
            raise ValueError(f"nproc must be a positive int, got {self.nproc!r}")
        if self.stats not in STATS:
            raise ValueError(f"stats must be one of {STATS}, got {self.stats!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if torch.cuda.is_available() else "gloo"

    def to_dict(self) -> dict:
        return asdict(self)


ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun_world() -> int | None:
    """``WORLD_SIZE`` when this process was started by torchrun (or any env:// launcher).

    Raises:
        ValueError: some but not all of RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are set
            (stray variables from another job: joining would wait for peers that never
            come), or their values are not a rank in a world.
    """
    present = [k for k in ENV_VARS if os.environ.get(k, "") != ""]
    if not present:
        return None
    if len(present) < len(ENV_VARS):
        missing = [k for k in ENV_VARS if k not in present]
        raise ValueError(f"half-set torchrun environment: {', '.join(present)} set but "
                         f"{', '.join(missing)} not; start with torchrun, or unset "
                         f"{' '.join(present)} for a single-process run")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        port = int(os.environ["MASTER_PORT"])
    except ValueError:
        raise ValueError("torchrun environment: RANK, WORLD_SIZE and MASTER_PORT must be "
                         f"integers, got {', '.join(f'{k}={os.environ[k]!r}' for k in ENV_VARS)}"
                         ) from None
    if not (world >= 1 and 0 <= rank < world and 0 < port < 65536):
        raise ValueError(f"torchrun environment: RANK={rank} WORLD_SIZE={world} "
                         f"MASTER_PORT={port} is not a rank of a world and a TCP port")
    return world


@dataclass
class Replica:
    """This process's place in the run, and the DDP plumbing the trainer calls.

    Attributes:
        rank, world_size, local_rank: from the launcher's environment.
        device: ``cuda:<local_rank>`` under nccl, else cpu.
        config: the :class:`DistributedConfig` of the run.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    config: DistributedConfig

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that evaluates, shows progress and writes results."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (fails after the timeout if one never comes)."""
        dist.barrier()

    def prepare(self, model: nn.Module, batch_dependent: bool = False) -> nn.Module:
        """Move ``model`` to the device; with global statistics, synchronize its norms.

        Call before the method attaches hooks or builds the optimizer. Warns (rank 0) when
        ``batch_dependent`` layers would silently keep per-replica statistics.
        """
        model = model.to(self.device)
        if self.config.stats == "global":
            sync_norm(model)
            left = unsynced_batch_layers(model)
            if left and batch_dependent and self.is_main:
                warnings.warn(f"--stats global: {', '.join(left)} cannot be synchronized and "
                              "keep per-replica batch statistics", stacklevel=2)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The DDP module to call in the training loop (hooks stay on ``model``'s modules)."""
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def finish(self, model: nn.Module) -> nn.Module:
        """The trained model in its plain form: synchronized layers reverted."""
        return revert_sync_norm(model)

    def mean(self, *values: Tensor | None) -> list[float]:
        """Mean over ranks of each scalar (``None`` counts as 0): one small all-reduce.

        A non-finite value on any rank makes the mean non-finite on every rank, so all
        ranks stop a diverged run at the same step.
        """
        buf = torch.tensor([0.0 if v is None else float(v.detach()) for v in values],
                           dtype=torch.float64, device=self.device)
        dist.all_reduce(buf)
        return (buf / self.world_size).tolist()


def init_replica(config: DistributedConfig) -> Replica:
    """Join the process group described by the env:// variables (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK), with ``config.timeout_s`` on every collective."""
    backend = config.resolved_backend()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA; use --backend gloo on CPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=config.timeout_s))
    return Replica(rank, world, local_rank, device, config)


def shutdown(clean: bool = True) -> None:
    """Leave the process group: after a barrier when ``clean`` (every rank got here), at
    once after an error (a barrier would wait for a rank that is gone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()

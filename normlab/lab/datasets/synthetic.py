"""``synthetic``: a tiny learnable dataset for tests and smoke runs (no paper; labelled
synthetic in every report)."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from .base import DATASETS, Dataset

__all__ = ["synthetic"]


@DATASETS.register("synthetic")
def synthetic(data_dir: str | os.PathLike | None = None, download: bool = True, seed: int = 0,
              num_train: int = 512, num_test: int = 256, num_classes: int = 10,
              shape: Sequence[int] = (1, 28, 28), noise: float = 1.0) -> Dataset:
    """A tiny deterministic dataset: each class a fixed random image, each sample it + noise.

    ``x = prototype[y] + noise * N(0, 1)``, prototypes ~ N(0, 1) drawn from ``seed``, labels
    balanced then shuffled; standardized with the training mean/std like the real data.
    A small CNN learns it well above chance in a few hundred SGD steps.

    Args:
        data_dir, download: ignored (uniform loader signature).
        seed: fixes prototypes, noise and labels.
        num_train, num_test: split sizes. num_classes, shape (C, H, W), noise: see above.
    """
    if num_train < 1 or num_test < 1 or num_classes < 2 or noise < 0 or len(shape) != 3:
        raise ValueError(f"synthetic: need num_train, num_test >= 1, num_classes >= 2, "
                         f"noise >= 0 and a (C, H, W) shape; got {num_train}, {num_test}, "
                         f"{num_classes}, {noise}, {tuple(shape)}")
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, *shape, generator=g, dtype=torch.float64)

    def split(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        x = prototypes[y] + noise * torch.randn(n, *shape, generator=g, dtype=torch.float64)
        return x, y

    (xtr, ytr), (xte, yte) = split(num_train), split(num_test)
    mean, std = float(xtr.mean()), float(xtr.std(correction=0))
    xtr, xte = ((x - mean) / std for x in (xtr, xte))
    return Dataset("synthetic", xtr.float(), ytr, xte.float(), yte, num_classes, "synthetic",
                   f"synthetic data (seed {seed}): {num_classes} random prototypes + Gaussian "
                   f"noise {noise}, not a real dataset", mean, std)

"""``modelnet40``: Wu, Song, Khosla, Yu, Zhang, Tang & Xiao, "3D ShapeNets: A Deep
Representation for Volumetric Shapes", CVPR 2015 — in the point-cloud HDF5 form that Qi et
al. (PointNet, arXiv:1612.00593) distribute (``modelnet40_ply_hdf5_2048``: files
``ply_data_train*.h5`` / ``ply_data_test*.h5``, each with ``data`` (N, 2048, 3) float32 and
``label`` (N, 1) integers in 0..39; the points are already centred and scaled into the unit
sphere, so no standardization is applied). Needs ``h5py``. No download: the files have no
published checksum and their original host is gone; pass ``data_dir``.

Held as :class:`~normlab.lab.datasets.base.PointCloudDataset` with inputs ``(N, 3, P)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import CACHE_DIR, DATASETS, PointCloudDataset
from .idx import DataError

__all__ = ["modelnet40", "read_modelnet40"]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading ModelNet40 HDF5 files needs h5py, which is not installed: "
                        "`pip install h5py`") from None
    return h5py


def read_modelnet40(files: Sequence[Path], num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, 3, num_points)`` float32 and labels ``(N,)`` int64 from official .h5 files.

    Raises:
        DataError: an unreadable file, a missing ``data``/``label`` entry, wrong shapes or
            types, non-finite points, labels outside 0..39, or fewer points than asked for.
    """
    h5py = _h5py()
    xs, ys = [], []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                if "data" not in f or "label" not in f:
                    raise DataError(f"{path}: expected datasets 'data' and 'label', found "
                                    f"{sorted(f.keys())}")
                x, y = np.asarray(f["data"]), np.asarray(f["label"])
        except OSError as e:  # h5py's error for a truncated or foreign file
            raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype.kind != "f":
            raise DataError(f"{path}: 'data' must be float (N, P, 3), got {x.dtype} {x.shape}")
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise DataError(f"{path}: 'label' must be {x.shape[0]} integers, got {y.dtype} "
                            f"{y.shape}")
        if y.size and (y.min() < 0 or y.max() >= 40):
            raise DataError(f"{path}: labels must be in 0..39, got {y.min()}..{y.max()}")
        if x.shape[1] < num_points:
            raise DataError(f"{path}: {x.shape[1]} points per cloud, fewer than {num_points}")
        if not np.isfinite(x).all():
            raise DataError(f"{path}: 'data' has non-finite values")
        xs.append(x[:, :num_points].astype(np.float32).transpose(0, 2, 1))
        ys.append(y.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


@DATASETS.register("modelnet40")
def modelnet40(data_dir: str | os.PathLike | None = None, download: bool = True, seed: int = 0,
               num_points: int = 1024) -> PointCloudDataset:
    """ModelNet40 point clouds from ``data_dir`` (or its ``modelnet40_ply_hdf5_2048/``).

    Args:
        data_dir: folder with the official ``ply_data_{train,test}*.h5`` files; defaults to
            ``CACHE_DIR/modelnet40``.
        download, seed: unused (no verified download exists; the split is fixed).
        num_points: the first ``num_points`` of each cloud's 2048 (PointNet uses 1024).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else CACHE_DIR / "modelnet40"
    for folder in (root, root / "modelnet40_ply_hdf5_2048"):
        train = sorted(folder.glob("ply_data_train*.h5"))
        test = sorted(folder.glob("ply_data_test*.h5"))
        if train and test:
            xtr, ytr = read_modelnet40(train, num_points)
            xte, yte = read_modelnet40(test, num_points)
            return PointCloudDataset("modelnet40", torch.from_numpy(xtr), torch.from_numpy(ytr),
                                     torch.from_numpy(xte), torch.from_numpy(yte), 40,
                                     str(folder))
    raise DataError(f"ModelNet40 not found: no ply_data_train*.h5 and ply_data_test*.h5 in "
                    f"{root} or {root / 'modelnet40_ply_hdf5_2048'}. Get "
                    "modelnet40_ply_hdf5_2048.zip (PointNet's release), unzip it and pass "
                    "--data-dir DIR; offline, use the synthetic 'shapes3d' dataset.")

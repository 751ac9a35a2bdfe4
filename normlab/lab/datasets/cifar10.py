"""``cifar10``: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.

The official python archive ``cifar-10-python.tar.gz``. Its pickles are never trusted: the
archive's MD5 is checked FIRST (``CIFAR10_MD5``; a download is verified the same way), then
each batch is read from the archive in memory by :class:`RestrictedUnpickler`, which
admits only the four globals the official files use (numpy's ``_reconstruct``, ``ndarray``
and ``dtype``) and refuses everything else before it is called. Images are standardized
like the other image datasets (one scalar mean and std of the training pixels).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .base import CACHE_DIR, DATASETS, Dataset, dataset_from_uint8
from .download import download_file, verify_file
from .idx import DataError

__all__ = ["CIFAR10_MD5", "RestrictedUnpickler", "cifar10", "read_cifar10_archive"]

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

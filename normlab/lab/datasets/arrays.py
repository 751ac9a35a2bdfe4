"""Data the user brings: arrays (numpy or torch), an ``.npz`` file, a torch Dataset or DataLoader.

Everything is checked before any training starts, with one clear line per problem (a
:class:`~normlab.lab.datasets.idx.DataError`): array types, matching lengths and shapes,
an empty split, NaN/inf (after the cast to float32, so a float64 1e300 is caught too),
integer labels in ``[0, num_classes)``.

Task: integer targets are a classification (cross-entropy, accuracy); float targets a
regression (mean squared error, lower is better). ``task=`` overrides the guess.

- :func:`from_arrays` / :func:`load_npz` (arrays ``x_train, y_train, x_test, y_test``) give a
  :class:`TensorData`, held in memory and batched like the lab's own datasets. uint8 inputs
  are images: they are divided by 255 and standardized with the training pixels' scalar
  mean and std (as the lab's datasets are); the note says so.
- :class:`LoaderData` streams batches from a map-style ``torch.utils.data.Dataset`` or a
  ``DataLoader`` (rebuilt at each batch size with a seeded shuffling sampler and its own
  ``num_workers`` and ``collate_fn``; an iterable-style loader is used as it is). Its first
  samples are checked up front, every batch as it streams.
- :func:`as_data` turns any of these into data the trainer takes.
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from .base import Batches, Dataset
from .idx import DataError

__all__ = ["TensorData", "LoaderData", "from_arrays", "load_npz", "as_data", "task_of",
           "train_stream", "test_stream", "check_targets", "TASKS"]

TASKS = ("classification", "regression")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False, repr=False)
class TensorData(Dataset):
    """A :class:`Dataset` the user gave: inputs ``(N, *features)`` (any rank >= 2) and
    int64 labels (classification) or float32 targets ``(N,)`` / ``(N, K)`` (regression).
    ``num_classes`` is the output width a regression model needs (K, 1 for ``(N,)``)."""

    task: str = "classification"

    def __post_init__(self) -> None:
        if self.task == "classification" and all(
                getattr(self, f"x_{s}").dim() >= 3 for s in ("train", "test")):
            return super().__post_init__()
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or x.dim() < 2 or len(y) != len(x):
                raise DataError(f"{self.name}: x_{split} must be float32 (N, *features) with "
                                f"one target per row; got {x.dtype} {tuple(x.shape)}, "
                                f"{len(y)} targets")


def _array(value, key: str, name: str) -> np.ndarray | Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged lists and other objects numpy cannot hold
        raise DataError(f"{name}: {key} is not an array ({type(value).__name__}: {err})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name}: {key} must be numeric, got dtype {arr.dtype}")
    return arr


def _to_tensor(value: np.ndarray | Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def _check_finite(t: Tensor, key: str, name: str) -> None:
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bad.any():
            first = int(bad.reshape(len(t), -1).any(1).nonzero()[0, 0]) if t.dim() else 0
            raise DataError(f"{name}: {key} has {int(bad.sum())} NaN/inf values (first in row "
                            f"{first}){' after the cast to float32' if key[0] == 'x' else ''}")


def _is_integer(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex()


def from_arrays(x_train, y_train, x_test, y_test, name: str = "arrays",
                task: str | None = None, num_classes: int | None = None,
                source: str = "arrays") -> TensorData:
    """Check and wrap four arrays (numpy arrays, torch tensors, nested lists) as data.

    Args:
        x_train, y_train, x_test, y_test: inputs ``(N, *features)`` and targets ``(N,)``
            (class labels) or ``(N,)`` / ``(N, K)`` floats (regression).
        name: shown in reports and errors.
        task: "classification" or "regression"; default: integer targets classify.
        num_classes: classification only; default: the largest label + 1.

    Raises:
        DataError: one line naming the array and the problem.
    """
    arrays = {k: _array(v, k, name) for k, v in zip(NPZ_KEYS, (x_train, y_train, x_test, y_test))}
    t = {k: _to_tensor(v) for k, v in arrays.items()}
    if task is None:
        task = "classification" if _is_integer(t["y_train"]) else "regression"
    if task not in TASKS:
        raise DataError(f"{name}: unknown task {task!r}; known: {', '.join(TASKS)}")
    for split in ("train", "test"):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        if x.dim() < 2:
            raise DataError(f"{name}: x_{split} must be (N, *features), got shape {tuple(x.shape)}")
        if len(x) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        if y.dim() == 0 or len(y) != len(x):
            raise DataError(f"{name}: x_{split} has {len(x)} rows but y_{split} has "
                            f"{len(y) if y.dim() else 0} targets")
    if t["x_train"].shape[1:] != t["x_test"].shape[1:]:
        raise DataError(f"{name}: x_train rows {tuple(t['x_train'].shape[1:])} and x_test rows "
                        f"{tuple(t['x_test'].shape[1:])} differ in shape")
    note = ""
    if t["x_train"].dtype == torch.uint8:  # images: the lab's standardization
        scaled = t["x_train"].double() / 255
        mean, std = float(scaled.mean()), float(scaled.std(unbiased=False))
        if std == 0:
            raise DataError(f"{name}: every training input has the same value; cannot standardize")
        for k in ("x_train", "x_test"):
            t[k] = ((t[k].double() / 255 - mean) / std).float()
        note = f"uint8 inputs divided by 255 and standardized (mean {mean:.4f}, std {std:.4f})"
    for k in ("x_train", "x_test"):
        t[k] = t[k].float()
        _check_finite(t[k], k, name)
    if task == "classification":
        for k in ("y_train", "y_test"):
            y = t[k]
            if y.is_floating_point():
                _check_finite(y, k, name)
                if not torch.equal(y, y.round()):
                    raise DataError(f"{name}: {k} has non-integer labels for a classification "
                                    "(pass task='regression' for float targets)")
            if y.dim() != 1:
                raise DataError(f"{name}: {k} must be one label per row (N,), got shape "
                                f"{tuple(y.shape)}")
            t[k] = y.long()
        classes = num_classes if num_classes is not None else int(t["y_train"].max()) + 1
        for k in ("y_train", "y_test"):
            low, high = int(t[k].min()), int(t[k].max())
            if low < 0 or high >= classes:
                raise DataError(f"{name}: {k} labels must be in [0, {classes}) ("
                                + ("given num_classes" if num_classes is not None else
                                   "the classes of y_train") + f"), found {low}..{high}")
        if classes < 2:
            raise DataError(f"{name}: a classification needs at least 2 classes, found {classes}")
    else:
        for k in ("y_train", "y_test"):
            t[k] = t[k].float()
            _check_finite(t[k], k, name)
        if t["y_train"].shape[1:] != t["y_test"].shape[1:] or t["y_train"].dim() > 2:
            raise DataError(f"{name}: regression targets must be (N,) or (N, K) alike in both "
                            f"splits, got {tuple(t['y_train'].shape)} and "
                            f"{tuple(t['y_test'].shape)}")
        classes = 1 if t["y_train"].dim() == 1 else t["y_train"].shape[1]
    return TensorData(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"], classes,
                      source, note, task=task)


def load_npz(path: str | Path, task: str | None = None) -> TensorData:
    """Read ``x_train, y_train, x_test, y_test`` from an ``.npz`` file (no pickles) and check
    them (:func:`from_arrays`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: lacks {', '.join(missing)} (it has: "
                                f"{', '.join(npz.files) or 'nothing'}); an .npz for normlab "
                                f"holds {', '.join(NPZ_KEYS)}")
            arrays = [npz[k] for k in NPZ_KEYS]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    except ValueError as err:  # an object array, which would need a pickle
        raise DataError(f"{path}: {err}") from None
    return from_arrays(*arrays, name=path.stem, task=task, source=str(path))


class LoaderData:
    """Data streamed from a torch ``Dataset`` or ``DataLoader`` (one per split).

    Args:
        train, test: map-style datasets or data loaders yielding ``(input, target)``.
        task: "classification" or "regression"; default: from the first target's dtype.
        num_classes: for reports (chance accuracy); default: unknown (0 used for chance).
        name: shown in reports.
    """

    def __init__(self, train, test, task: str | None = None, num_classes: int | None = None,
                 name: str = "loader") -> None:
        self.train, self.test, self.name = train, test, name
        x, y = self._first(train, "train")
        self._first(test, "test")
        if task is None:
            task = "classification" if _is_integer(torch.as_tensor(y)) else "regression"
        if task not in TASKS:
            raise DataError(f"{name}: unknown task {task!r}; known: {', '.join(TASKS)}")
        self.task, self.num_classes = task, num_classes or 0
        self.in_shape = tuple(torch.as_tensor(x).shape)
        self.source = type(getattr(train, "dataset", train)).__name__
        self.note = ""

    def _first(self, source, split: str):
        dataset = getattr(source, "dataset", source)
        try:
            if isinstance(dataset, IterableDataset):
                x, y = next(iter(source))
                return torch.as_tensor(x)[0], torch.as_tensor(y)[0]
            if len(dataset) == 0:
                raise DataError(f"{self.name}: the {split} split is empty")
            sample = dataset[0]
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{self.name}: cannot read a {split} sample ({type(err).__name__}: "
                            f"{err})") from None
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
            raise DataError(f"{self.name}: a {split} sample must be (input, target), got "
                            f"{type(sample).__name__}")
        x = torch.as_tensor(sample[0])
        _check_finite(x.float().unsqueeze(0), f"x_{split}", self.name)
        return sample

    def __len__(self) -> int:
        return len(getattr(self.train, "dataset", self.train))

    def _loader(self, source, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
        if isinstance(source, DataLoader):
            if isinstance(source.dataset, IterableDataset):
                return source  # its batches are what they are
            kw = dict(num_workers=source.num_workers, collate_fn=source.collate_fn)
            source = source.dataset
        else:
            kw = {}
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(source, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                          generator=generator, **kw)

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                      ) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless shuffled batches (a new seeded permutation each epoch, remainder dropped)."""
        if world_size != 1:
            raise ValueError("streamed data (a torch Dataset/DataLoader) trains on one process")
        loader = self._loader(self.train, batch_size, True, seed)
        while True:
            empty = True
            for x, y in loader:
                empty = False
                x = torch.as_tensor(x).float()
                _check_finite(x, "x_train batch", self.name)
                yield x, torch.as_tensor(y)
            if empty:
                raise DataError(f"{self.name}: the training data gave no batch of {batch_size}")

    def test_batches(self, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._loader(self.test, chunk, False, 0):
            yield torch.as_tensor(x).float(), torch.as_tensor(y)

    def __repr__(self) -> str:
        return f"LoaderData({self.name!r}, task={self.task!r}, in_shape={self.in_shape})"


def check_targets(task: str, out: Tensor, y: Tensor) -> None:
    """One clear line when a model's output and a batch's targets do not fit the task."""
    if task == "regression":
        if not y.is_floating_point() or y.numel() != out.numel():
            raise DataError(f"regression: the model's output {tuple(out.shape)} does not match "
                            f"float targets {tuple(y.shape)} ({y.dtype})")
        if not torch.isfinite(y).all():
            raise DataError("regression: a batch of targets has NaN/inf values")
        return
    if out.dim() != 2 or y.dim() != 1 or len(y) != len(out) or not _is_integer(y):
        raise DataError(f"classification: the model's output {tuple(out.shape)} must be "
                        f"(N, classes) for integer labels (N,); got labels {tuple(y.shape)} "
                        f"({y.dtype})")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise DataError(f"classification: labels {int(y.min())}..{int(y.max())} do not fit "
                        f"the model's {out.shape[1]} outputs")


def task_of(data) -> str:
    return getattr(data, "task", "classification")


def train_stream(data, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(x, y)`` training batches of any data the trainer takes."""
    if hasattr(data, "train_batches"):
        return data.train_batches(batch_size, seed, rank, world_size)
    batches = Batches(len(data.x_train), batch_size, seed, rank, world_size)
    return ((data.x_train[idx], data.y_train[idx]) for idx in batches)


def test_stream(data, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The test split in ``chunk``-sized ``(x, y)`` batches."""
    if hasattr(data, "test_batches"):
        return data.test_batches(chunk)
    x, y = data.x_test, data.y_test
    return ((x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk))


def as_data(train, test=None, task: str | None = None, name: str | None = None):
    """What the trainer takes, from what a user has.

    Args:
        train: a lab :class:`Dataset`, an ``.npz`` path, an ``(x, y)`` pair of arrays or
            tensors, a torch ``Dataset`` or a ``DataLoader``.
        test: the test split in the same form (not for a Dataset or an ``.npz`` path).
        task: "classification" or "regression" (default: from the targets' dtype).
        name: shown in reports.
    """
    if isinstance(train, Dataset):
        return train
    if isinstance(train, (str, Path)):
        data = load_npz(train, task=task)
        return dataclasses.replace(data, name=name) if name else data
    if test is None:
        raise DataError("test data missing: pass test= in the same form as train")
    if isinstance(train, (tuple, list)) and len(train) == 2:
        if not (isinstance(test, (tuple, list)) and len(test) == 2):
            raise DataError("train is an (x, y) pair, so test must be one too")
        return from_arrays(train[0], train[1], test[0], test[1], name=name or "arrays",
                           task=task)
    if isinstance(train, (torch.utils.data.Dataset, DataLoader)):
        return LoaderData(train, test, task=task, name=name or "loader")
    raise DataError(f"unsupported data {type(train).__name__}: pass an (x, y) pair of arrays, a "
                    "torch Dataset, a DataLoader or an .npz path")

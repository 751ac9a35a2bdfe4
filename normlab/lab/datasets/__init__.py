"""The lab's datasets, one module per dataset, held in memory as tensors.

:mod:`.base` has what they share (:class:`Dataset`, :class:`PointCloudDataset`,
:func:`dataset_from_uint8`, :class:`Batches`, the ``DATASETS`` registry and
:func:`load_dataset`); :mod:`.idx` and :mod:`.download` read and fetch the official files.
Each dataset module registers its loader on import, and this package imports them all:

- :mod:`.mnist`: ``mnist`` and ``fashion_mnist`` (IDX files; MNIST's offline subset),
- :mod:`.cifar10`: ``cifar10`` (the official archive, read by a restricted unpickler),
- :mod:`.modelnet40`: ``modelnet40`` (PointNet's HDF5 point clouds),
- :mod:`.shapes3d`, :mod:`.synthetic`: generated data, labelled synthetic.

The loaders are reached through ``DATASETS`` / :func:`load_dataset` or their module
(``from normlab.lab.datasets.mnist import mnist``): the package attribute ``mnist`` is the
module, not the function.
"""

from . import cifar10, mnist, modelnet40, shapes3d, synthetic  # each registers its loader
from .base import (CACHE_DIR, DATASETS, Batches, Dataset, PointCloudDataset, dataset_from_uint8,
                   load_dataset)
from .idx import DataError, read_idx

# Made in memory from a seed: they read no files, so a data folder means nothing to them.
GENERATED = ("shapes3d", "synthetic")

__all__ = ["Batches", "CACHE_DIR", "DATASETS", "DataError", "Dataset", "GENERATED",
           "PointCloudDataset",
           "dataset_from_uint8", "load_dataset", "read_idx",
           "cifar10", "mnist", "modelnet40", "shapes3d", "synthetic"]

"""Input scalings of an image dataset (the lab's ``--input-scaling`` option).

normlab's loaders standardize pixels with the training split's scalar mean and std
(``x = (p / 255 - mean) / std``, see :mod:`normlab.lab.datasets`). The standardization-loss
paper (Collins, Ballé & Shlens 2019, arXiv:1903.00925) does not say how it scaled MNIST; the
TensorFlow input pipelines of its time fed ``p / 255``. The readings:

- ``standardize``: the loaders' default, zero mean and unit variance over training pixels.
- ``unit``: ``p / 255`` in [0, 1].
- ``signed``: ``2 p / 255 - 1`` in [-1, 1].

Each is an exact affine map of the standardized tensors, so the same dataset object (and
the same train/test split) serves every reading.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .datasets import Dataset

__all__ = ["INPUT_SCALINGS", "scale_inputs"]

INPUT_SCALINGS = ("standardize", "unit", "signed")


def scale_inputs(data: Dataset, scaling: str = "standardize") -> Dataset:
    """``data`` with its inputs re-expressed in ``scaling`` (a new Dataset; ``data`` itself
    for ``standardize``).

    Raises:
        ValueError: an unknown scaling.
    """
    if scaling not in INPUT_SCALINGS:
        raise ValueError(f"unknown input scaling {scaling!r}; known: {', '.join(INPUT_SCALINGS)}")
    if scaling == "standardize":
        return data
    mean, std = data.pixel_mean, data.pixel_std

    def rescale(x: Tensor) -> Tensor:
        unit = x * std + mean  # undo (p/255 - mean)/std
        return unit if scaling == "unit" else unit * 2 - 1

    return dataclasses.replace(data, x_train=rescale(data.x_train), x_test=rescale(data.x_test))

"""The lab's networks, one module per family, each built for a normalization method.

:mod:`.base` holds the ``MODELS`` registry and :func:`build_model`; each family module
registers its factories on import, and this package imports them all: :mod:`.paper`
(``cnn``, ``mlp``, ``mlp_sigmoid``), :mod:`.mobilenet`, :mod:`.pointnet` (``pointnet``,
``pointnet_scale_shift``, :class:`~.pointnet.ScaleShift`) and :mod:`.resnet` (``resnet20``).
"""

from . import mobilenet, paper, pointnet, resnet  # each registers its factories
from .base import MODELS, ModelFactory, build_model

__all__ = ["MODELS", "ModelFactory", "build_model", "mobilenet", "paper", "pointnet", "resnet"]

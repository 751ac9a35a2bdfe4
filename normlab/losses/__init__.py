"""Auxiliary losses that attach to a model through removable hooks."""

from .selection import ATTENTION, DEFAULT_TYPES, SQUEEZE_EXCITE, select_layers
from .standardization import REDUCTIONS, StandardizationLoss

__all__ = ["StandardizationLoss", "select_layers", "REDUCTIONS", "DEFAULT_TYPES",
           "SQUEEZE_EXCITE", "ATTENTION"]

"""Auxiliary losses that attach to a model through removable hooks."""

from .standardization import StandardizationLoss, select_layers

__all__ = ["StandardizationLoss", "select_layers"]

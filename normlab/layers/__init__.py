"""Normalization layers: thin nn.Module wrappers over :mod:`normlab.functional`."""

from .batch_norm import batch_norm

__all__ = ["batch_norm"]

"""Pure tensor functions, one family per file; the public ones are re-exported here."""

from .standardization import DEFAULT_EPS, channel_moments, reduction_dims, standardization_loss

__all__ = ["DEFAULT_EPS", "channel_moments", "reduction_dims", "standardization_loss"]

"""What every normlab normalization layer shares, so surgery can find and fold it."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["NormLayer"]


class NormLayer(nn.Module):
    """Marker base class of normlab's normalization layers.

    :func:`normlab.surgery.replace_norm` and :func:`normlab.surgery.remove_norm` treat every
    ``NormLayer`` (and torch's BatchNorm/InstanceNorm/GroupNorm/LayerNorm) as a normalization.
    A layer whose eval-mode output is a per-channel affine map of its input overrides
    :meth:`eval_affine`; :func:`normlab.surgery.fold_batch_norm` then folds it into the
    preceding convolution or linear layer.

    Attributes:
        num_features: channels (dim 1 of the input).
    """

    num_features: int

    def eval_affine(self) -> tuple[Tensor, Tensor] | None:
        """``(scale, shift)`` of shape ``(C,)`` with ``eval output = x * scale + shift`` per
        channel, or ``None`` when the eval-mode map is not per-channel affine."""
        return None

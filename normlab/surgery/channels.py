"""Run a channel-first normalization on channel-last rows: ``(N, *, C)`` as ``(M, C)``.

A ``LayerNorm(C)`` (or ``RMSNorm(C)``) normalizes the last dim of its input, whatever comes
before it: ``(N, C)`` features of an MLP, ``(N, T, C)`` tokens of a transformer (Dosovitskiy
et al. 2020, arXiv:2010.11929; Tolstikhin et al. 2021, arXiv:2105.01601), ``(N, H, W, C)``
maps of a channels-last CNN. normlab's layers take the channel on dim 1. Each position's
feature vector is a row of the layer's input, so :class:`ChannelsLast` flattens every dim
but the last into rows and runs the wrapped layer on the ``(M, C)`` matrix (a view, no copy
for contiguous inputs):

- batch-statistics methods (BN, L1/L-inf/Range BN, renorm, Kalman, mixture, decorrelated)
  pool their statistics over the batch and every position, as BN over ``(N, C, T)`` does;
- per-sample methods treat each position as a sample: ``layer_norm`` is the original
  per-token LayerNorm, ``group_norm`` normalizes each token's channel groups, and the
  methods whose statistics are over positions (``instance_norm``, FRN's mean square) take
  their documented ``(N, C)`` form, since a row has no positions.

Built by :func:`normlab.surgery.replace_norm` (for a 1-D ``normalized_shape``) and
:func:`normlab.surgery.insert_norm` (after a Linear on ``(N, *, C)`` inputs).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers.base import NormLayer

__all__ = ["ChannelsLast"]


class ChannelsLast(NormLayer):
    """``layer`` applied to the rows ``x.reshape(-1, C)`` of a channel-last input.

    Args:
        layer: a normalization built for ``(M, C)`` input (``method.norm(C, 0)``).
        num_features: C, the size of the last dim.
    """

    def __init__(self, layer: nn.Module, num_features: int) -> None:
        super().__init__()
        self.norm = layer
        self.num_features = num_features
        self.spatial_dims = 0

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.num_features:
            raise ValueError(f"ChannelsLast expects (N, *, {self.num_features}) input, "
                             f"got shape {tuple(x.shape)}")
        return self.norm(x.reshape(-1, self.num_features)).reshape(x.shape)

    def eval_affine(self):
        """The wrapped layer's eval map (it acts on the same channels)."""
        from .fold import eval_affine  # the one reader of torch's and normlab's eval maps
        affine = eval_affine(self.norm)
        return None if isinstance(affine, str) else affine

    def without_norm(self) -> nn.Module:
        inner = self.norm
        return inner.without_norm() if isinstance(inner, NormLayer) else nn.Identity()

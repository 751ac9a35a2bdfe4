"""Batch Normalization layers with the options the seed papers use.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", 2015, arXiv:1502.03167.
"""

from __future__ import annotations

from torch import nn

__all__ = ["batch_norm", "BATCH_NORMS"]

BATCH_NORMS: dict[int, type[nn.modules.batchnorm._BatchNorm]] = {
    0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d,
}


def batch_norm(
    num_features: int,
    spatial_dims: int,
    scale: bool = True,
    shift: bool = True,
    eps: float = 1e-5,
    momentum: float = 0.1,
) -> nn.modules.batchnorm._BatchNorm:
    """torch's BatchNorm for ``spatial_dims`` (0: (N,C), 1: (N,C,L), 2: NCHW, 3: NCDHW).

    ``scale=False`` keeps the weight at 1 and frozen (``requires_grad=False``): the layer stays
    a plain torch BatchNorm, so torch's kernels, ``fuse_conv_bn_eval`` and checkpoints all
    work, while only the shift is learned.
    """
    if spatial_dims not in BATCH_NORMS:
        raise ValueError(f"spatial_dims must be 0-3, got {spatial_dims}")
    layer = BATCH_NORMS[spatial_dims](num_features, eps=eps, momentum=momentum,
                                      affine=scale or shift)
    if layer.affine:
        layer.weight.requires_grad_(scale)
        layer.bias.requires_grad_(shift)
    return layer

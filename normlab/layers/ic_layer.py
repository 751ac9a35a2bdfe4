"""The Independent-Component (IC) layer: BatchNorm then Dropout, before a weight layer.

Chen, Chen, Zhang, Wang, Zhang & Zhou, "Rethinking the Usage of Batch Normalization and
Dropout in the Training of Deep Neural Networks", 2019, arXiv:1905.05928.

The paper argues that BatchNorm (which whitens, approximately, by standardizing) followed by
Dropout (which makes units more independent) turns a layer's *inputs* into nearly
independent components, and so places the pair directly before each weight layer, i.e.
after the activation: ``... -> Conv -> ReLU -> [BN -> Dropout] -> Conv -> ...``. The
``ic_layer`` method's block is therefore ``activation -> ICLayer``.

normlab's choices: dropout rate ``p = 0.05`` (the paper recommends small rates; large ones
hurt with BN); elementwise dropout on convolutional features too (each unit is a component);
BatchNorm with torch's defaults (``eps = 1e-5``, ``momentum = 0.1``, learned affine map).
In eval mode dropout is off and BN uses its running statistics, so the layer is then a
per-channel affine map (:meth:`ICLayer.eval_affine`) that could be folded into the *next*
weight layer (not the previous one: the activation lies between).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import RunningStatsNorm, check_channels, running_affine

__all__ = ["ICLayer"]


class ICLayer(RunningStatsNorm):
    r"""BatchNorm followed by Dropout(p), for any ``(N, C, *spatial)`` input.

    .. math::
        y = \mathrm{Dropout}_p\Big(\gamma_c \frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}}
        + \beta_c\Big)

    with batch statistics in training (updating running averages) and running statistics in
    eval, where dropout is the identity.

    Args:
        num_features: C.
        p: dropout probability, in ``[0, 1)``.
        eps, momentum: as in ``torch.nn.BatchNorm2d``.
        affine: learn gamma (init 1) and beta (init 0).

    Shape:
        ``(N, C, *spatial)`` in and out; zero spatial dims allowed.

    Example:
        >>> ICLayer(16)(torch.randn(4, 16, 5, 5)).shape
        torch.Size([4, 16, 5, 5])
    """

    def __init__(self, num_features: int, p: float = 0.05, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, device, dtype)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        self.p = p
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_channels(x, self.num_features, "ICLayer")
        # F.batch_norm takes any (N, C, *) shape, so one class serves MLPs and CNNs.
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return F.dropout(y, self.p, self.training)

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` of the eval-mode map (BN with running stats; no dropout)."""
        return running_affine(torch.rsqrt(self.running_var + self.eps), self.running_mean,
                              self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, p={self.p}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")

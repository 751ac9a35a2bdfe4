"""Group, Layer (:class:`GroupNorm1`) and Instance Normalization, channels-first constructors.

- Wu & He, "Group Normalization", 2018, arXiv:1803.08494.
- Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450.
- Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast
  Stylization", 2016, arXiv:1607.08022.

All three standardize each sample on its own (no batch statistics, no running averages, the
same computation in train and eval), then apply a per-channel affine map::

    y[n, c, ...] = gamma_c * (x[n, c, ...] - mu[n, g(c)]) / sqrt(var[n, g(c)] + eps) + beta_c

with ``mu`` and the biased ``var`` taken over the channels of group ``g(c)`` and all spatial
positions. Layer norm is one group (Wu & He's G = 1), instance norm is one group per channel
(G = C). Each wraps ``torch.nn.functional.group_norm``, which accepts ``(N, C)`` and
``(N, C, *spatial)`` inputs alike, behind the ``(num_features, ...)`` constructor every
normlab layer shares (torch's ``nn.GroupNorm`` takes the groups first, ``nn.LayerNorm`` a
normalized shape).

Choices the papers leave to us:

- **Default groups** (:func:`default_num_groups`): Wu & He's default G = 32, lowered to the
  largest divisor of C that leaves at least 4 channels per group (groups of 1-2 channels are
  instance norm in all but name on the small widths of normlab's models: C = 32, 16, 8 give
  8, 4, 2 groups). ``(N, C)`` inputs have no spatial extent, so a group is only its channels:
  there groups keep at least 16 channels (C = 100 gives 5 groups of 20).
- **Layer norm's affine map** is per channel (a gain and bias per hidden unit, as in Ba et
  al., which for images is per channel, the GN convention).
- **Instance norm of ``(N, C)`` inputs**: each channel holds one element, whose standardized
  value is always 0, so :class:`InstanceNorm` raises a ``ValueError`` on inputs with one
  element per channel. The ``instance_norm`` method falls back to layer norm for
  ``(N, C)`` features: the sample's one feature map is then the whole vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_count, check_eps
from .base import NormLayer, check_channels, init_affine, reset_affine

__all__ = ["GroupNorm", "GroupNorm1", "InstanceNorm", "default_num_groups"]

MAX_GROUPS = 32


def default_num_groups(num_channels: int, spatial_dims: int = 2) -> int:
    """Wu & He's G = 32, lowered so each group keeps enough elements (see module docstring).

    Args:
        num_channels: C.
        spatial_dims: 0 for ``(N, C)`` inputs (groups of >= 16 channels), otherwise >= 4.

    Returns:
        The largest divisor ``G <= 32`` of C with ``C / G >=`` the minimum group size, or 1.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive, got {num_channels}")
    min_size = 16 if spatial_dims == 0 else 4
    for groups in range(min(MAX_GROUPS, num_channels), 0, -1):
        if num_channels % groups == 0 and num_channels // groups >= min_size:
            return groups
    return 1


class _GroupStandardize(NormLayer):
    """Shared body: per-sample standardization over groups, then a per-channel affine map."""

    def __init__(self, num_features: int, num_groups: int, eps: float, affine: bool,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        check_count(num_features, "num_features")
        if not isinstance(num_groups, int) or num_groups < 1 or num_features % num_groups:
            raise ValueError(
                f"num_groups={num_groups!r} must be a positive int dividing "
                f"num_features={num_features}"
            )
        check_eps(eps)
        self.num_features = num_features
        self.num_groups = num_groups
        self.eps = eps
        self.affine = affine
        init_affine(self, num_features, affine, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def _check(self, x: Tensor) -> None:
        check_channels(x, self.num_features, type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, " \
               f"affine={self.affine}"


class GroupNorm(_GroupStandardize):
    r"""Group Normalization (Wu & He 2018): standardize each sample over groups of channels.

    .. math::
        y = \gamma_c \frac{x - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}} + \beta_c

    Args:
        num_features: C.
        num_groups: G, dividing C; ``None`` picks :func:`default_num_groups` for spatial
            inputs (use ``default_num_groups(C, 0)`` for ``(N, C)`` inputs).
        eps: added to the variance.
        affine: learn the per-channel gamma (init 1) and beta (init 0).

    Shape:
        ``(N, C, *spatial)`` in and out, zero or more spatial dims.

    Example:
        >>> GroupNorm(32)(torch.randn(2, 32, 7, 7)).shape
        torch.Size([2, 32, 7, 7])
    """

    def __init__(self, num_features: int, num_groups: int | None = None, eps: float = 1e-5,
                 affine: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if num_groups is None:
            num_groups = default_num_groups(num_features)
        super().__init__(num_features, num_groups, eps, affine, device, dtype)


class GroupNorm1(_GroupStandardize):
    r"""Layer Normalization (Ba et al. 2016): standardize each sample over C and all positions.

    .. math::
        y = \gamma_c \frac{x - \mu_n}{\sqrt{\sigma^2_n + \epsilon}} + \beta_c

    Group norm with one group; the affine map is per channel. Named for what it is (timm's
    ``GroupNorm1``, the same computation), not ``LayerNorm``: torch's ``nn.LayerNorm`` takes a
    normalized shape of trailing dims with an elementwise affine, and timm's ``LayerNorm2d``
    normalizes each position over C only.

    Args:
        num_features: C.
        eps: added to the variance.
        affine: learn the per-channel gamma (init 1) and beta (init 0).

    Shape:
        ``(N, C, *spatial)`` in and out, zero or more spatial dims.

    Example:
        >>> GroupNorm1(100)(torch.randn(4, 100)).shape
        torch.Size([4, 100])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, 1, eps, affine, device, dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class InstanceNorm(_GroupStandardize):
    r"""Instance Normalization (Ulyanov et al. 2016): standardize each sample and channel
    over its spatial positions.

    .. math::
        y = \gamma_c \frac{x - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}} + \beta_c

    Group norm with C groups. Statistics are always those of the input (torch's
    ``InstanceNorm`` default; there are no running averages).

    Args:
        num_features: C.
        eps: added to the variance.
        affine: learn the per-channel gamma (init 1) and beta (init 0).

    Shape:
        ``(N, C, *spatial)`` with more than one spatial position.

    Raises:
        ValueError: on inputs with one element per channel (``(N, C)``, ``(N, C, 1, 1)``),
            whose instance-normalized value would be identically 0.

    Example:
        >>> InstanceNorm(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, num_features, eps, affine, device, dtype)

    def _check(self, x: Tensor) -> None:
        super()._check(x)
        if math.prod(x.shape[2:]) < 2:
            raise ValueError(
                f"InstanceNorm needs more than one spatial position per channel, got an input "
                f"of shape {tuple(x.shape)}: a single element standardizes to 0. Use GroupNorm1 "
                f"for (N, C) features (the instance_norm method does so)."
            )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"

"""The Filter Response Normalization layer (FRN followed by its TLU).

Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch Dependence in the
Training of Deep Neural Networks", 2020, arXiv:1911.09737.

The paper's FRN layer is a normalization *and* an activation: the Thresholded Linear Unit
``max(y, tau)`` replaces the ReLU that would follow (section 3.1), so the ``frn`` method's
block is this layer alone and the model's own activation is dropped.

Epsilon (section 3.1): ``eps = 1e-6`` by default. For ``(N, C)`` inputs (the paper's "1x1
activation maps") ``nu2 = x^2`` and ``x / sqrt(x^2 + eps)`` is nearly ``sign(x)`` unless eps
is of the order of ``x^2``; the paper makes eps learnable there. With
``learnable_eps=True`` the layer uses ``eps + |eps_learned_c|``: the fixed floor keeps the
denominator away from 0 and the absolute value keeps it positive whatever sign the optimizer
gives the parameter. normlab's choices: the learned part is per channel and starts at
``1e-4``.

Speed: float32/float64 inputs on CPU/CUDA outside autocast run the fused autograd Function
:func:`normlab.functional.frn.filter_response_norm_tlu` (analytic backward, few full-size
passes); anything else runs the composite reference path. On an exact tie ``z == tau`` the
fused backward gives the gradient to ``tau`` (ReLU's convention); the composite path splits
it in halves, as ``torch.maximum`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_count, check_eps
from ..functional.frn import filter_response_norm_tlu
from .base import NormLayer, channel_parameters, check_channels, reset_affine

__all__ = ["FilterResponseNorm"]


class FilterResponseNorm(NormLayer):
    r"""FRN + TLU: per-sample, per-channel mean-square normalization, affine map, threshold.

    .. math::
        \nu^2_{n,c} = \tfrac{1}{HW}\textstyle\sum_{h,w} x_{n,c,h,w}^2, \qquad
        z = \max\Big(\gamma_c \frac{x}{\sqrt{\nu^2_{n,c} + \epsilon}} + \beta_c,\ \tau_c\Big)

    Args:
        num_features: C.
        eps: fixed positive epsilon (the paper's 1e-6).
        learnable_eps: add a learned per-channel ``|eps_learned|`` to ``eps`` (the paper's
            advice for ``(N, C)`` inputs; the ``frn`` method turns it on there).
        learned_eps_init: initial value of ``eps_learned``.
        tlu: end with the TLU ``max(y, tau)``; ``False`` gives FRN alone.

    Shape:
        ``(N, C, *spatial)`` in and out; zero spatial dims allowed.

    Example:
        >>> FilterResponseNorm(16)(torch.randn(2, 16, 7, 7)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False,
                 learned_eps_init: float = 1e-4, tlu: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_count(num_features, "num_features")
        check_eps(eps)
        self.num_features = num_features
        self.eps = eps
        self.learnable_eps = learnable_eps
        self.learned_eps_init = learned_eps_init
        self.use_tlu = tlu
        channel_parameters(self, num_features, {"device": device, "dtype": dtype},
                           weight=True, bias=True, tau=tlu, eps_learned=learnable_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)
        if self.tau is not None:
            nn.init.zeros_(self.tau)
        if self.eps_learned is not None:
            nn.init.constant_(self.eps_learned, self.learned_eps_init)

    def effective_eps(self) -> float | Tensor:
        """The epsilon in use: ``eps``, or ``eps + |eps_learned|`` (shape ``(C,)``)."""
        if self.eps_learned is None:
            return self.eps
        return self.eps + self.eps_learned.abs()

    def forward(self, x: Tensor) -> Tensor:
        check_channels(x, self.num_features, "FilterResponseNorm")
        # Fused autograd Function when dtype/device/autocast allow (see
        # filter_response_norm_tlu); otherwise the composite reference path.
        return filter_response_norm_tlu(x, self.weight, self.bias, self.tau,
                                        self.effective_eps())

    def without_norm(self) -> nn.Module:
        """``nn.ReLU()`` when the layer ends with its TLU, else ``nn.Identity()``.

        The TLU ``max(y, tau)`` is this layer's nonlinearity (the ``frn`` method drops the
        model's own activation), and with ``tau = 0``, its initial value, it is
        ``max(y, 0) = ReLU``: taking the normalization out (:func:`normlab.surgery.remove_norm`)
        leaves a ReLU. The learned ``tau`` is dropped with the normalization (it thresholds
        normalized responses, whose scale the bare network does not share). A model built
        with another activation (``mlp_sigmoid``) had it replaced by the TLU, and the layer
        does not remember it: the bare network then has ReLU there.
        """
        return nn.ReLU() if self.tau is not None else nn.Identity()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}, "
                f"tlu={self.use_tlu}")

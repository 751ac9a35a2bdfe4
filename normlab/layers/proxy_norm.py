"""Proxy-normalized activation: affine map, activation, proxy normalization, affine map.

Labatie, Masters, Eaton-Rosen & Luschi, "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence", 2021, arXiv:2106.03743.

This module is the part of the paper's block that follows a batch-independent
normalization (the ``proxy_norm`` method puts a :class:`~normlab.layers.group_norms.GroupNorm1`
or :class:`~normlab.layers.group_norms.GroupNorm` without affine map in front of it)::

    y     = phi(gamma_c * z + beta_c)
    y_hat = (y - E[phi(gamma_c Z + beta_c)]) / sqrt(Var[phi(gamma_c Z + beta_c)] + eps)
    out   = gamma'_c * y_hat + beta'_c                         Z ~ N(0, 1)

The proxy moments are closed forms for ReLU, leaky ReLU and hardtanh (ReLU6) and a fixed
Gaussian-weighted trapezoid rule otherwise (see :mod:`normlab.functional.proxy_norm`), are
functions of ``gamma``, ``beta`` only and differentiable in them, and involve no other sample. normlab fixes
the proxy at ``N(0, 1)`` (what a standardized pre-activation would be) and ends with a second
per-channel affine map ``(gamma', beta')`` so the next layer sees a learnable scale and
shift, as it would after BatchNorm's affine map.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_count, check_eps
from ..functional.proxy_norm import DEFAULT_NUM_NODES, gaussian_grid, proxy_moments, proxy_norm
from .base import NormLayer, channel_parameters, check_channels, reset_affine

__all__ = ["ProxyNormActivation"]


class ProxyNormActivation(NormLayer):
    r"""Affine map, activation and proxy normalization of the post-activation.

    .. math::
        \text{out} = \gamma'_c\,\frac{\phi(\gamma_c z + \beta_c) - \mu_c(\gamma,\beta)}
        {\sqrt{\sigma^2_c(\gamma,\beta) + \epsilon}} + \beta'_c

    where :math:`\mu_c, \sigma^2_c` are the mean and variance of
    :math:`\phi(\gamma_c Z + \beta_c)`, :math:`Z \sim N(0, 1)`.

    Args:
        num_features: C.
        activation: the elementwise nonlinearity (an ``nn.Module``, e.g. ``nn.ReLU()``).
        eps: added to the proxy variance.
        num_nodes: nodes of the quadrature rule for the proxy moments (activations without a
            closed form).
        out_affine: learn the second affine map ``(gamma', beta')`` (init 1, 0).

    Shape:
        ``(N, C, *spatial)`` in and out; zero spatial dims allowed.

    Example:
        >>> ProxyNormActivation(8, nn.ReLU())(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    # It completes the block begun by the GN/LN (without affine map) in front of it.
    follows_norm = True

    def __init__(self, num_features: int, activation: nn.Module, eps: float = 1e-5,
                 num_nodes: int = DEFAULT_NUM_NODES, out_affine: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_count(num_features, "num_features")
        if not isinstance(activation, nn.Module):
            raise TypeError(f"activation must be an nn.Module, got {type(activation).__name__}")
        check_eps(eps, zero_ok=True)
        self.num_features = num_features
        self.activation = activation
        self.eps = eps
        self.num_nodes = num_nodes
        self.out_affine = out_affine
        channel_parameters(self, num_features, {"device": device, "dtype": dtype},
                           weight=True, bias=True, out_weight=out_affine, out_bias=out_affine)
        nodes, weights = gaussian_grid(num_nodes, dtype=dtype, device=device)
        # Derived from num_nodes, so not saved: checkpoints stay small and rule-independent.
        self.register_buffer("nodes", nodes, persistent=False)
        self.register_buffer("node_weights", weights, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)
        if self.out_affine:
            nn.init.ones_(self.out_weight)
            nn.init.zeros_(self.out_bias)

    def proxy_moments(self) -> tuple[Tensor, Tensor]:
        """Proxy mean and variance per channel, each of shape ``(C,)``."""
        return proxy_moments(self.activation, self.weight, self.bias, self.nodes,
                             self.node_weights)

    def forward(self, x: Tensor) -> Tensor:
        check_channels(x, self.num_features, "ProxyNormActivation")
        y = proxy_norm(x, self.activation, self.weight, self.bias, self.nodes,
                       self.node_weights, self.eps)
        if self.out_affine:
            view = [1, -1] + [1] * (x.dim() - 2)
            y = y * self.out_weight.view(view) + self.out_bias.view(view)
        return y

    def without_norm(self) -> nn.Module:
        """The activation ``phi``: what stays when the (proxy) normalization is taken out.

        ``follows_norm`` is ``True``: :func:`normlab.surgery.replace_norm` replaces this layer
        by ``phi`` alone, since the GN/LN in front of it is replaced by the new normalization.
        """
        return self.activation

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, num_nodes={self.num_nodes}, "
                f"out_affine={self.out_affine}")

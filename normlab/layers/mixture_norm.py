"""Mixture Normalization: batch normalization under a per-channel Gaussian mixture.

Kalayeh & Shah, "Training Faster by Separating Modes of Variation in Batch-normalized
Models", 2019 (IEEE TPAMI), arXiv:1806.02892.

Each channel's values over the batch (and spatial positions) are modelled by a ``K``-component
1-D Gaussian mixture ``sum_k lambda_k N(mu_k, sigma_k^2)``, fitted to every training batch
by a few EM iterations. Each value is then normalized by every component and the results are
mixed by the value's posterior responsibilities ``tau_k(x)`` (the paper's "mixture normalizing
transform", derived from the Fisher vector of a GMM with respect to the means)::

    x_hat = sum_k tau_k(x) / sqrt(lambda_k) * (x - mu_k) / sqrt(sigma_k^2 + eps)
    y     = weight * x_hat + bias

With ``K = 1`` (``tau = lambda = 1``) this is batch normalization.

Choices the paper leaves to the implementation (documented and tested here):

- Per-channel 1-D mixtures (diagonal model), fitted on the detached batch.
- Deterministic initialisation: centres spread evenly over ``mean +- std`` (``mean + std *
  linspace(-1, 1, K)``), one hard nearest-centre assignment (a k-means step) giving each
  component's weight, mean and variance, then ``em_iterations`` EM steps. Components are
  then sorted by mean so that their running averages track the same mode from batch to
  batch.
- The final statistics ``lambda_k, mu_k, sigma_k^2`` are one more M-step with the final
  responsibilities held fixed: differentiable in ``x`` exactly as BN's batch statistics are,
  while ``tau`` itself is treated as a constant soft assignment in the backward pass.
- ``eps`` is added to every component variance (in the responsibilities and in the
  normalization) so that a collapsed component stays finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_count
from .base import ChannelMatrixNorm, update_running_

__all__ = ["MixtureNorm", "gmm_fit_1d", "gmm_responsibilities", "mixture_normalize"]


def gmm_responsibilities(xm: Tensor, weights: Tensor, means: Tensor, variances: Tensor,
                         eps: float) -> Tensor:
    """Posterior ``tau_k(x)`` of each component for every value.

    Shape:
        xm: ``(C, M)``; weights, means, variances: ``(C, K)``; returns ``(C, K, M)``.
    """
    var = variances[:, :, None] + eps
    log_p = (weights[:, :, None].clamp_min(1e-30).log() - 0.5 * torch.log(2 * math.pi * var)
             - (xm[:, None, :] - means[:, :, None]) ** 2 / (2 * var))
    return torch.softmax(log_p, dim=1)


def _m_step(xm: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and (biased) variances from responsibilities."""
    n_k = tau.sum(dim=2).clamp_min(1e-12)
    means = (tau * xm[:, None, :]).sum(dim=2) / n_k
    variances = (tau * (xm[:, None, :] - means[:, :, None]) ** 2).sum(dim=2) / n_k
    return n_k / xm.shape[1], means, variances


@torch.no_grad()
def gmm_fit_1d(xm: Tensor, components: int, em_iterations: int,
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fit a ``components``-Gaussian mixture to each row of ``xm`` by EM (no gradient).

    Initialisation: centres ``mean + std * linspace(-1, 1, K)``; every value is assigned to
    its nearest centre and each component starts from its cluster's fraction, mean and
    variance (a centre with no values keeps its place, the row variance and weight 0). Then
    ``em_iterations`` EM steps. Components are returned sorted by mean.

    Shape:
        xm: ``(C, M)``; returns weights, means, variances, each ``(C, K)``.
    """
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if em_iterations < 0:
        raise ValueError(f"em_iterations must be >= 0, got {em_iterations}")
    c = xm.shape[0]
    mean = xm.mean(dim=1, keepdim=True)
    var = ((xm - mean) ** 2).mean(dim=1, keepdim=True)
    spread = torch.linspace(-1.0, 1.0, components, dtype=xm.dtype, device=xm.device)
    if components == 1:
        spread = spread.zero_()
    centres = mean + var.sqrt() * spread
    # One hard (k-means) assignment to the nearest centre: EM from equal broad components
    # needs ~8 iterations to separate unequal modes, from this start 2-3 suffice.
    nearest = (xm[:, None, :] - centres[:, :, None]).abs().argmin(dim=1, keepdim=True)
    hard = torch.zeros(c, components, xm.shape[1], dtype=xm.dtype, device=xm.device)
    hard.scatter_(1, nearest, 1.0)
    weights, means, variances = _m_step(xm, hard)
    empty = hard.sum(dim=2) == 0  # a centre nobody is nearest to keeps its place
    means = torch.where(empty, centres, means)
    variances = torch.where(empty, var.expand_as(variances), variances)
    for _ in range(em_iterations):
        tau = gmm_responsibilities(xm, weights, means, variances, eps)
        weights, means, variances = _m_step(xm, tau)
    order = means.argsort(dim=1)
    return weights.gather(1, order), means.gather(1, order), variances.gather(1, order)


def mixture_normalize(xm: Tensor, tau: Tensor, weights: Tensor, means: Tensor,
                      variances: Tensor, eps: float) -> Tensor:
    """``sum_k tau_k / sqrt(lambda_k) * (x - mu_k) / sqrt(sigma_k^2 + eps)``.

    Shape:
        xm: ``(C, M)``; tau: ``(C, K, M)``; weights, means, variances: ``(C, K)``;
        returns ``(C, M)``.
    """
    scale = tau / (weights.clamp_min(1e-12).sqrt() * (variances + eps).sqrt())[:, :, None]
    return (scale * (xm[:, None, :] - means[:, :, None])).sum(dim=1)


class MixtureNorm(ChannelMatrixNorm):
    """Mixture Normalization (see the module docstring for the formula and choices).

    Training fits the mixture to the batch and normalizes with it; it also updates the
    running component parameters by exponential moving averages with ``momentum``
    (``running = (1 - momentum) * running + momentum * batch``), the variances with Bessel's
    correction ``n_k / (n_k - 1)`` for the component's effective count ``n_k = M lambda_k``
    (as torch's BatchNorm does for ``K = 1``).

    Eval mode computes each value's responsibilities under the running mixture and applies
    the same transform with the running ``lambda_k, mu_k, sigma_k^2``: a fixed per-value map,
    independent of the rest of the batch. Before any training the running mixture has equal
    weights, unit variances and means ``linspace(-1, 1, K)`` (mean 0 for ``K = 1``).

    Args:
        num_features: ``C``.
        eps: added to every component variance.
        momentum: of the running averages.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0).
        components: ``K``, default 2 (the paper's most common setting).
        em_iterations: EM steps per training batch after the deterministic initialisation;
            default 3.

    Shape:
        Input ``(N, C, *)``; output alike.

    Example:
        >>> layer = MixtureNorm(16, components=2)
        >>> y = layer(torch.randn(8, 16, 7, 7))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, components: int = 2, em_iterations: int = 3,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, device, dtype)
        check_count(components, "components")
        check_count(em_iterations, "em_iterations", minimum=0)
        factory = {"device": device, "dtype": dtype}
        self.components = components
        self.em_iterations = em_iterations
        shape = (num_features, components)
        self.register_buffer("running_weights", torch.empty(shape, **factory))
        self.register_buffer("running_means", torch.empty(shape, **factory))
        self.register_buffer("running_vars", torch.empty(shape, **factory))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        k = self.components
        self.running_weights.fill_(1.0 / k)
        self.running_means.copy_(torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1))
        self.running_vars.fill_(1.0)

    def _normalize(self, xm: Tensor) -> Tensor:
        """Mixture-normalized ``(C, M)`` channel matrix, in ``xm``'s dtype."""
        dtype = xm.dtype
        if self.training:
            m = xm.shape[1]
            fit = gmm_fit_1d(xm.detach(), self.components, self.em_iterations, self.eps)
            tau = gmm_responsibilities(xm.detach(), *fit, self.eps)
            weights, means, variances = _m_step(xm, tau)
            with torch.no_grad():
                n_k = weights.detach() * m
                bessel = torch.where(n_k > 1, n_k / (n_k - 1).clamp_min(1e-12),
                                     torch.ones_like(n_k))
                update_running_(self.running_weights, weights, self.momentum)
                update_running_(self.running_means, means, self.momentum)
                update_running_(self.running_vars, variances.detach() * bessel, self.momentum)
        else:
            weights, means, variances = (t.to(dtype) for t in (
                self.running_weights, self.running_means, self.running_vars))
            tau = gmm_responsibilities(xm, weights, means, variances, self.eps)
        return mixture_normalize(xm, tau, weights, means, variances, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, components={self.components}, "
            f"em_iterations={self.em_iterations}"
        )

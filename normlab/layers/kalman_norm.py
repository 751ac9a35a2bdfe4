"""Batch Kalman Normalization: batch statistics fused with those predicted from the layer below.

Wang, Peng, Luo, Wang & Lin, "Batch Kalman Normalization: Towards Training Deep Neural
Networks with Micro-Batches", 2018, arXiv:1802.03133.

Layer ``k`` observes its batch statistics ``(mu_hat_k, S_k)`` and predicts its statistics
from the posterior statistics of the previous normalization layer ``(mu_{k-1}, Sigma_{k-1})``
through a transition ``A_k`` (prediction step), then fuses both with gain ``p`` (update
step; diagonal, i.e. per-channel, statistics)::

    mu_pred  = A_k mu_{k-1} + b_k
    var_pred = (A_k o A_k) Sigma_{k-1} + r_k                 (o: elementwise product)
    mu_k     = p mu_hat_k + (1 - p) mu_pred
    Sigma_k  = p S_k + (1 - p) var_pred + p (1 - p) (mu_hat_k - mu_pred)^2
    y        = weight * (x - mu_k) / sqrt(Sigma_k + eps) + bias

``Sigma_k`` is the variance of the two-component mixture ``p N(mu_hat, S) + (1-p) N(mu_pred,
var_pred)``, the paper's update (and its authors' released code). ``(mu_k, Sigma_k)`` become
the posterior handed to the next layer. The first layer of a chain has no predecessor and is
plain batch normalization; ``p = 1`` is plain batch normalization everywhere.

The transition is learned (a choice; documented because the paper's released code instead
pushes a Gaussian proxy of the previous statistics through the network's own convolution,
which a normalization block cannot reach): ``A_k`` is a ``(C_k, C_{k-1})`` matrix, ``b_k``
the transition bias and ``r_k = exp(log_noise_var)`` the transition noise variance (the
paper's ``u_k`` and its covariance, kept diagonal). They start at ``A = 0, b = 0, r = 1``: the
prediction is a standard normal prior (the scale a He-initialised pre-activation has) and the
transition is learned from the task loss. ``var_pred`` is the diagonal of
``A Sigma A^T + R`` for independent channels. Gradients flow through the previous layer's
posterior, as in the paper's computation graph.

Fusion is skipped when the prediction is far less certain than the batch: when the
predicted variance is on average at least ``skip_ratio`` (100) times the batch variance,
``mean_c(var_pred / (S + eps)) >= skip_ratio``, the layer normalizes with its batch
statistics alone, as its authors' released code does with the same threshold (a transition
that has not learned the scale yet would otherwise inflate ``Sigma_k`` and shrink the
output towards 0). ``skip_ratio=None`` always fuses.

The gain ``p`` (weight of the current batch) defaults to 0.9: mostly the batch, one tenth the
prediction. The authors' CIFAR micro-batch code weights the prediction by 0.9 instead, with a
transition tied to the true weights; with a learned transition we keep the batch dominant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ChannelMatrixNorm, running_affine, update_running_

__all__ = ["KalmanNorm", "kalman_predict", "kalman_fuse"]


def kalman_predict(prev_mean: Tensor, prev_var: Tensor, transition: Tensor,
                   transition_bias: Tensor, noise_var: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction step: ``(A mu + b, (A o A) var + r)``.

    Shape:
        prev_mean, prev_var: ``(C_prev,)``; transition: ``(C, C_prev)``;
        transition_bias, noise_var: ``(C,)``; returns two ``(C,)`` tensors.
    """
    return transition @ prev_mean + transition_bias, (transition ** 2) @ prev_var + noise_var


def kalman_fuse(batch_mean: Tensor, batch_var: Tensor, pred_mean: Tensor, pred_var: Tensor,
                gain: float) -> tuple[Tensor, Tensor]:
    """Update step: the mean and variance of ``p N(batch) + (1 - p) N(pred)``.

    Formula::

        mu    = p mu_hat + (1 - p) mu_pred
        Sigma = p S + (1 - p) var_pred + p (1 - p) (mu_hat - mu_pred)^2
    """
    diff = batch_mean - pred_mean
    mean = gain * batch_mean + (1.0 - gain) * pred_mean
    var = gain * batch_var + (1.0 - gain) * pred_var + gain * (1.0 - gain) * diff * diff
    return mean, var


class KalmanNorm(ChannelMatrixNorm):
    """One layer of Batch Kalman Normalization (see the module docstring for the formula).

    A layer built with ``prev_features`` owns a transition from a previous layer with that
    many channels and must be :meth:`link`-ed to it; in training it reads the previous
    layer's posterior (``prev.last_mean``, ``prev.last_var``), which that layer sets in the
    same forward pass, earlier. Each posterior is read at most once: a layer whose
    predecessor did not run since the last read raises ``RuntimeError`` rather than use stale
    statistics; a layer whose predecessor has never run (the layer used on its own) has no
    prior and uses its batch statistics alone, like a chain's first layer. A layer built
    without ``prev_features`` starts a chain.

    Running statistics: ``running_mean`` and ``running_var`` are exponential moving averages
    (``momentum``) of the fused ``mu_k`` and of ``Sigma_k`` computed with the unbiased batch
    variance (``torch.nn.BatchNorm`` convention, so ``gain = 1`` matches it). Eval mode
    normalizes with them alone (no fusion: they already are the long-run estimate) and
    publishes them as ``last_mean``/``last_var``; the eval map is per-channel affine
    (:meth:`eval_affine`), so it folds into the preceding weight layer.

    Args:
        num_features: ``C``.
        eps: added to the fused variance.
        momentum: of the running averages.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0).
        gain: ``p`` in ``[0, 1]``, the weight of the current batch's statistics.
        prev_features: channels of the previous Kalman layer, ``None`` for a chain's first.
        skip_ratio: fuse only while ``mean(var_pred / (S + eps)) < skip_ratio`` (see the module
            docstring); ``None`` always fuses.

    Shape:
        Input ``(N, C, *)``; output alike.

    Example:
        >>> first, second = KalmanNorm(8), KalmanNorm(4, prev_features=8)
        >>> second.link(first)
        >>> h = first(torch.randn(16, 8))
        >>> y = second(torch.randn(16, 4))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, gain: float = 0.9, prev_features: int | None = None,
                 skip_ratio: float | None = 100.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, device, dtype)
        if prev_features is not None and (not isinstance(prev_features, int)
                                          or prev_features < 1):
            raise ValueError(f"prev_features must be a positive int or None, got "
                             f"{prev_features!r}")
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be in [0, 1], got {gain}")
        if skip_ratio is not None and not skip_ratio > 0:
            raise ValueError(f"skip_ratio must be > 0 or None, got {skip_ratio}")
        self.skip_ratio = skip_ratio
        factory = {"device": device, "dtype": dtype}
        self.gain = gain
        self.prev_features = prev_features
        if prev_features is not None:
            self.transition = nn.Parameter(torch.empty(num_features, prev_features, **factory))
            self.transition_bias = nn.Parameter(torch.empty(num_features, **factory))
            self.log_noise_var = nn.Parameter(torch.empty(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        # The predecessor sits in a list so that nn.Module does not register it as a child
        # (it belongs to the model already; as a child it would be saved twice).
        self._prev: list[KalmanNorm] = []
        self.last_mean: Tensor | None = None
        self.last_var: Tensor | None = None
        self._fresh = False
        self.reset_parameters()

    @property
    def prev(self) -> KalmanNorm | None:
        """The previous layer of the chain, or ``None``."""
        return self._prev[0] if self._prev else None

    def link(self, prev: KalmanNorm | None) -> None:
        """Set the previous layer (``None`` only for a layer without ``prev_features``)."""
        if prev is None:
            if self.prev_features is not None:
                raise ValueError("a layer with prev_features needs a previous layer to link")
            self._prev = []
            return
        if not isinstance(prev, KalmanNorm):
            raise TypeError(f"prev must be a KalmanNorm, got {type(prev).__name__}")
        if prev.num_features != self.prev_features:
            raise ValueError(f"this layer's transition expects {self.prev_features} previous "
                             f"channels, the given layer has {prev.num_features}")
        self._prev = [prev]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.prev_features is not None:
            nn.init.zeros_(self.transition)
            nn.init.zeros_(self.transition_bias)
            nn.init.zeros_(self.log_noise_var)

    def _prior(self, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        prev = self.prev
        if prev is None:
            raise RuntimeError("KalmanNorm built with prev_features is not linked; call "
                               "link(previous_layer)")
        if prev.last_mean is None or prev.last_var is None:
            return None  # the predecessor never ran (a layer used on its own): no prior
        if not prev._fresh:
            raise RuntimeError("the previous KalmanNorm layer did not run since its "
                               "statistics were last read: layers of a chain must run in "
                               "order in one forward pass")
        prev._fresh = False
        return kalman_predict(prev.last_mean.to(dtype), prev.last_var.to(dtype),
                              self.transition.to(dtype), self.transition_bias.to(dtype),
                              self.log_noise_var.to(dtype).exp())

    def _normalize(self, xm: Tensor) -> Tensor:
        """Normalized ``(C, M)`` channel matrix, in ``xm``'s dtype."""
        dtype = xm.dtype
        if self.training:
            m = xm.shape[1]
            batch_mean = xm.mean(dim=1)
            dev = xm - batch_mean[:, None]
            batch_var = (dev * dev).mean(dim=1)
            prior = None if self.prev_features is None else self._prior(dtype)
            if prior is not None and self._prediction_too_uncertain(prior[1], batch_var):
                prior = None
            if prior is None:
                mean, var = batch_mean, batch_var
                unbiased = batch_var.detach() * (m / (m - 1))
            else:
                pred_mean, pred_var = prior
                mean, var = kalman_fuse(batch_mean, batch_var, pred_mean, pred_var, self.gain)
                _, unbiased = kalman_fuse(batch_mean.detach(), batch_var.detach() * (m / (m - 1)),
                                          pred_mean.detach(), pred_var.detach(), self.gain)
            update_running_(self.running_mean, mean, self.momentum)
            update_running_(self.running_var, unbiased, self.momentum)
        else:
            mean, var = self.running_mean.to(dtype), self.running_var.to(dtype)
        self.last_mean, self.last_var, self._fresh = mean, var, True
        return (xm - mean[:, None]) / (var[:, None] + self.eps).sqrt()

    def _prediction_too_uncertain(self, pred_var: Tensor, batch_var: Tensor) -> bool:
        """Whether the predicted variance is ``skip_ratio`` times the batch's, on average."""
        if self.skip_ratio is None:
            return False
        ratio = (pred_var.detach() / (batch_var.detach() + self.eps)).mean()
        return bool(ratio >= self.skip_ratio)

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        return running_affine((self.running_var + self.eps).rsqrt(), self.running_mean,
                              self.weight, self.bias)

    def __getstate__(self) -> dict:
        # The published posterior may be a non-leaf tensor of the last graph: deepcopy and
        # pickle refuse those, and it is stale in a copy anyway.
        state = self.__dict__.copy()
        state["last_mean"] = state["last_var"] = None
        state["_fresh"] = False
        return state

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, gain={self.gain}, prev_features={self.prev_features}, "
                f"skip_ratio={self.skip_ratio}")

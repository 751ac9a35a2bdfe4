"""Pure tensor functions of normlab.

The centre is the standardization loss of

    Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a
    Standardization Loss", 2019, arXiv:1903.00925 (eq. 1-2).

For each channel ``c`` of a pre-activation ``x`` it takes the mean ``mu_c`` and the biased
variance ``var_c`` over every other dimension and sums the KL divergence of
``N(mu_c, var_c)`` from ``N(0, 1)`` over channels::

    L(x) = 0.5 * sum_c (mu_c^2 + var_c - log(var_c + eps) - 1)

The sum over channels (not a mean) is the paper's; it is why the loss weight must shrink as
networks widen.

``eps`` sits inside the logarithm only. It keeps the loss and its gradient finite when a
channel is constant (``var_c = 0``, e.g. a dead ReLU feeding a layer, or all-zero padding);
at ``eps = 1e-5`` it shifts the loss of a unit-variance channel by ``-0.5 * log(1 + 1e-5)``,
about ``5e-6``. A channel with a single element (``M = 1``) has no variance at all; the
function raises a ``ValueError`` then, as ``torch.nn.BatchNorm`` does, rather than return the
``-log(eps)`` it would otherwise compute.

Two CPU implementations give the same values (tests hold each to a float64 reference):

- ``"torch"`` (the default, any device): per-channel moments from native reductions (aten's
  batch-norm statistics kernel for channels-last rows) and an analytic one-pass backward
  through a custom autograd function.
- ``"kernel"``: float32/float64 CPU tensors, eager mode, opt-in. One C++ operator with its own
  autograd node (:mod:`normlab.functional._std_loss_kernel`). ``set_implementation("kernel")``
  builds or loads it then, ahead of training, so no training step waits on a compiler.

Inside ``torch.compile`` the formula is plain ops, which inductor fuses into its own one-pass
reductions (no graph break); autograd derives the backward. Backward of the two eager paths
is once-differentiable: double backward raises instead of returning wrong second derivatives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _std_loss_kernel

__all__ = [
    "channel_moments", "standardization_loss", "reduction_dims", "DEFAULT_EPS",
    "set_implementation", "implementation", "IMPLEMENTATIONS", "check_floating",
]

DEFAULT_EPS = 1e-5
IMPLEMENTATIONS = ("torch", "kernel")
_choice = {"name": "torch"}
_KERNEL_DTYPES = (torch.float32, torch.float64)


def set_implementation(name: str) -> str:
    """Choose how :func:`standardization_loss` computes on CPU; returns the path now in effect.

    Args:
        name: ``"torch"`` (default) or ``"kernel"``: build (first time on this machine, about a
            minute) or load the C++ kernel now. Where it cannot be built or loaded, one
            ``RuntimeWarning`` gives the full reason and the torch path stays in effect.

    Raises:
        ValueError: an unknown name.
    """
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r}; choose one of {IMPLEMENTATIONS}")
    _choice["name"] = "kernel" if name == "kernel" and _std_loss_kernel.load() else "torch"
    return _choice["name"]


def implementation(x: Tensor | None = None) -> str:
    """The path a call on ``x`` (default: a float32 CPU tensor) takes now: "kernel" or "torch".

    Never builds anything.
    """
    if _choice["name"] != "kernel":
        return "torch"
    if x is not None and (x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES):
        return "torch"
    return "kernel"


def reduction_dims(x: Tensor, channel_dim: int) -> tuple[int, tuple[int, ...]]:
    """Validate ``channel_dim`` for ``x`` and return it (non-negative) with the other dims."""
    if x.dim() < 2:
        raise ValueError(
            f"expected a tensor with a batch and a channel dimension (>= 2 dims), "
            f"got shape {tuple(x.shape)}"
        )
    if not -x.dim() <= channel_dim < x.dim():
        raise ValueError(
            f"channel_dim={channel_dim} is out of range for a tensor of shape "
            f"{tuple(x.shape)} ({x.dim()} dims)"
        )
    cd = channel_dim % x.dim()
    return cd, tuple(d for d in range(x.dim()) if d != cd)


def check_floating(x: Tensor, what: str = "x") -> None:
    """Raise unless ``x`` is a floating-point tensor (``what`` names it in the message)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")


def channel_moments(x: Tensor, channel_dim: int = 1) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` over every dimension but ``channel_dim``.

    Two plain passes (the mean, then the mean of squared deviations): exact where
    ``E[x^2] - E[x]^2`` cancels catastrophically (``|mu| >> sigma``), and on CPU several
    times faster than ``torch.var_mean`` over non-contiguous dims.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    check_floating(x)
    cd, dims = reduction_dims(x, channel_dim)
    mean = x.mean(dim=dims, keepdim=True)
    dev = x - mean
    var = (dev * dev).mean(dim=dims)
    return mean.reshape(-1), var


def _loss_from_moments(mean: Tensor, var: Tensor, eps: float) -> Tensor:
    return 0.5 * (mean * mean + var - torch.log(var + eps) - 1.0).sum()


def _channel_stats(x: Tensor, cd: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, mean, var)``: ``x`` in the layout the backward uses, and the per-channel moments.

    ``rows`` is ``x`` itself, or for channels-last data (``cd`` the last dim) ``x`` as a
    ``(M, C)`` view. Means come from torch's cascaded ``mean`` (its float32 sums stay exact at
    ``|mu| = 1000``; ``batch_norm_update_stats``'s row-by-row mean does not); variances are
    two-pass (squared deviations around a mean), never ``E[x^2] - E[x]^2``.
    """
    if cd == x.dim() - 1:
        # (N, C) and (N, T, C): aten's batch-norm statistics kernel takes the two-pass variance
        # of channels-last rows in one call (12 us against 30 us for subtract / square / mean
        # on a 128x100 Linear output, one thread).
        rows = x.reshape(-1, x.shape[cd])
        return rows, rows.mean(0), torch.batch_norm_update_stats(rows, None, None, 0.0)[1]
    dims = tuple(d for d in range(x.dim()) if d != cd)
    if cd == 1 and x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        return x, x.mean(dims), torch.batch_norm_update_stats(x, None, None, 0.0)[1]
    # Channel-major (NCHW) data: the same kernel is 2-3x slower there than these plain passes.
    mean = x.mean(dim=dims, keepdim=True)
    # Squared in place: one temporary the size of x instead of two.
    var = (x - mean).square_().mean(dim=dims)
    return x, mean.reshape(-1), var


class _TorchLoss(torch.autograd.Function):
    """Moments forward, analytic backward: dL/dx = (mu + (1 - 1/(var+eps)) (x - mu)) / M.

    The gradient is ``x * a_c + b_c`` per channel. For channel-major data it is computed by
    an inference-mode ``native_batch_norm`` (running mean 0, variance 1, eps 0, weight ``a``,
    bias ``b``: exactly ``x * a + b``), 1.3-3.6x faster on CPU than ``addcmul`` with
    ``(1, C, 1, 1)`` operands; rows of channels use ``addcmul``, already vectorized there.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cd: int, eps: float) -> Tensor:
        # Few, in-place ops: on a 100-unit MLP layer each aten call costs about as much as the
        # arithmetic, so the op count is the step time. No autograd runs in here.
        rows, mean, var = _channel_stats(x, cd)
        r = var + eps
        loss = torch.addcmul(var - torch.log(r), mean, mean).sub_(1.0).sum().mul_(0.5)
        # The gradient's per-channel coefficients, for an incoming gradient of 1:
        # a = (1 - 1/r) / M and b = mu (1/M - a) = mu / (M r).
        inv_m = 1.0 / (rows.numel() // mean.numel())
        q = r.reciprocal_().mul_(inv_m)
        ctx.save_for_backward(rows, torch.rsub(q, inv_m), q.mul_(mean))
        ctx.cd, ctx.shape = cd, x.shape
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        rows, a, b = ctx.saved_tensors
        cd, shape = ctx.cd, ctx.shape
        a, b = a * grad, b * grad
        if rows.dim() == 2 and cd == len(shape) - 1:
            return torch.addcmul(b, rows, a).view(shape), None, None
        if cd == 1:
            zeros, ones = torch.zeros_like(a), torch.ones_like(a)
            return torch.native_batch_norm(rows, a, b, zeros, ones, False, 0.0, 0.0)[0], None, None
        view = [1] * len(shape)
        view[cd] = -1
        return torch.addcmul(b.view(view), rows, a.view(view)), None, None


def _as_rows(x: Tensor, cd: int) -> Tensor:
    """``x`` as a contiguous ``(O, C, I)`` tensor, a view wherever the memory allows it.

    Autograd records the view (or copy), so the kernel's gradient reaches ``x`` in ``x``'s
    own layout.
    """
    if not x.is_contiguous() and x.dim() == 4 and cd == 1 \
            and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(n * h * w, c, 1)
    if cd == 1:
        return x.contiguous().view(x.shape[0], x.shape[1], -1)
    return x.contiguous().view(-1, x.shape[cd], math.prod(x.shape[cd + 1:]))


def _compiled_loss(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    # Plain ops for torch.compile: inductor fuses them into one-pass reductions (no graph
    # break for the C++ op) and autograd derives the backward.
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims)
    return _loss_from_moments(mean.reshape(-1), var, eps)


def standardization_loss(x: Tensor, channel_dim: int = 1, eps: float = DEFAULT_EPS) -> Tensor:
    """KL divergence of each channel's Gaussian ``N(mu_c, var_c)`` from ``N(0, 1)``, summed.

    Args:
        x: pre-activations, e.g. ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, or ``(N, T, C)``
            with ``channel_dim=-1``.
        channel_dim: the channel dimension; statistics are taken over all the others.
        eps: added to the variance inside the log (see the module docstring).

    Returns:
        A scalar tensor: ``0.5 * sum_c (mu_c^2 + var_c - log(var_c + eps) - 1)``. Half-precision
        inputs are reduced in float32 and the loss is float32.

    Raises:
        ValueError: for a non-floating tensor, a ``channel_dim`` out of range, an empty tensor
            or a channel with fewer than two elements.

    Example:
        >>> x = torch.randn(64, 8, 5, 5) * 2 + 1
        >>> loss = standardization_loss(x)   # about 0.5 * 8 * (1 + 4 - log 4 - 1)
    """
    check_floating(x)
    shape = x.shape
    if len(shape) < 2 or not -len(shape) <= channel_dim < len(shape):
        reduction_dims(x, channel_dim)  # raises the ValueError that says which
    cd = channel_dim % len(shape)
    numel = x.numel()
    if numel == 0:
        raise ValueError(f"standardization_loss got an empty tensor of shape {tuple(shape)}")
    if numel // shape[cd] < 2:
        raise ValueError(
            f"standardization_loss needs at least 2 values per channel to estimate a variance, "
            f"got shape {tuple(shape)} with channel_dim={channel_dim} (1 value per channel); "
            f"use a batch size above 1 for fully connected layers"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if torch.compiler.is_compiling():
        return _compiled_loss(x, reduction_dims(x, cd)[1], float(eps))
    # The checks above are the whole Python cost of a call: on the paper's 100-unit MLP the
    # statistics themselves take less time than a few more attribute lookups would.
    if _choice["name"] == "kernel" and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES:
        # One C++ operator with its own autograd node: no Python runs in its backward.
        return torch.ops.normlab.std_loss(_as_rows(x, cd), float(eps))
    return _TorchLoss.apply(x, cd, float(eps))

"""Gradient-side methods: optimizer wrappers that transform gradients before the step."""

from .agc import AGC, DEFAULT_CLIPPING, adaptive_grad_clip_, clipped_parameters, unitwise_norm
from .bnp import BNP, bnp_precondition

__all__ = [
    "BNP", "bnp_precondition", "AGC", "DEFAULT_CLIPPING", "adaptive_grad_clip_", "clipped_parameters", "unitwise_norm"]

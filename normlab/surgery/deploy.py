"""The deployment form of a trained model: the method's own step, then folding if it folds.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, deploy the standardization-loss network as the bare network;
batch normalization reaches the same inference cost once folded into the weights (Ioffe &
Szegedy 2015, arXiv:1502.03167, section 3.1).

A method says what deployment does declaratively: :meth:`Method.for_inference
<normlab.methods.base.Method.for_inference>` is its own step (weights baked in, hooks
removed) and ``folds = True`` asks for its normalization layers to be folded into the weight
layer before each (:func:`normlab.surgery.fold_batch_norm`). This is the one place that acts
on ``folds``, so methods never import surgery.
"""

from __future__ import annotations

from torch import nn

from ..methods.base import Method
from .fold import fold_batch_norm

__all__ = ["deploy_model"]


def deploy_model(model: nn.Module, method: Method) -> nn.Module:
    """``method.for_inference(model)``, folded when ``method.folds``.

    Args:
        model: the trained model (in eval mode for a folding method: folding reads its
            running statistics).
        method: the method it was trained with.

    Returns:
        The deployment form: for a folding method an eval-mode copy with every eval-affine
        normalization folded (``model`` itself is left as it was); otherwise what
        ``for_inference`` returns (``model`` itself by default).
    """
    deployed = method.for_inference(model)
    return fold_batch_norm(deployed).model if method.folds else deployed

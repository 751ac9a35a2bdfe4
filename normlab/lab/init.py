"""Weight-initialization schemes applied to a built model (the lab's ``--init`` option).

- ``torch``: leave the model as built. Every ``nn.Conv*d`` and ``nn.Linear`` then has
  torch's default: weights Kaiming-uniform with ``a = sqrt(5)``, i.e. U(-1/sqrt(fan_in),
  1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
- ``glorot``: TensorFlow's default for ``tf.layers``/Keras ``Conv2D`` and ``Dense`` (the
  code base of Collins, Ballé & Shlens 2019, arXiv:1903.00925): weights Glorot-uniform,
  U(-a, a) with ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio, "Understanding the
  difficulty of training deep feedforward neural networks", AISTATS 2010), and biases zero.
  Fans are torch's (``fan_in = in_channels / groups * kernel taps``, ``fan_out =
  out_channels * kernel taps``), which equal TensorFlow's for dense and ordinary convolution
  kernels.

Only weight layers are touched (normalization layers keep their own initialization), and a
layer whose ``weight`` is not a plain parameter (a weight reparametrization such as weight
norm already applied) is refused: apply the scheme before the method's ``prepare``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["INIT_SCHEMES", "initialize"]

INIT_SCHEMES = ("torch", "glorot")

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def initialize(model: nn.Module, scheme: str = "torch") -> nn.Module:
    """Re-initialize every Conv/Linear layer of ``model`` in place with ``scheme``.

    Args:
        model: a freshly built network.
        scheme: one of :data:`INIT_SCHEMES`.

    Returns:
        ``model`` (for chaining, as torch's module transforms do).

    Raises:
        ValueError: an unknown scheme, or a weight layer whose weight is reparametrized.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(INIT_SCHEMES)}")
    if scheme == "torch":
        return model
    for name, module in model.named_modules():
        if not isinstance(module, _WEIGHT_LAYERS):
            continue
        if not isinstance(module._parameters.get("weight"), nn.Parameter):
            raise ValueError(f"layer {name!r} has a reparametrized weight; initialize the "
                             "model before the method's prepare()")
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model

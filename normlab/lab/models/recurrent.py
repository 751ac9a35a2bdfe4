"""A recurrent classifier for the lab: an image read as a sequence of rows by an LSTM.

Collins, Ballé & Shlens 2019 (arXiv:1903.00925), section 5, propose recurrent networks as the
loss's first extension. ``lstm`` reads a ``(C, H, W)`` image as ``T = H`` steps of ``C * W``
features (row-by-row MNIST/Fashion-MNIST: 28 steps of 28), or a ``(T, F)`` sequence as is,
through :class:`normlab.layers.recurrent.LSTM` (Hochreiter & Schmidhuber 1997), and
classifies the last layer's final hidden state with a Linear layer.

How each kind of method acts on it:

- layer methods: ``method.norm(4 * hidden, 0)`` normalizes every step's gate pre-activations
  ``W_ih x_t + W_hh h_{t-1} + b`` before the nonlinearities; for ``layer_norm`` that is Ba,
  Kiros & Hinton's layer-normalized recurrent network (2016, arXiv:1607.06450, section 3.1).
  A batch norm there uses statistics shared by all steps (Cooijmans et al. 2016,
  arXiv:1603.09025, keep one set per step instead). Methods that replace the activation
  (their own ``block``) have no place in an LSTM cell and are refused.
- ``std_loss``: hooks the gate taps ``rnn.gates_l{k}``, one per layer: the loss of the gate
  pre-activations with moments over batch and time (:mod:`normlab.layers.recurrent`).
  ``lstm_proj`` is the same network with the taps on ``W_ih x_t`` and ``W_hh h_{t-1}``
  apart and without the biases (``rnn.input_proj_l{k}``, ``rnn.hidden_proj_l{k}``), where
  Cooijmans et al. put their batch norms: the loss then leaves the gate biases free (a
  forget-gate bias need not have mean 0).
- weight and gradient methods act on the parameters as on any model.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...layers.recurrent import LSTM
from ...methods import Method
from .base import MODELS

__all__ = ["SequenceLSTM", "lstm"]


class SequenceLSTM(nn.Module):
    """``(N, C, H, W)`` images as ``H`` rows, or ``(N, T, F)`` sequences, into an LSTM.

    Args:
        in_shape: ``(C, H, W)`` or ``(T, F)`` of one sample.
        num_classes: outputs of the Linear head.
        hidden: LSTM hidden size.
        num_layers: stacked LSTM layers.
        gate_norm: ``factory(num_features)`` applied to each step's gate pre-activations, or
            ``None``.
        bias: whether the LSTM has its two biases.
        taps: where the standardization loss looks (``"gates"`` or ``"projections"``; see
            :data:`normlab.layers.recurrent.TAPS`).
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: int = 64,
                 num_layers: int = 1, gate_norm=None, bias: bool = True,
                 taps: str = "gates") -> None:
        super().__init__()
        if len(in_shape) not in (2, 3):
            raise ValueError(f"lstm needs (C, H, W) images or (T, F) sequences, got "
                             f"in_shape={tuple(in_shape)}")
        self.in_shape = tuple(in_shape)
        features = in_shape[-1] if len(in_shape) == 2 else in_shape[0] * in_shape[2]
        self.rnn = LSTM(features, hidden, num_layers, bias=bias, batch_first=True,
                        gate_norm=gate_norm, taps=taps)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # (N, C, H, W) -> (N, H, C * W): one step per row
            x = x.movedim(2, 1).flatten(2)
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


@MODELS.register("lstm")
def lstm(method: Method, in_shape: Sequence[int], num_classes: int, hidden: int = 64,
         num_layers: int = 1, taps: str = "gates") -> nn.Module:
    """A ``hidden``-unit LSTM over the rows of the input, with ``method`` on its gates."""
    if type(method).block is not Method.block:
        raise ValueError(f"lstm: method {method.name!r} replaces the activation after each "
                         f"layer (its own block), which an LSTM cell does not have")
    gates = 4 * hidden
    gate_norm = (lambda c: method.norm(c, 0)) if method.norm(gates, 0) is not None else None
    return SequenceLSTM(in_shape, num_classes, hidden, num_layers, gate_norm,
                        bias=method.conv_bias, taps=taps)


@MODELS.register("lstm_proj")
def lstm_proj(method: Method, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """``lstm`` with the loss's taps on the input and hidden projections apart, bias-free."""
    return lstm(method, in_shape, num_classes, taps="projections")

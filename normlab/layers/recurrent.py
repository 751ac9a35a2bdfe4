"""LSTM and GRU whose gate pre-activations the standardization loss can see.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, section 5, names recurrent networks as the first extension of
the loss. In a recurrent cell the pre-activations are the gate inputs
``a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``, one ``(N, G*H)`` matrix per time step:
for the LSTM (Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997)
the input, forget, cell and output gates (``G = 4``, torch's order ``i, f, g, o``); for the
GRU (Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
Machine Translation", 2014, arXiv:1406.1078) the reset and update gates and the candidate
``n_pre = W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn)`` (``G = 3``).

Where the statistics go: Cooijmans et al., "Recurrent Batch Normalization", 2016,
arXiv:1603.09025, normalize these gate inputs with batch statistics. Here the loss takes one
set of moments per gate unit over **batch and time together**: every layer (and direction)
passes the valid rows of all its steps, stacked as ``(M, G*H)`` (``M`` = number of non-padded
(sample, step) pairs, in packed order), through a :class:`~normlab.nn_types.PreActivation`
named ``gates_l{k}`` (``gates_l{k}_reverse``), which the standardization loss hooks. Padded
steps of a :class:`~torch.nn.utils.rnn.PackedSequence` are never computed, so they never
enter the statistics. The PreActivation's output is not used by the recurrence: it is a tap.

Layer normalization (Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450,
section 3.1: normalize the summed inputs ``a_t`` of a recurrent layer at every time step, with
a learned gain and bias) is ``LSTM(..., gate_norm=nn.LayerNorm)``: ``gate_norm(G*H)`` is
applied to ``a_t`` of each step, before the gate nonlinearities, one module per layer and
direction.

``taps="projections"`` moves the taps to where Cooijmans et al. put their normalizations:
``W_ih x_t`` (``input_proj_l{k}``) and ``W_hh h_{t-1}`` (``hidden_proj_l{k}``) apart and
without the biases, so a loss on them leaves each gate's bias free to set its mean (their
forget-gate bias, for one, is not meant to be 0). The hidden projection of step 0 is
``W_hh h_0`` (zero rows for a zero initial state) and is included.

:class:`LSTM` and :class:`GRU` take torch's constructor arguments and have torch's parameter
names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), so a state dict moves
between them and ``nn.LSTM``/``nn.GRU`` both ways; :func:`convert_recurrent` swaps every
``nn.LSTM``/``nn.GRU`` of a model. For speed on CPU the input projection of all steps is one
matmul ``(M, F) x (F, G*H)``; only the hidden projection runs per step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..nn_types import PreActivation

__all__ = ["LSTM", "GRU", "convert_recurrent", "TAPS"]

#: where the PreActivation taps sit: the summed gate inputs, or the two projections apart
TAPS = ("gates", "projections")


class _Recurrent(nn.Module):
    """Shared parameters, packing and layer/direction loop of :class:`LSTM` and :class:`GRU`."""

    num_gates: int = 0
    has_cell: bool = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 gate_norm: Callable[[int], nn.Module] | None = None,
                 taps: str = "gates") -> None:
        super().__init__()
        name = type(self).__name__
        if taps not in TAPS:
            raise ValueError(f"{name}: unknown taps {taps!r}; known: {', '.join(TAPS)}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(f"{name}: input_size, hidden_size and num_layers must be >= 1, got "
                             f"{input_size}, {hidden_size}, {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout}")
        if proj_size:
            raise ValueError(f"{name}: proj_size={proj_size} is not supported (use 0)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.taps = bidirectional, 0, taps
        gates = self.num_gates * hidden_size
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes:
                key = f"l{layer}{suffix}"
                # torch's registration order: w_ih, w_hh, b_ih, b_hh per layer and direction
                setattr(self, f"weight_ih_{key}",
                        nn.Parameter(torch.empty(gates, width, **factory)))
                setattr(self, f"weight_hh_{key}",
                        nn.Parameter(torch.empty(gates, hidden_size, **factory)))
                if bias:
                    setattr(self, f"bias_ih_{key}", nn.Parameter(torch.empty(gates, **factory)))
                    setattr(self, f"bias_hh_{key}", nn.Parameter(torch.empty(gates, **factory)))
                for tap in (("gates",) if taps == "gates" else ("input_proj", "hidden_proj")):
                    setattr(self, f"{tap}_{key}", PreActivation(channel_dim=-1))
                if gate_norm is not None:
                    setattr(self, f"gate_norm_{key}", gate_norm(gates).to(**factory))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """torch's initialization: every weight and bias uniform in ``+-1/sqrt(hidden_size)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith(("weight_", "bias_")):
                nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` (there is no cuDNN weight buffer here)."""

    def _cell(self, x_t: Tensor, h_t: Tensor, h: Tensor, c: Tensor | None,
              norm: nn.Module | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """One step: ``(gate pre-activation, h_t, c_t)`` from ``x_t = W_ih x + b_ih`` and
        ``h_t = W_hh h + b_hh``."""
        raise NotImplementedError

    def _direction(self, key: str, reverse: bool, data: Tensor, steps: list[int], h0: Tensor,
                   c0: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run one layer in one direction over packed-layout ``data`` (rows of step 0, then
        step 1, ...; ``steps[t]`` rows at step t, non-increasing). Returns the outputs in the
        same layout and the final ``h`` (and ``c``) of every sequence."""
        w_ih, w_hh = getattr(self, f"weight_ih_{key}"), getattr(self, f"weight_hh_{key}")
        b_ih = getattr(self, f"bias_ih_{key}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_{key}") if self.bias else None
        norm = getattr(self, f"gate_norm_{key}", None)
        projections = self.taps == "projections"
        inputs = F.linear(data, w_ih, None if projections else b_ih)  # all steps, one matmul
        if projections:
            getattr(self, f"input_proj_{key}")(inputs)
            inputs = inputs if b_ih is None else inputs + b_ih
        inputs = inputs.split(steps)
        n_steps = len(steps)
        outputs: list[Tensor | None] = [None] * n_steps
        pres: list[Tensor | None] = [None] * n_steps
        first = n_steps - 1 if reverse else 0
        h = h0[:steps[first]]
        c = None if c0 is None else c0[:steps[first]]
        done_h: list[Tensor] = []
        done_c: list[Tensor] = []
        for t in (range(n_steps - 1, -1, -1) if reverse else range(n_steps)):
            rows = steps[t]
            if rows < h.shape[0]:  # forward: the shortest sequences have ended
                done_h.append(h[rows:])
                h = h[:rows]
                if c is not None:
                    done_c.append(c[rows:])
                    c = c[:rows]
            elif rows > h.shape[0]:  # reverse: sequences that start later join
                h = torch.cat([h, h0[h.shape[0]:rows]])
                c = None if c is None else torch.cat([c, c0[c.shape[0]:rows]])
            if projections:  # W_hh h without its bias, for the hidden_proj tap
                pres[t] = hidden = F.linear(h, w_hh)
                hidden = hidden if b_hh is None else hidden + b_hh
                _, h, c = self._cell(inputs[t], hidden, h, c, norm)
            else:
                pres[t], h, c = self._cell(inputs[t], F.linear(h, w_hh, b_hh), h, c, norm)
            outputs[t] = h
        # the tap: all valid rows of all steps, statistics over batch and time
        getattr(self, f"{'hidden_proj' if projections else 'gates'}_{key}")(torch.cat(pres))
        h_n = torch.cat([h] + done_h[::-1])
        c_n = None if c is None else torch.cat([c] + done_c[::-1])
        return torch.cat(outputs), h_n, c_n

    def _check_hidden(self, hx: Tensor, batch: int, what: str) -> None:
        want = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if tuple(hx.shape) != want:
            raise ValueError(f"{type(self).__name__}: expected {what} of shape {want}, "
                             f"got {tuple(hx.shape)}")

    def forward(self, input, hx=None):
        """torch's ``nn.LSTM``/``nn.GRU`` forward: ``(N, T, F)`` with ``batch_first``,
        ``(T, N, F)``, unbatched ``(T, F)``, or a :class:`PackedSequence`.

        Returns:
            ``(output, h_n)`` for the GRU, ``(output, (h_n, c_n))`` for the LSTM; ``output``
            is packed when ``input`` is.
        """
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            steps = batch_sizes.tolist()
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: expected a 2-D or 3-D input or a PackedSequence, "
                                 f"got shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (
                input.transpose(0, 1) if self.batch_first else input)
            data = x.reshape(-1, x.shape[-1])
            steps, sorted_idx, unsorted_idx = [x.shape[1]] * x.shape[0], None, None
        if data.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input_size={self.input_size} features, "
                             f"got {data.shape[-1]}")
        batch = steps[0]
        h0, c0 = hx if (self.has_cell and hx is not None) else (hx, None)
        if h0 is None:
            h0 = data.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        elif unbatched:
            h0 = h0.unsqueeze(1)
        self._check_hidden(h0, batch, "h_0")
        if self.has_cell:
            c0 = torch.zeros_like(h0) if c0 is None else (c0.unsqueeze(1) if unbatched else c0)
            self._check_hidden(c0, batch, "c_0")
        if sorted_idx is not None:  # torch permutes the given state into sorted order
            h0 = h0.index_select(1, sorted_idx)
            c0 = None if c0 is None else c0.index_select(1, sorted_idx)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes):
                i = layer * self.num_directions + d
                out, h, c = self._direction(f"l{layer}{suffix}", d == 1, data, steps, h0[i],
                                            None if c0 is None else c0[i])
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            data = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                data = F.dropout(data, self.dropout, training=True)
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if self.has_cell else None
        if unsorted_idx is not None:
            h_n = h_n.index_select(1, unsorted_idx)
            c_n = None if c_n is None else c_n.index_select(1, unsorted_idx)
        if packed:
            output = PackedSequence(data, batch_sizes, sorted_idx, unsorted_idx)
        else:
            output = data.view(len(steps), batch, -1)
            if unbatched:
                output, h_n = output.squeeze(1), h_n.squeeze(1)
                c_n = None if c_n is None else c_n.squeeze(1)
            elif self.batch_first:
                output = output.transpose(0, 1)
        return output, ((h_n, c_n) if self.has_cell else h_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                             ("bidirectional", False)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        return s


class LSTM(_Recurrent):
    """Drop-in ``nn.LSTM`` whose gate pre-activations pass through ``gates_l{k}`` taps.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype: as in ``torch.nn.LSTM``.
        proj_size: must be 0 (projections are not implemented).
        gate_norm: optional ``factory(num_features) -> module`` applied to each step's
            ``(rows, 4 * hidden_size)`` gate pre-activations before the nonlinearities;
            ``nn.LayerNorm`` gives Ba et al.'s layer-normalized LSTM (module docstring).
        taps: ``"gates"`` or ``"projections"``: what the PreActivation taps see (module
            docstring).
    """

    num_gates = 4
    has_cell = True

    def _cell(self, x_t, h_t, h, c, norm):
        pre = x_t + h_t
        i, f, g, o = (pre if norm is None else norm(pre)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return pre, torch.sigmoid(o) * torch.tanh(c), c


class GRU(_Recurrent):
    """Drop-in ``nn.GRU`` whose gate pre-activations ``(r, z, n)`` pass through
    ``gates_l{k}`` taps.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype: as in ``torch.nn.GRU``.
        taps: ``"gates"`` (the stacked ``r, z, n`` pre-activations) or ``"projections"``.
    """

    num_gates = 3

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("gate_norm") is not None:
            raise ValueError("GRU: gate_norm is not supported (its candidate gate mixes the "
                             "hidden projection after the reset gate); use LSTM")
        super().__init__(*args, **kwargs)

    def _cell(self, x_t, h_t, h, c, norm):
        x_r, x_z, x_n = x_t.chunk(3, 1)
        h_r, h_z, h_n = h_t.chunk(3, 1)
        r_pre, z_pre = x_r + h_r, x_z + h_z
        r, z = torch.sigmoid(r_pre), torch.sigmoid(z_pre)
        n_pre = x_n + r * h_n
        h = torch.lerp(torch.tanh(n_pre), h, z)  # (1 - z) * n + z * h
        return torch.cat([r_pre, z_pre, n_pre], 1), h, None


_CONVERT: dict[type[nn.Module], type[_Recurrent]] = {nn.LSTM: LSTM, nn.GRU: GRU}


def _converted(module: nn.RNNBase, taps: str) -> _Recurrent:
    if module.proj_size:
        raise ValueError(f"convert_recurrent: {module!r} has proj_size={module.proj_size}, "
                         f"which normlab's LSTM does not implement")
    ref = next(module.parameters())
    new = _CONVERT[type(module)](
        module.input_size, module.hidden_size, module.num_layers, module.bias,
        module.batch_first, module.dropout, module.bidirectional,
        device=ref.device, dtype=ref.dtype, taps=taps)
    new.load_state_dict(module.state_dict())
    return new.train(module.training)


def convert_recurrent(model: nn.Module, taps: str = "gates") -> nn.Module:
    """Swap every ``nn.LSTM``/``nn.GRU`` of ``model`` for normlab's, with the same weights.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, submodules are replaced in place and
    the model is returned (a new module when ``model`` itself is an ``nn.LSTM``/``nn.GRU``).
    Outputs are torch's up to floating-point rounding; the gate pre-activations are then
    visible to the standardization loss through the ``gates_l*`` taps (or, with
    ``taps="projections"``, the ``input_proj_l*`` and ``hidden_proj_l*`` taps).

    Raises:
        ValueError: an LSTM with ``proj_size > 0``.
    """
    if type(model) in _CONVERT:
        return _converted(model, taps)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _CONVERT:
                setattr(parent, name, _converted(child, taps))
    return model

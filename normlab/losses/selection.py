"""Which layers the standardization loss hooks: candidates, patterns and exclusions.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925: the loss applies to the pre-activations of every layer but the
output (logit) layer.

By default the candidates are every Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear module and
every :class:`normlab.nn_types.PreActivation` marker. Which of them is the logit layer is
decided by the loss from execution order (the last one *run*), not here: registration order
says nothing about where a module is called.

Recommended selections (name globs for ``exclude=``):

- residual CNNs (ResNet, MobileNet): the default; every conv feeds a norm slot or an
  activation. Squeeze-excite gates feed a sigmoid that multiplies, not a pre-activation to
  standardize: ``exclude=SQUEEZE_EXCITE`` (``*se_reduce``, ``*se_expand``, ``*.se.*``).
- transformers (ViT, Mixer): hook what feeds the MLP's nonlinearity and leave out attention
  projections, whose outputs feed a softmax or a residual sum: ``exclude=ATTENTION``
  (``*qkv``, ``*q_proj``, ``*k_proj``, ``*v_proj``, ``*out_proj``, ``*attn*``). For the
  MLP's second layer (feeds the residual sum) add ``"*fc2"``.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence, Union

from torch import nn

from ..nn_types import WEIGHT_LAYERS, PreActivation

__all__ = ["select_layers", "DEFAULT_TYPES", "SQUEEZE_EXCITE", "ATTENTION", "LayerSpec",
           "channel_dim_of"]

LayerSpec = Union[str, type, Sequence[Union[str, type]], None]

#: modules hooked by default: their output is a pre-activation.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = WEIGHT_LAYERS + (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, PreActivation)

#: squeeze-excite gates (timm / EfficientNet names), for ``exclude=``.
SQUEEZE_EXCITE: tuple[str, ...] = ("*se_reduce", "*se_expand", "*.se.*", "*.se")
#: attention projections, for ``exclude=``.
ATTENTION: tuple[str, ...] = ("*qkv", "*q_proj", "*k_proj", "*v_proj", "*out_proj", "*attn*")

_RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def channel_dim_of(module: nn.Module, default: int | None) -> int:
    """The channel dimension of ``module``'s output: ``default`` if given, else -1 for Linear
    (features last, as in ``(N, T, C)``), a PreActivation's own ``channel_dim``, else 1."""
    if default is not None:
        return default
    if isinstance(module, PreActivation):
        return module.channel_dim
    return -1 if isinstance(module, nn.Linear) else 1


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n or not list(model.children())]


def _matches(named, spec) -> list[tuple[str, nn.Module]]:
    if isinstance(spec, type):
        return [(n, m) for n, m in named if isinstance(m, spec)]
    if isinstance(spec, str):
        return [(n, m) for n, m in named if fnmatch.fnmatchcase(n, spec)]
    raise TypeError(f"layer patterns must be module types or name globs, got {spec!r}")


def _specs(spec: LayerSpec) -> Iterable:
    return [spec] if isinstance(spec, (str, type)) else list(spec)


def _nothing_message(model: nn.Module) -> str:
    name = type(model).__name__
    if any(isinstance(m, _RECURRENT) for m in model.modules()):
        return (f"{name} has recurrent layers (nn.LSTM/nn.GRU/nn.RNN) whose pre-activations "
                f"the standardization loss cannot see; convert them first with "
                f"normlab.layers.recurrent.convert_recurrent(model), or pass layers=")
    return (f"{name} has no Conv/ConvTranspose/Linear/PreActivation layer to attach the "
            f"standardization loss to besides its logit layer; pass layers= to choose modules")


def select_layers(model: nn.Module, layers: LayerSpec = None,
                  exclude: LayerSpec = None) -> list[tuple[str, nn.Module]]:
    """The candidate ``(name, module)`` pairs a standardization loss hooks, in module order.

    Args:
        model: any module.
        layers: ``None`` for every module of :data:`DEFAULT_TYPES` (the loss then leaves out
            the one that runs last, the logit layer); otherwise a module type, a name glob
            (``"features.*"``) or a sequence of them, each of which must match a module.
        exclude: types or globs to leave out; together they must match a chosen module.

    Raises:
        ValueError: a pattern that matches nothing, or nothing left to hook (for the default,
            at most the logit layer: the message says what to do, e.g. for LSTM models).
    """
    named = _named(model)
    if layers is None:
        chosen = [(n, m) for n, m in named if isinstance(m, DEFAULT_TYPES)]
    else:
        picked: dict[str, nn.Module] = {}
        for spec in _specs(layers):
            hits = _matches(named, spec)
            if not hits:
                some = ", ".join(n for n, _ in named[:12])
                raise ValueError(f"layers pattern {spec!r} matches no module of "
                                 f"{type(model).__name__} (module names include: {some})")
            picked.update(hits)
        chosen = [(n, m) for n, m in named if n in picked]
    if exclude is not None:
        # A preset (a sequence) must remove something; not every pattern of it must match.
        dropped = {n for spec in _specs(exclude) for n, _ in _matches(chosen, spec)}
        if not dropped:
            raise ValueError(f"exclude={exclude!r} matches none of the hooked layers "
                             f"{[n for n, _ in chosen][:12]}")
        chosen = [(n, m) for n, m in chosen if n not in dropped]
    if layers is None and len(chosen) < 2:
        raise ValueError(_nothing_message(model))
    if not chosen:
        raise ValueError(f"nothing left to hook in {type(model).__name__} after exclude="
                         f"{exclude!r}")
    return chosen

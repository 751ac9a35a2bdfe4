"""The standardization loss as two lines added to any model.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925.

:class:`StandardizationLoss` hooks the outputs (pre-activations) of chosen layers; calling it
returns ``weight * sum_layers standardization_loss(output)`` for the latest training forward.
Nothing is computed in eval mode or under ``torch.no_grad()``, so inference costs exactly what
the bare model costs; ``remove()`` (or leaving the ``with`` block) detaches every hook.

Under data parallelism (``torch.distributed``), ``stats="replica"`` (default) takes each
rank's moments from its own shard, as the paper's per-TPU-core training did; DDP's gradient
averaging then optimizes the mean of the per-shard losses. ``stats="global"`` all-reduces the
moments (:func:`normlab.distributed.global_standardization_loss`), so loss and gradient are
those of the whole global batch. Without an initialized process group both are the
single-process loss.

Example:
    >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> std = StandardizationLoss(model, weight=1.0)       # hooks the first Linear only
    >>> loss = task_loss(model(x), y) + std()
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence, Union

import torch
from torch import Tensor, nn

from ..distributed.collectives import is_distributed
from ..distributed.moments import global_standardization_loss
from ..distributed.runtime import STATS
from ..functional.standardization import DEFAULT_EPS, standardization_loss
from ..nn_types import WEIGHT_LAYERS

__all__ = ["StandardizationLoss", "select_layers", "WEIGHT_LAYERS", "STATS"]

LayerSpec = Union[str, type, Sequence[Union[str, type]], None]


def select_layers(model: nn.Module, layers: LayerSpec = None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs a standardization loss hooks.

    Args:
        model: any module.
        layers: ``None`` for every Conv1d/2d/3d and Linear except the last one registered
            (the logit layer); otherwise a module type, a name glob (``"features.*"``) or a
            sequence of them, each of which must match at least one module.

    Raises:
        ValueError: a pattern or type that matches nothing, or a model without weight layers.
    """
    named = [(n, m) for n, m in model.named_modules() if n or not list(model.children())]
    if layers is None:
        chosen = [(n, m) for n, m in named if isinstance(m, WEIGHT_LAYERS)]
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no Conv1d/2d/3d or Linear layer to attach the "
                f"standardization loss to; pass layers= to choose modules"
            )
        return chosen[:-1]
    specs: Iterable = [layers] if isinstance(layers, (str, type)) else layers
    chosen: dict[str, nn.Module] = {}
    for spec in specs:
        if isinstance(spec, type):
            hits = [(n, m) for n, m in named if isinstance(m, spec)]
        elif isinstance(spec, str):
            hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, spec)]
        else:
            raise TypeError(f"layers entries must be module types or name globs, got {spec!r}")
        if not hits:
            some = ", ".join(n for n, _ in named[:12])
            raise ValueError(
                f"layers pattern {spec!r} matches no module of {type(model).__name__} "
                f"(module names include: {some})"
            )
        chosen.update(hits)
    return [(n, m) for n, m in named if n in chosen]


class StandardizationLoss:
    """Weighted standardization loss of chosen layers' outputs, through removable hooks.

    Args:
        model: the network (any ``nn.Module``).
        weight: multiplies the summed per-layer losses (the paper's 1.0 for small networks,
            down to 1e-6 for wide ones).
        layers: which modules to hook; see :func:`select_layers`.
        eps: inside the log; see :func:`normlab.functional.standardization_loss`.
        channel_dim: the channel dimension of hooked outputs. ``None`` (default) picks 1 for
            convolutions and -1 for Linear (whose features are last, as in ``(N, T, C)``).
        stats: ``"replica"`` or ``"global"`` moments under ``torch.distributed`` (module
            docstring); the same when not distributed.
        process_group: the ranks whose batches form the global batch (default: the world).

    A layer called several times in one forward (shared weights) contributes once per call.
    """

    def __init__(
        self,
        model: nn.Module,
        weight: float = 1.0,
        layers: LayerSpec = None,
        eps: float = DEFAULT_EPS,
        channel_dim: int | None = None,
        stats: str = "replica",
        process_group=None,
    ) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if stats not in STATS:
            raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
        self.stats = stats
        self.process_group = process_group
        self.weight = float(weight)
        self.eps = eps
        self.channel_dim = channel_dim
        self.layers = select_layers(model, layers)
        self._latest: dict[str, Tensor] = {}
        # The running sum is kept as the hooks fire: the step then pays one add per layer,
        # not a stack + sum of a list (measurable on small MLPs).
        self._total: Tensor | None = None
        self._handles = [model.register_forward_pre_hook(self._start_forward)]
        for name, module in self.layers:
            cd = channel_dim if channel_dim is not None else (-1 if isinstance(module, nn.Linear) else 1)
            self._handles.append(module.register_forward_hook(self._make_hook(name, cd)))

    def _start_forward(self, module: nn.Module, args) -> None:
        if module.training and torch.is_grad_enabled():
            self._latest = {}
            self._total = None

    def _make_hook(self, name: str, cd: int):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            if self.stats == "global" and is_distributed(self.process_group):
                value = global_standardization_loss(output, cd, self.eps, self.process_group)
            else:
                value = standardization_loss(output, channel_dim=cd, eps=self.eps)
            prev = self._latest.get(name)
            self._latest[name] = value if prev is None else prev + value
            self._total = value if self._total is None else self._total + value

        return hook

    def __call__(self) -> Tensor:
        """``weight * sum`` of the per-layer losses of the latest training forward (0 if none)."""
        if self._total is None:
            return torch.zeros(())
        return self._total if self.weight == 1.0 else self.weight * self._total

    def values(self) -> dict[str, float]:
        """Unweighted per-layer losses of the latest training forward."""
        return {n: float(v.detach()) for n, v in self._latest.items()}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Detach every hook and drop the stored values. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._latest = {}
        self._total = None

    def __enter__(self) -> "StandardizationLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = [n for n, _ in self.layers]
        stats = "" if self.stats == "replica" else f", stats={self.stats!r}"
        return f"StandardizationLoss(weight={self.weight}, layers={names}{stats})"

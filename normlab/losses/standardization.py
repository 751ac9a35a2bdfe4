"""The standardization loss as two lines added to any model.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925.

:class:`StandardizationLoss` hooks the outputs (pre-activations) of chosen layers (see
:mod:`normlab.losses.selection`); calling it returns the weighted loss of every training
forward since the previous call. Nothing is computed in eval mode or under
``torch.no_grad()``, so inference costs exactly what the bare model costs; ``remove()`` (or
leaving the ``with`` block) detaches every hook.

Lifecycle: each training-mode forward under autograd of a hooked layer adds that output's
term; ``std()`` returns the loss of all terms added since the last ``std()`` and consumes
them. So calling parts of the model (``model.backbone(x)`` then ``model.head(f)``), two views
before one ``std()``, or a layer shared by several calls all count every output once, and
nothing is ever backpropagated twice. Statistics are those of each output's own batch: with
gradient accumulation, each micro-batch is standardized on its own statistics (as BatchNorm
does), and reading after each micro-batch gives the same gradient as reading once after all
of them (``reduction="sum"``: the sum of the micro-batch losses; ``"mean"``: their mean).

Under data parallelism (``torch.distributed``), ``stats="replica"`` (default) takes each
rank's moments from its own shard, as the paper's per-TPU-core training did; DDP's gradient
averaging then optimizes the mean of the per-shard losses. ``stats="global"`` all-reduces the
moments (:func:`normlab.distributed.global_standardization_loss`), so loss and gradient are
those of the whole global batch. Without an initialized process group both are the
single-process loss.

Copies: ``copy.deepcopy(model)``, ``pickle`` and ``torch.save(model)`` work at any time; a
copy carries no loss (its hooks are inert and unregister themselves, :mod:`.hooks`), so an
EMA/SWA copy never feeds the original's loss. ``normlab.remove_norm(model)`` works likewise.

Example:
    >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> std = StandardizationLoss(model, weight=1.0)       # hooks the first Linear only
    >>> loss = task_loss(model(x), y) + std()
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed.collectives import is_distributed
from ..distributed.moments import global_standardization_loss
from ..distributed.runtime import STATS
from ..functional.standardization import (
    DEFAULT_EPS, check_floating, implementation, reduction_dims, standardization_loss,
)
from ..nn_types import WEIGHT_LAYERS
from .hooks import LayerHook, RootHook, in_backward
from .selection import LayerSpec, channel_dim_of, select_layers
from .taps import StandardizationSum, Tapped, tap

__all__ = ["StandardizationLoss", "select_layers", "WEIGHT_LAYERS", "STATS", "REDUCTIONS"]

REDUCTIONS = ("sum", "mean")


class StandardizationLoss:
    """Weighted standardization loss of chosen layers' outputs, through removable hooks.

    Args:
        model: the network (any ``nn.Module``).
        weight: multiplies the reduced per-channel losses.
        layers: which modules to hook (:func:`~normlab.losses.selection.select_layers`).
            ``None``: every Conv/ConvTranspose/Linear/PreActivation except the logit layer,
            which is the one that runs *last* in the first training forward.
        eps: inside the log; see :func:`normlab.functional.standardization_loss`.
        channel_dim: the channel dimension of hooked outputs. ``None`` (default) picks 1 for
            convolutions, -1 for Linear (features last, as in ``(N, T, C)``) and a
            PreActivation's own ``channel_dim``.
        stats: ``"replica"`` or ``"global"`` moments under ``torch.distributed`` (module
            docstring); the same when not distributed.
        process_group: the ranks whose batches form the global batch (default: the world).
        reduction: ``"sum"`` (the paper's): ``weight * sum`` over layers and channels of the
            per-channel KL, so the loss grows with width and depth and the weight must shrink
            (the paper: 1.0 on small nets, 1e-5 to 1e-6 on large ones). ``"mean"``: the
            same divided by the number of channels summed (over every hooked output since the
            last read): width- and depth-independent. A mean-weight ``w`` equals a sum-weight
            ``w / C_total`` (``C_total``: channels of all hooked outputs of one forward).
        exclude: types or name globs to leave out (``selection.SQUEEZE_EXCITE``,
            ``selection.ATTENTION`` are presets).
        example_input: an input (or tuple of inputs) to run once, in eval mode without
            gradients, to learn the execution order now instead of at the first training
            forward.

    Layers whose hook never fires during the first training forward (a module whose weight
    is used functionally, like ``nn.MultiheadAttention.out_proj``) are reported once in a
    ``UserWarning`` and left out. ``layers`` is final from then on (before, it lists the
    candidates less the last registered). Subclasses change the per-layer term by overriding
    :meth:`layer_loss`, which is then called for every hooked output.

    Raises:
        ValueError: bad options, or nothing to hook (the message says what to do).
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
        *,
        reduction: str = "sum",
        exclude: LayerSpec = None,
        example_input: Any = None,
    ) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if stats not in STATS:
            raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.stats, self.process_group = stats, process_group
        self.weight, self.eps, self.reduction = float(weight), float(eps), reduction
        self.channel_dim = channel_dim
        self._candidates = select_layers(model, layers, exclude)
        self._auto_logit = layers is None
        self._cds = [channel_dim_of(m, channel_dim) for _, m in self._candidates]
        self._active = [True] * len(self._candidates)
        self._generic = type(self).layer_loss is not StandardizationLoss.layer_loss
        self._pending: list[tuple] = []
        self._order: list[int] = []
        self._final = False
        self._warned_backward = False
        self._recording = False
        self._read: tuple = ()
        self._values: dict[str, float] | None = {}
        self._inv_m: dict[tuple, Tensor] = {}
        self._handles = {i: m.register_forward_hook(LayerHook(self, i))
                         for i, (_, m) in enumerate(self._candidates)}
        self._root = model.register_forward_hook(RootHook(self))
        if example_input is not None:
            self._record(model, example_input)

    # -- the per-layer term (the variants' extension point) --------------------------------

    def layer_loss(self, output: Tensor, channel_dim: int) -> Tensor:
        """The unweighted term of one hooked output: the paper's summed per-channel KL.

        Subclasses override this to change the target; it is then called for every hooked
        output (the default is computed in a fused form, :mod:`normlab.losses.taps`).
        """
        return standardization_loss(output, channel_dim=channel_dim, eps=self.eps)

    # -- hooks ---------------------------------------------------------------------------------

    def _on_output(self, index: int, module: nn.Module, output):
        if self._recording:
            self._order.append(index)
            return None
        if not (module.training and torch.is_grad_enabled()) or not self._active[index]:
            return None
        # A block checkpointed with use_reentrant=False reruns its forward in backward: that
        # adds nothing to the loss, but a term's graph is rebuilt so the tensors it saves
        # match the first forward's, which the checkpoint checks.
        rerun = in_backward()
        if rerun and not self._final:
            self._warn_only_in_backward(index)
        elif not self._final:
            self._order.append(index)
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {self._candidates[index][0]!r} returned "
                            f"{type(output).__name__}; the standardization loss hooks tensor "
                            f"outputs (leave it out with exclude=)")
        cd = self._cds[index]
        shape = output.shape
        if len(shape) < 2 or not -len(shape) <= cd < len(shape):
            reduction_dims(output, cd)  # raises the ValueError that says which
        if not output.is_floating_point():
            check_floating(output, f"the output of {self._candidates[index][0]!r}")
        channels = shape[cd]
        per_channel = output.numel() // channels if channels else 0
        if per_channel < 2:
            standardization_loss(output, cd)  # raises the ValueError that says why
        if torch.compiler.is_compiling():
            # Plain ops that inductor fuses; AOT autograd handles in-place activations.
            self._pending.append((index, self.layer_loss(output, cd), channels))
            return None
        if self._generic or implementation(output) == "kernel" or (
                self.stats == "global" and is_distributed(self.process_group)):
            # A subclass's term, the opt-in C++ kernel, or moments all-reduced across ranks.
            term = (global_standardization_loss(output, cd, self.eps, self.process_group)
                    if self.stats == "global" and is_distributed(self.process_group)
                    else self.layer_loss(output, cd))
            if not rerun:
                self._pending.append((index, term, channels))
            return output.clone()  # the term's graph keeps `output`: in-place ops get a copy
        if rerun:
            return None  # the taps save nothing in the graph
        cd = cd % len(shape)
        out, mean, var = tap(output, cd)
        self._pending.append(Tapped(index, mean, var, per_channel, output, cd))
        return out

    def _warn_only_in_backward(self, index: int) -> None:
        if not self._warned_backward:
            self._warned_backward = True
            warnings.warn(f"StandardizationLoss: {self._candidates[index][0]!r} ran in training "
                          f"mode only inside backward, never in a forward the loss could see "
                          f"(a block checkpointed with use_reentrant=True runs its forward "
                          f"without gradients), so the loss is 0 for it: checkpoint with "
                          f"use_reentrant=False", UserWarning, stacklevel=4)

    def _on_root_forward(self, module: nn.Module) -> None:
        if not self._final and self._order and not self._recording:
            self._finalize()

    def _record(self, model: nn.Module, example_input: Any) -> None:
        modes = [(m, m.training) for m in model.modules()]
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        self._recording = True
        try:
            model.eval()
            with torch.no_grad():
                model(*args)
        finally:
            self._recording = False
            for m, mode in modes:
                m.training = mode
        self._finalize()

    def _finalize(self) -> None:
        """Fix ``layers`` from the recorded execution: drop the logit layer (the last run, by
        default) and every hook that never fired."""
        fired = set(self._order)
        never = [i for i in range(len(self._candidates)) if i not in fired]
        drop = set(never)
        if self._auto_logit and self._order:
            drop.add(self._order[-1])
        if never:
            names = [self._candidates[i][0] for i in never]
            warnings.warn(f"StandardizationLoss: {len(names)} hooked layer(s) never ran in the "
                          f"first training forward and are left out: {names} (e.g. a module "
                          f"whose weight is used functionally, like "
                          f"nn.MultiheadAttention.out_proj, or one inside a block checkpointed "
                          f"with use_reentrant=True, whose forward runs without gradients)",
                          UserWarning, stacklevel=3)
        for i in drop:
            self._active[i] = False
            self._handles.pop(i).remove()
        self._pending = [e for e in self._pending if e[0] not in drop]
        self._order = []
        self._final = True
        self._root.remove()
        if not any(self._active):
            raise RuntimeError("StandardizationLoss: no hooked layer ran in the first training "
                               "forward besides the logit layer; pass layers= to choose modules "
                               "(blocks checkpointed with use_reentrant=True run their forward "
                               "without gradients, out of the loss's sight: checkpoint them "
                               "with use_reentrant=False)")

    # -- reading -------------------------------------------------------------------------------

    def __call__(self) -> Tensor:
        """The weighted, reduced loss of every training forward since the last call (0 if
        none); those outputs are consumed."""
        if not self._final and self._order:
            self._finalize()
        pending, self._pending = self._pending, []
        self._values = None
        if not pending:
            self._read = ()
            return torch.zeros(())
        fast = [e for e in pending if isinstance(e, Tapped)]
        terms = [e for e in pending if not isinstance(e, Tapped)]  # (index, term, channels)
        sizes = [e.mean.numel() for e in fast]
        total = sum(sizes) + sum(e[2] for e in terms)
        scale = self.weight / total if self.reduction == "mean" else self.weight
        loss = per_channel = None
        if fast:
            inv_m = self._inv_counts(fast, sizes)
            loss, per_channel = StandardizationSum.apply(scale, self.eps, inv_m, fast,
                                                         *(e.output for e in fast))
        for e in terms:
            loss = e[1] * scale if loss is None else loss + e[1] * scale
        # What values() reads: (layer index, channels' count M) of each tap, not the outputs.
        self._read = ([e.index for e in fast], sizes, per_channel, terms)
        return loss

    def _inv_counts(self, fast: list[Tapped], sizes: list[int]) -> Tensor:
        """``1/M`` per channel of the taps, cached per layout (one tensor per model shape)."""
        ref = fast[0].mean
        key = (ref.device, ref.dtype, tuple(zip(sizes, (e.count for e in fast))))
        inv = self._inv_m.get(key)
        if inv is None:
            if len(self._inv_m) > 16:
                self._inv_m.clear()
            inv = torch.cat([torch.full((c,), 1.0 / m, dtype=ref.dtype, device=ref.device)
                             for c, m in zip(sizes, (e.count for e in fast))])
            self._inv_m[key] = inv
        return inv

    def values(self) -> dict[str, float]:
        """Unweighted per-layer losses (summed over channels and calls) of the last read."""
        if self._values is None:
            values: dict[str, float] = {}
            if self._read:
                tapped, sizes, per_channel, terms = self._read
                if tapped:
                    sums = [0.5 * float(t.sum()) for t in per_channel.split(sizes)]
                    for index, v in zip(tapped, sums):
                        name = self._candidates[index][0]
                        values[name] = values.get(name, 0.0) + v
                for e in terms:
                    name = self._candidates[e[0]][0]
                    values[name] = values.get(name, 0.0) + float(e[1].detach())
            self._values = values
        return dict(self._values)

    # -- attributes and lifecycle --------------------------------------------------------------

    @property
    def layers(self) -> list[tuple[str, nn.Module]]:
        """The hooked ``(name, module)`` pairs (final after the first training forward)."""
        if self._final:
            return [c for c, on in zip(self._candidates, self._active) if on]
        return self._candidates[:-1] if self._auto_logit else list(self._candidates)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Detach every hook and drop pending and stored values. Safe to call twice."""
        for handle in self._handles.values():
            handle.remove()
        self._root.remove()
        self._handles = {}
        self._pending, self._read, self._values = [], (), {}

    def __enter__(self) -> "StandardizationLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __reduce__(self):
        raise TypeError("a StandardizationLoss is bound to its model's hooks and cannot be "
                        "copied or pickled; copy the model (copies carry no loss) and attach "
                        "a new StandardizationLoss to the copy")

    def __deepcopy__(self, memo):
        self.__reduce__()

    def __repr__(self) -> str:
        names = [n for n, _ in self.layers]
        extra = "" if self.stats == "replica" else f", stats={self.stats!r}"
        extra += "" if self.reduction == "sum" else f", reduction={self.reduction!r}"
        return f"StandardizationLoss(weight={self.weight}, layers={names}{extra})"

"""Where a standardization-loss training step's time goes, part by part, beside BatchNorm's.

``python -m normlab.lab.bench.std_parts [--models mlp,cnn] [--rounds 15]``

The standardization loss (Collins, Ballé & Shlens 2019, arXiv:1903.00925) as
:class:`~normlab.losses.StandardizationLoss` computes it does four things per step. Each
variant below does one more of them than the one before, so the differences between
neighbouring rows are what each part costs inside a real training step:

- ``hooks``: the forward hooks fire on every hooked layer and return at once; the loss read
  is a constant 0.
- ``+moments``: each hook also takes its output's per-channel moments (no graph).
- ``+copy``: and hands the network a copy of the output, which in-place activations after the
  layer may overwrite instead of what the loss keeps.
- ``std_loss``: and the read: one autograd node computes the loss of every hooked channel
  from the moments, and its backward adds ``a_c * x + b_c`` into each output's gradient.

The last difference is paid once per read, however many layers are hooked; the others once
per layer. ``none`` is the baseline and ``batch_norm`` the comparison. Steps are
:meth:`normlab.lab.train.Trainer.train_step`, timed in thread CPU time, interleaved and
rotated, one thread, as :mod:`normlab.lab.bench.cpu_time` does; each cell is the median ratio
to ``none`` with its interquartile range.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...losses.standardization import StandardizationLoss
from ...losses.taps import moments, tap
from ...methods import create_method
from ...methods.basic import StandardizationLossMethod
from .cases import BENCH_MODELS, make_setup
from .cpu_time import INNER, bench_args, cells, interleaved_ratios

__all__ = ["PARTS", "main"]


class _HooksOnly(StandardizationLoss):
    """The loss's hooks, doing :meth:`_part` of the work and nothing the read would need."""

    def _on_output(self, index: int, module: nn.Module, output):
        if not (module.training and torch.is_grad_enabled()) or not self._active[index]:
            return None
        if not self._final:
            self._order.append(index)  # the logit layer is still found and left out
        return self._part(output, self._cds[index] % output.dim())

    def _part(self, output: Tensor, cd: int):
        return None

    def __call__(self) -> Tensor:
        if not self._final and self._order:
            self._finalize()
        return torch.zeros(())


class _Moments(_HooksOnly):
    def _part(self, output: Tensor, cd: int):
        moments(output, cd)
        return None


class _Copy(_HooksOnly):
    def _part(self, output: Tensor, cd: int):
        return tap(output, cd)[0]


#: Variant name -> the loss class it trains with (``None``: the method's own).
PARTS: dict[str, type[StandardizationLoss] | None] = {
    "hooks": _HooksOnly, "+moments": _Moments, "+copy": _Copy, "std_loss": None}


class _PartMethod(StandardizationLossMethod):
    """``std_loss`` whose auxiliary loss is one of :data:`PARTS`."""

    def __init__(self, loss_class: type[StandardizationLoss]) -> None:
        super().__init__()
        self.loss_class = loss_class

    def auxiliary_loss(self, model: nn.Module) -> StandardizationLoss:
        return self.loss_class(model, weight=self.weight, eps=self.eps)


def _method(name: str):
    if name in ("none", "batch_norm"):
        return create_method(name)
    cls = PARTS[name]
    return create_method("std_loss") if cls is None else _PartMethod(cls)


def main(argv: list[str] | None = None) -> None:
    args = bench_args(argv, __doc__, "mlp,cnn")
    names = ["none", "batch_norm", *PARTS]
    for key in args.models.split(","):
        setups = {n: make_setup(BENCH_MODELS[key], _method(n)) for n in names}
        try:
            ratios = interleaved_ratios(setups, INNER.get(key, 1), args.rounds)
        finally:
            for s in setups.values():
                s.close()
        print(f"{key}: " + cells(ratios), flush=True)


if __name__ == "__main__":
    main()

"""``normlab bench layers``: forward+backward of each method's layer vs torch's BatchNorm2d.

The per-layer view of the training benchmark: each method's ``norm(C, 2)`` (and, for the
standardization loss of Collins, Ballé & Shlens 2019, arXiv:1903.00925, the loss itself) on
one pre-activation of the wide CNN's first layer, ``(128, 64, 16, 16)`` by default, timed
interleaved with ``torch.nn.BatchNorm2d`` (Ioffe & Szegedy 2015, arXiv:1502.03167). A step
is forward, a scalar reduction (``sum``; the loss for std_loss) and backward to the input.
Methods without a layer (weight and gradient methods, ``none``) are left out.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from ...functional.standardization import standardization_loss
from ...methods import Method
from .timing import Clock, calibrate_inner, interleaved_times, ratio_summary

__all__ = ["bench_layers", "BASELINE"]

BASELINE = "torch.BatchNorm2d"


def _layer_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer(x).sum().backward()

    return step


def _loss_step(x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        standardization_loss(x).backward()

    return step


def bench_layers(
    methods: dict[str, Method],
    shape: Sequence[int] = (128, 64, 16, 16),
    threads: Sequence[int] = (1, 2),
    repeats: int = 15,
    min_sample_s: float = 0.02,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time each method's layer (train mode) relative to ``torch.nn.BatchNorm2d``.

    Returns:
        One record per (threads, method with a layer) with ``ratio``/``q1``/``q3``/
        ``median_ms``; ``method`` is :data:`BASELINE` for the reference row.
    """
    x = (torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)) * 2 + 1)
    x = x.to(device).requires_grad_()
    channels = shape[1]
    fns: dict[str, Callable[[], None]] = {
        BASELINE: _layer_step(nn.BatchNorm2d(channels).to(device).train(), x)}
    for name, method in methods.items():
        if name == "std_loss" or method.auxiliary_loss.__func__ is not Method.auxiliary_loss:
            fns[name] = _loss_step(x)
            continue
        layer = method.norm(channels, len(shape) - 2)
        if layer is not None:
            fns[name] = _layer_step(layer.to(device).train(), x)
    clock = Clock(device)
    records = []
    for nthreads in threads:
        torch.set_num_threads(nthreads)
        inner = calibrate_inner(fns[BASELINE], min_sample_s, clock)
        load0 = os.getloadavg()[0]
        log(f"layers {tuple(shape)} threads={nthreads}: {len(fns)} layers, {repeats} rounds x "
            f"{inner} steps, load {load0:.2f}")
        times = interleaved_times(fns, repeats, warmup=2, inner=inner, clock=clock)
        for name, s in ratio_summary(times, BASELINE).items():
            records.append({"model": "x".join(map(str, shape)), "threads": nthreads,
                            "compile": False, "method": name, **s,
                            "load_before": load0, "load_after": os.getloadavg()[0]})
    return records

"""``normlab bench infer``: eval-mode latency of each method's deployed model vs the bare one.

Collins, Ballé & Shlens 2019, arXiv:1903.00925: a network trained with the standardization
loss deploys as the bare network, at no inference cost; batch normalization reaches the same
only once folded into the weights (Ioffe & Szegedy 2015, arXiv:1502.03167, section 3.1).

Each method's model is deployed as a user deploys it: auxiliary hooks removed, then
:func:`normlab.surgery.deploy_model` of ``model.eval()``. A second column folds whatever
eval-affine normalization the deployed model still holds
(:func:`normlab.surgery.fold_batch_norm`), so a method that does not declare ``folds`` shows
both what it delivers and what folding would. Latency is timed under
``torch.inference_mode`` at each batch size, interleaved with the bare model (``none``).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from ...methods import Method
from ...surgery import deploy_model, fold_batch_norm, is_norm_layer
from .cases import BENCH_MODELS, build_bench_model
from .timing import Clock, calibrate_inner, interleaved_times, ratio_summary

__all__ = ["bench_infer", "deploy"]


def deploy(method: Method, model: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """``(deployed, folded, n_folded)``: the method's deployment form and that form folded."""
    aux = method.auxiliary_loss(model)  # attach and remove as training would, then deploy
    if aux is not None:
        aux.remove()
    deployed = deploy_model(model.eval(), method).eval()
    if any(is_norm_layer(m) for m in deployed.modules()):
        result = fold_batch_norm(deployed)
        return deployed, result.model, len(result.folded)
    return deployed, deployed, 0


def bench_infer(
    methods: dict[str, Method],
    models: Sequence[str] = tuple(BENCH_MODELS),
    batches: Sequence[int] = (1, 128),
    threads: Sequence[int] = (1, 2),
    repeats: int = 15,
    min_sample_s: float = 0.02,
    baseline: str = "none",
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time the eval-mode forward of each method's deployed model relative to ``baseline``.

    Returns:
        One record per (model, threads, batch, method) with ``ratio``/``q1``/``q3``/
        ``median_ms`` for the deployed model and ``folded_ratio``/... for its folded form,
        ``n_folded`` and ``norm_layers_left`` (normalization modules still in the deployed
        model), or ``error``.
    """
    if baseline not in methods:
        raise KeyError(f"the baseline {baseline!r} must be among the methods")
    clock = Clock(device)
    records: list[dict] = []
    for key in models:
        if key not in BENCH_MODELS:
            raise KeyError(f"unknown benchmark model {key!r}; known: {', '.join(BENCH_MODELS)}")
        spec = BENCH_MODELS[key]
        built, errors = {}, {}
        for name, method in methods.items():
            try:
                torch.manual_seed(0)
                model = build_bench_model(spec, method).to(device)
                deployed, folded, n_folded = deploy(method, model)
                left = sum(is_norm_layer(m) for m in deployed.modules())
                built[name] = (deployed, folded, n_folded, left)
            except Exception as err:  # reported per method, the others still run
                if name == baseline:
                    raise
                errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                log(f"  {name}: {errors[name]}")
        for nthreads in threads:
            torch.set_num_threads(nthreads)
            for batch in batches:
                x = torch.randn((batch,) + tuple(spec.in_shape),
                                generator=torch.Generator().manual_seed(1)).to(device)
                fns = {}
                for name, (deployed, folded, _, _) in built.items():
                    fns[name] = _runner(deployed, x)
                    fns[f"{name}@folded"] = _runner(folded, x)
                inner = calibrate_inner(fns[baseline], min_sample_s, clock)
                load0 = os.getloadavg()[0]
                log(f"{key} threads={nthreads} batch={batch}: {len(built)} methods, "
                    f"{repeats} rounds x {inner} calls, load {load0:.2f}")
                with torch.inference_mode():
                    times = interleaved_times(fns, repeats, warmup=2, inner=inner, clock=clock)
                summary = ratio_summary(times, baseline)
                common = {"model": key, "threads": nthreads, "batch": batch,
                          "calls_per_sample": inner, "load_before": load0,
                          "load_after": os.getloadavg()[0]}
                for name in methods:
                    if name not in built:
                        records.append({**common, "method": name, "error": errors[name]})
                        continue
                    f = summary[f"{name}@folded"]
                    records.append({**common, "method": name, **summary[name],
                                    "folded_ratio": f["ratio"], "folded_q1": f["q1"],
                                    "folded_q3": f["q3"], "folded_median_ms": f["median_ms"],
                                    "n_folded": built[name][2],
                                    "norm_layers_left": built[name][3]})
    return records


def _runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run

"""``normlab bench memory``: peak memory of one training step per method, relative to ``none``.

Collins, Ballé & Shlens 2019, arXiv:1903.00925: the standardization loss adds no layer; it
keeps each hooked pre-activation alive until backward, as batch normalization keeps its
input. This measures what that costs.

How it is measured (CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``):
``torch.profiler`` with ``profile_memory=True`` records every allocation and free made
through PyTorch's CPU allocator with its size, read back from the profiler's public Chrome
trace export (its ``[memory]`` events). Two training steps are profiled; a sentinel
allocation of a unique size marks where the second begins. The peak is the largest running
sum of sizes during the second step, above its start, plus the bytes live at its start:
parameters, buffers, gradients and optimizer state (unique storages). Tensors allocated
outside PyTorch's allocator (e.g. inside oneDNN primitives) are not seen. The numbers are
deterministic for a given model and method, so one measurement suffices.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from ...methods import Method
from .cases import BENCH_MODELS, TrainSetup, make_setup

__all__ = ["bench_memory", "step_peak_bytes", "state_bytes"]

_SENTINEL = 1_234_567  # bytes; no training tensor has this size


def state_bytes(setup: TrainSetup) -> int:
    """Bytes of the unique storages of parameters, buffers, gradients and optimizer state."""
    seen: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for p in setup.model.parameters():
        add(p)
        add(p.grad)
    for b in setup.model.buffers():
        add(b)
    state = getattr(setup.optimizer, "state", {})
    for per_param in (state.values() if hasattr(state, "values") else []):
        for v in (per_param.values() if isinstance(per_param, dict) else []):
            add(v)
    return sum(seen.values())


_CPU = 0  # "Device Type" of a CPU event in the Chrome trace (c10::DeviceType::CPU)


def _allocations(prof: profile) -> list[tuple[float, int, int]]:
    """``(time_us, event_index, bytes)`` of every CPU allocation (bytes > 0) and free (< 0),
    in time order, from the profiler's Chrome trace."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    out = [(e["ts"], e["args"].get("Ev Idx", 0), e["args"]["Bytes"]) for e in events
           if e.get("name") == "[memory]" and e["args"].get("Device Type") == _CPU]
    return sorted(out)


def step_peak_bytes(step: Callable[[], object]) -> int:
    """Peak bytes allocated by ``step()`` above what was live when it began (see module doc).

    ``step`` runs twice under the profiler; the second run is measured, so tensors freed
    by it but allocated by the first (last step's gradients) are accounted for.

    Raises:
        RuntimeError: the profiler recorded no allocation events.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        pass  # the first profiler start in a process has its own allocations; not measured
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        mark = torch.empty(_SENTINEL, dtype=torch.uint8)
        del mark
        step()
    events = _allocations(prof)
    starts = [i for i, (_, _, size) in enumerate(events) if size == -_SENTINEL]
    if not starts:
        raise RuntimeError("the profiler recorded no CPU allocation events")
    running, peak = 0, 0
    for _, _, size in events[starts[-1] + 1:]:
        running += size
        peak = max(peak, running)
    return peak


def bench_memory(
    methods: dict[str, Method],
    models: Sequence[str] = tuple(BENCH_MODELS),
    baseline: str = "none",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Peak training-step memory of each method on each model, and its ratio to ``baseline``.

    Returns:
        One record per (model, method): ``state_mb`` (parameters, buffers, gradients,
        optimizer state), ``step_mb`` (peak above them during a step), ``peak_mb`` (their
        sum) and ``ratio`` (``peak_mb`` over the baseline's), or ``error``.
    """
    if baseline not in methods:
        raise KeyError(f"the baseline {baseline!r} must be among the methods")
    records: list[dict] = []
    for key in models:
        if key not in BENCH_MODELS:
            raise KeyError(f"unknown benchmark model {key!r}; known: {', '.join(BENCH_MODELS)}")
        rows: dict[str, dict] = {}
        for name, method in methods.items():
            try:
                setup = make_setup(BENCH_MODELS[key], method)
                setup.step()  # optimizer state and gradients exist from now on
                step_b = step_peak_bytes(setup.step)
                state_b = state_bytes(setup)
                setup.close()
                rows[name] = {"state_mb": state_b / 2**20, "step_mb": step_b / 2**20,
                              "peak_mb": (state_b + step_b) / 2**20}
            except Exception as err:  # reported per method
                if name == baseline:
                    raise
                rows[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
                log(f"  {name}: {rows[name]['error']}")
        base = rows[baseline]["peak_mb"]
        log(f"{key}: {baseline} peaks at {base:.1f} MiB")
        for name, row in rows.items():
            if "peak_mb" in row:
                row["ratio"] = row["peak_mb"] / base
            records.append({"model": key, "method": name, **row})
    return records

"""``normlab bench train|infer|memory``: cost of every method in time and memory.

See :mod:`normlab.lab.bench`. Timings need glibc's allocator settings from process start
(:mod:`normlab.lab.bench.allocator`): when they are missing, the command re-executes itself
with them set, or runs anyway with ``--default-malloc`` and says so in its output.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from ...methods import METHODS, create_method
from ..bench.allocator import MALLOC_ENV, MALLOC_REASON, malloc_env_ok
from ..bench.cases import BENCH_MODELS
from ..bench.output import machine_info, markdown_table, write_results
from ..outdir import claim_out

_KINDS = ("train", "infer", "memory", "layers")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time and memory of each method (train, infer, memory, layers)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=_KINDS, help="which benchmark")
    p.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    p.add_argument("--models", default=",".join(BENCH_MODELS),
                   help="comma-separated benchmark models (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="torch thread counts (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timed rounds "
                   "(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    p.add_argument("--min-sample", type=float, default=0.02,
                   help="seconds each timing sample lasts at least (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="train: torch.compile every model")
    p.add_argument("--batches", default="1,128", help="infer: batch sizes (default: %(default)s)")
    p.add_argument("--baseline", default="none", help="the method ratios divide by")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (timed with CUDA events)")
    p.add_argument("--out", type=Path, default=Path("results") / "bench",
                   help="folder for <kind>.json and <kind>.md (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing <kind>.json/<kind>.md in --out (default: refuse)")
    p.add_argument("--default-malloc", action="store_true",
                   help="time with the allocator settings this process started with")
    p.set_defaults(func=run)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{what} needs positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _ensure_malloc(args: argparse.Namespace) -> str:
    """Re-exec with the allocator settings if needed; return a note for the output."""
    if malloc_env_ok():
        return ""
    if args.kind == "memory":  # counts allocations; the allocator's caching does not matter
        return ""
    if args.default_malloc:
        return f"note: timed without the allocator settings ({MALLOC_REASON}): times are inflated and noisy"
    if sys.argv[1:2] == ["bench"]:  # started as `normlab bench ...`: restart with them set
        print(f"normlab bench: restarting with {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}"
              f" ({MALLOC_REASON})", flush=True)
        env = {**os.environ, **MALLOC_ENV}
        os.execve(sys.executable, [sys.executable, "-m", "normlab", *sys.argv[1:]], env)
    raise ValueError(f"set {' and '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} before "
                     f"starting Python ({MALLOC_REASON}), or pass --default-malloc")


def _check_device(text: str) -> None:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device expects cpu or cuda[:i], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device expects cpu or cuda[:i], got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: this torch build has no usable CUDA device "
                             f"(torch {torch.__version__}, cuda {torch.version.cuda})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA "
                             "device(s)")


def _check_args(args: argparse.Namespace) -> None:
    """Every option checked before any timing, each error naming its option."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not (math.isfinite(args.min_sample) and args.min_sample >= 0):
        raise ValueError(f"--min-sample must be a finite number of seconds >= 0, got "
                         f"{args.min_sample}")
    if args.compile and args.kind != "train":
        raise ValueError("--compile applies to `bench train` only")
    _ints(args.threads, "threads")
    _ints(args.batches, "batches")
    _check_device(args.device)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    note = _ensure_malloc(args)
    stem = args.kind + ("_compiled" if args.compile else "")
    out = claim_out(args.out, (f"{stem}.json", f"{stem}.md"), args.overwrite).path
    names = _names(args.methods) or list(METHODS)
    if args.baseline not in names:
        names = [args.baseline] + names
    methods = {n: create_method(n) for n in names}
    models = _names(args.models)
    for key in models:
        if key not in BENCH_MODELS:
            raise KeyError(f"unknown benchmark model {key!r}; known: {', '.join(BENCH_MODELS)}")
    if args.kind == "memory":
        print("memory: torch.profiler allocation events of one training step")
    else:
        print(note or f"timing with {MALLOC_REASON}")
    meta = machine_info()
    meta["note"] = note
    threads = _ints(args.threads, "threads")
    if args.kind == "train":
        from ..bench.train import bench_train

        records = bench_train(methods, models, threads, compile=args.compile,
                              repeats=args.repeats, warmup=args.warmup,
                              min_sample_s=args.min_sample, baseline=args.baseline,
                              device=args.device)
    elif args.kind == "infer":
        from ..bench.infer import bench_infer

        records = bench_infer(methods, models, _ints(args.batches, "batches"), threads,
                              repeats=args.repeats, min_sample_s=args.min_sample,
                              baseline=args.baseline, device=args.device)
    elif args.kind == "layers":
        from ..bench.layers import bench_layers

        records = bench_layers(methods, threads=threads, repeats=args.repeats,
                               min_sample_s=args.min_sample, device=args.device)
    else:
        from ..bench.memory import bench_memory

        records = bench_memory(methods, models, baseline=args.baseline)
    meta["load_average_after"] = os.getloadavg()
    js, md = write_results(args.kind, records, meta, out, stem=stem)
    print(markdown_table(args.kind, records))
    print(f"wrote {js} and {md}")
    return 0

"""``normlab run`` (one method) and ``normlab compare`` (several), each over several seeds
and, with ``--batch-sizes``, several batch sizes; on the lab's models and data or the user's
(``--model MODULE:FUNCTION``, ``--dataset data.npz``).

Each finished run is saved in ``OUT/runs/`` as it ends; Ctrl-C or SIGTERM stops every
process, keeps those runs and says so in one line, and ``--resume`` trains only the others.

With ``--nproc N`` (or under ``torchrun``) every seed trains data parallel on N processes
(:mod:`normlab.distributed`); rank 0 alone prints and writes the results folder.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ...distributed import RankFailedError, Replica, launch
from ...methods import METHODS
from ..bench.allocator import tune_malloc
from ..experiment import run_experiment
from ..outdir import claim_out
from ..parallel import Terminated, WorkerError, terminate_as_interrupt
from ..report import REPORT_FILES, format_batch_table, format_table, write_report
from ..runstore import RunStore
from ._options import (add_config_args, batch_sizes_from_args, config_from_args,
                       dataset_from_args, dataset_spec, distributed_from_args, methods_from_args,
                       model_from_args)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train one model/dataset/method over several seeds")
    run.add_argument("--method", default="std_loss", help="method name (normlab list methods)")
    add_config_args(run)
    run.set_defaults(func=main_run)
    cmp = sub.add_parser("compare", help="several methods side by side on one configuration")
    cmp.add_argument("--methods", default="none,batch_norm,std_loss",
                     help="comma-separated method names, or 'all' (default: %(default)s)")
    add_config_args(cmp)
    cmp.set_defaults(func=main_compare)


def _train_and_report(replica: Replica | None, args: argparse.Namespace, names: list[str],
                      kind: str, command: str) -> int:
    """One process's share of a run; the whole run when ``replica`` is None."""
    main = replica is None or replica.is_main
    config = config_from_args(args)
    methods = methods_from_args(names, args)
    if replica is not None and not main:
        replica.barrier()  # rank 0 loads (and may download) the data first
    data = dataset_from_args(args)
    if replica is not None and main:
        replica.barrier()
    if replica is not None and replica.device.type != "cpu":
        data = data.to(replica.device)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    model_fn = model_from_args(args)
    model_name = model_fn.label if model_fn is not None else config.model
    out = args.out or Path("results") / kind / f"{model_name}-{data.name}"
    sizes = batch_sizes_from_args(args)
    n_train = len(data.x_train) if hasattr(data, "x_train") else len(data)
    for b in sizes or [config.batch_size]:
        if b > n_train:
            raise ValueError(f"batch size {b} is larger than the {n_train} training examples")
    if data.note and main:
        print(f"note: {data.note}")
    store = RunStore(out)
    try:
        exp = run_experiment(config, data, methods, seeds, progress=not args.no_progress,
                             replica=replica, jobs=args.jobs, data_spec=dataset_spec(args),
                             batch_sizes=sizes, lr_scaling=args.lr_scaling, model_fn=model_fn,
                             model_name=model_name, store=store if main else None,
                             resume=args.resume, eta=replica is None)
    except (KeyboardInterrupt, WorkerError) as err:
        if not main:
            raise
        what = ("terminated (SIGTERM)" if isinstance(err, Terminated) else
                "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else f"error: {err}")
        print(f"normlab {args.command}: {what}; {store.count()} finished runs kept in "
              f"{store.folder} (add --resume to continue)", file=sys.stderr)
        if isinstance(err, KeyboardInterrupt):  # the shell's codes: 128 + signal number
            return 143 if isinstance(err, Terminated) else 130
        return 1
    if main:
        for label, done in exp.surgery.items():
            print(f"{label}: {done}")
        payload = write_report(exp, out, baseline=args.baseline, command=command)
        if len(exp.batch_sizes) > 1:
            print(format_batch_table(payload["summary"]))
        print(format_table(payload["summary"]))
        print(f"wrote {out}/report.md, results.json, {', '.join(payload['plots'])}, runs/")
    return 0


def _execute(args: argparse.Namespace, names: list[str], kind: str) -> int:
    # Check every argument here, before any process starts: bad input is one clear line.
    config = config_from_args(args)
    methods_from_args(names, args)
    dist = distributed_from_args(args, config)
    model_from_args(args)  # an unimportable --model fails here, in one line
    for b in batch_sizes_from_args(args) or []:
        if b % dist.nproc:
            raise ValueError(f"--batch-sizes: {b} is not divisible by the {dist.nproc} processes")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and dist.nproc > 1:
        raise ValueError("--jobs runs seeds side by side; --nproc splits each run: choose one")
    if os.environ.get("RANK", "0") == "0":  # checked and locked before any work; rank 0 writes
        args.out = claim_out(args.out or Path("results") / kind / f"{config.model}-{args.dataset}",
                             REPORT_FILES, args.overwrite, keep=getattr(args, "resume", False)).path
    tune_malloc()  # training steps run up to 3.5x faster with freed buffers kept (see bench)
    command = "normlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up as Ctrl-C does
            return launch(_train_and_report, (args, names, kind, command), dist)
    except RankFailedError as err:
        print(f"normlab {args.command}: error: {err}", file=sys.stderr)
        return 1


def main_run(args: argparse.Namespace) -> int:
    return _execute(args, [args.method], "run")


def main_compare(args: argparse.Namespace) -> int:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if names == ["all"]:  # the baseline first, then every registered method
        names = [args.baseline] + [n for n in METHODS.names() if n != args.baseline]
    return _execute(args, names, "compare")

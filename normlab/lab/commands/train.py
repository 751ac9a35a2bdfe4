"""``normlab run`` (one method) and ``normlab compare`` (several), each over several seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiment import run_experiment
from ..report import format_table, write_report
from ._options import add_config_args, config_from_args, dataset_from_args, methods_from_args


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train one model/dataset/method over several seeds")
    run.add_argument("--method", default="std_loss", help="method name (normlab list methods)")
    add_config_args(run)
    run.set_defaults(func=main_run)
    cmp = sub.add_parser("compare", help="several methods side by side on one configuration")
    cmp.add_argument("--methods", default="none,batch_norm,std_loss",
                     help="comma-separated method names (default: %(default)s)")
    add_config_args(cmp)
    cmp.set_defaults(func=main_compare)


def _execute(args: argparse.Namespace, names: list[str], kind: str) -> int:
    config = config_from_args(args)
    methods = methods_from_args(names, args)
    data = dataset_from_args(args)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = args.out or Path("results") / kind / f"{config.model}-{data.name}"
    if data.note:
        print(f"note: {data.note}")
    exp = run_experiment(config, data, methods, seeds, progress=not args.no_progress)
    payload = write_report(exp, out, baseline=args.baseline)
    print(format_table(payload["summary"]))
    print(f"wrote {out}/report.md, results.json, accuracy.png, loss.png")
    return 0


def main_run(args: argparse.Namespace) -> int:
    return _execute(args, [args.method], "run")


def main_compare(args: argparse.Namespace) -> int:
    return _execute(args, [m.strip() for m in args.methods.split(",") if m.strip()], "compare")

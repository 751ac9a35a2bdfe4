"""``normlab reproduce NAME [--quick]``: one command per paper figure (``--list``, ``all``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..datasets import GENERATED
from ..outdir import claim_out
from ..reproduce import EXPERIMENTS, get_experiment, reproduce, tune_malloc
from ..reproduce.report import comparison_table
from ._options import parse_key_values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper figure and compare with the paper")
    p.add_argument("name", nargs="?", help="experiment name (see --list) or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test version")
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (with 'all': parent of one folder per experiment)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files")
    p.add_argument("--no-download", action="store_true", help="never download data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing result in the results folder (default: refuse)")
    p.add_argument("--jobs", type=int, default=1,
                   help="independent runs on this many single-threaded worker processes "
                        "(same results as one process)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="replace one of the experiment's parameters (a Python literal, e.g. "
                        "--param epochs=8 --param batch_sizes=2,8,32); the report says so")
    p.set_defaults(func=run)


def _list() -> int:
    for spec in EXPERIMENTS.values():
        print(f"  {spec.name:<20} {spec.title} [{spec.dataset}; {spec.paper}]")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        return _list()
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    names = list(EXPERIMENTS) if args.name == "all" else [get_experiment(args.name).name]
    params = parse_key_values(args.param, "--param")
    if params and len(names) > 1:
        raise ValueError("--param applies to one experiment, not to 'all'")
    for name in names:  # check before anything runs: bad input is one clear line
        spec = get_experiment(name).resolve(args.quick, args.seeds, params)
        if args.data_dir is not None and spec.dataset in GENERATED and len(names) == 1:
            raise ValueError(f"--data-dir: {name}{' --quick' if args.quick else ''} uses the "
                             f"generated {spec.dataset} dataset, which takes no data folder "
                             f"(leave --data-dir out)")
    # Every results folder checked and locked before the first experiment starts.
    outs = {}
    for name in names:
        out = args.out
        if out is not None and len(names) > 1:
            out = out / name
        out = out or Path("results") / ("reproduce-quick" if args.quick else "reproduce") / name
        outs[name] = claim_out(out, ("results.json", "report.md", "*.png"), args.overwrite).path
    tune_malloc()
    command = "normlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for name in names:
        out = outs[name]
        payload = reproduce(name, quick=args.quick, out=out, data_dir=args.data_dir,
                            download=not args.no_download, seeds=args.seeds,
                            progress=not args.no_progress,
                            command=command if len(names) == 1 else None, params=params,
                            jobs=args.jobs)
        print(f"\n== {name} ({payload['runtime']})")
        print(comparison_table(payload["paper_vs_normlab"], "see report.md"))
        print(f"wrote {out}/report.md, results.json and {', '.join(payload['plots'])}")
    return 0

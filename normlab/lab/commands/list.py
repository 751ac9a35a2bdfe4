"""``normlab list``: the registered methods, models and datasets."""

from __future__ import annotations

import argparse

from ...methods import METHODS, create_method
from ..data import DATASETS
from ..models import MODELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list methods, models and datasets")
    p.add_argument("what", nargs="?", choices=("methods", "models", "datasets"),
                   help="only this registry")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what in (None, "methods"):
        print(f"methods ({len(METHODS)}):")
        for name in METHODS:
            m = create_method(name)
            batch = "batch-dependent" if m.batch_dependent else "batch-independent"
            print(f"  {name:<32} {m.kind:<9} {batch:<18} {m.paper}")
    if args.what in (None, "models"):
        print(f"models: {', '.join(MODELS.names())}")
    if args.what in (None, "datasets"):
        print(f"datasets: {', '.join(DATASETS.names())}")
    return 0

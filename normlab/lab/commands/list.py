"""``normlab list``: the registered methods, models and datasets.

``normlab list methods --markdown [--results results.json]`` prints the README's methods table:
each method's paper, kind, batch dependence and inference cost, plus its final accuracy from
a ``normlab compare`` results file when one is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...methods import METHODS, create_method
from ..datasets import DATASETS
from ..models import MODELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list methods, models and datasets")
    p.add_argument("what", nargs="?", choices=("methods", "models", "datasets"),
                   help="only this registry")
    p.add_argument("--markdown", action="store_true", help="methods as a markdown table")
    p.add_argument("--results", type=Path, default=None,
                   help="a compare results.json whose accuracies join the markdown table")
    p.set_defaults(func=run)


def _accuracies(path: Path | None) -> tuple[dict[str, str], str]:
    if path is None:
        return {}, ""
    try:
        res = json.loads(Path(path).read_text())
        rows = {r["method"]: r for r in res["summary"]}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read a compare results file from {path}: {err}") from None
    cells = {}
    for name, r in rows.items():
        cell = f"{100 * r['final_acc_mean']:.1f} ± {100 * r['final_acc_std']:.1f}"
        if r.get("diverged_seeds"):
            cell += f" ({len(r['diverged_seeds'])} diverged)"
        cells[name] = cell
    cfg = res["config"]
    head = (f"{cfg['model']}/{res['dataset']['name']} acc % ({cfg['steps']} steps, "
            f"{len(res['seeds'])} seeds)")
    return cells, head


def _markdown(results: Path | None) -> str:
    acc, head = _accuracies(results)
    cols = ["method", "paper", "kind", "batch-dependent", "at inference"] + ([head] if head else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in METHODS:
        m = create_method(name)
        row = [f"`{name}`", m.paper, m.kind, "yes" if m.batch_dependent else "no", m.inference]
        if head:
            row.append(acc.get(name, "not run"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(_markdown(args.results))
        return 0
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

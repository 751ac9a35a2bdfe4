"""Results folder of an experiment: results.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

from .experiment import Experiment, environment, summarize
from .metrics import format_speedup, recovered_fraction
from .plots import plot_accuracy, plot_losses

__all__ = ["write_report", "format_table", "json_safe"]


def _fmt_speedup(row: dict) -> str:
    if row["method"] == row["baseline"]:
        return "1.00x (baseline)"
    return format_speedup(row["speedup"], row.get("speedup_at_cap", False))


def _fmt_steps(steps: float | None) -> str:
    return "never" if steps is None else f"{steps:.0f}" if steps >= 10 else f"{steps:.2g}"


def format_table(rows: list[dict]) -> str:
    """The markdown table of a summary (one row per method), then its resolution line."""
    lines = [
        "| method | final test acc (mean ± std) | steps to baseline's best | speed-up | s/run |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{100 * r['final_acc_mean']:.2f} ± {100 * r['final_acc_std']:.2f}%"
        if r["diverged_seeds"]:
            acc += f" ({len(r['diverged_seeds'])} diverged)"
        lines.append(f"| {r['method']} | {acc} | {_fmt_steps(r['steps_to_target'])} "
                     f"| {_fmt_speedup(r)} | {r['seconds_per_run']:.1f} |")
    if rows and rows[0].get("resolution"):
        lines += ["", rows[0]["resolution"]]
    return "\n".join(lines)


def _recovered(rows: list[dict], reference: str = "batch_norm") -> list[str]:
    """The share of BN's final-accuracy gain over the baseline each other method recovers."""
    by = {r["method"]: r["final_acc_mean"] for r in rows}
    base = rows[0]["baseline"] if rows else None
    if reference not in by or base not in by or by[reference] <= by[base]:
        return []
    parts = [f"{k} {100 * recovered_fraction(by[base], by[reference], v):.0f}%"
             for k, v in by.items() if k not in (base, reference)]
    return ([f"Share of `{reference}`'s final-accuracy gain over `{base}` recovered "
             f"((method - {base}) / ({reference} - {base})): " + ", ".join(parts) + ".", ""]
            if parts else [])


def json_safe(obj):
    """``obj`` with every non-finite float (nested in dicts, lists, tuples) as ``None``,
    which JSON can hold."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_report(exp: Experiment, out: Path, baseline: str | None = "none",
                 command: str | None = None) -> dict:
    """Write ``results.json``, ``report.md``, ``accuracy.png`` and ``loss.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(exp, baseline)
    command = command or "normlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = exp.dataset
    payload = {
        "command": command,
        "config": exp.config.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "note": data.note,
                    "train": len(data.x_train), "test": len(data.x_test)},
        "seeds": exp.seeds,
        "methods": {k: {"name": m.name, "kind": m.kind, "options": m.options()}
                    for k, m in exp.methods.items()},
        "environment": environment(),
        "distributed": exp.distributed,
        "summary": rows,
        "runs": {k: [r.to_dict() for r in runs] for k, runs in exp.runs.items()},
    }
    (out / "results.json").write_text(json.dumps(json_safe(payload), indent=1))
    plot_accuracy(exp, out / "accuracy.png")
    plot_losses(exp, out / "loss.png")
    cfg = exp.config
    lines = [
        f"# {cfg.model} on {data.name}: {', '.join(exp.runs)}",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {data.name}, {len(data.x_train)} train / {len(data.x_test)} test images "
        f"({data.source}).",
    ]
    if data.note:
        lines += ["", f"**Note: {data.note}**"]
    lines += [
        "",
        f"Budget: {cfg.steps} steps, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}"
        f" (momentum {cfg.momentum}), weight decay {cfg.weight_decay}; init {cfg.init}, inputs "
        f"{cfg.input_scaling}; {len(exp.seeds)} seeds "
        f"({', '.join(map(str, exp.seeds))}); test set evaluated every {cfg.eval_every} steps"
        + (" and at steps 1, 2, 4, 8, ... (log-spaced schedule)." if cfg.eval_schedule == "log"
           else "."),
        "",
        *([f"Data parallel: {exp.distributed['world_size']} processes, "
           f"{exp.distributed['stats']} batch statistics, {exp.distributed['backend']}.", ""]
          if exp.distributed else []),
        format_table(rows),
        "",
        f"Speed-up (arXiv:1903.00925): steps `{rows[0]['baseline']}` needs to reach its best "
        f"seed-mean test accuracy ({100 * rows[0]['target_acc']:.2f}%), divided by the steps "
        "each method's seed-mean curve needs to reach it (interpolated linearly between "
        "evaluations); 'never' if it does not within the budget. A diverged run counts at "
        "chance accuracy from then on.",
        "",
        *_recovered(rows),
        "![test accuracy](accuracy.png)",
        "",
        "![losses](loss.png)",
        "",
        f"Environment: torch {payload['environment']['torch']}, "
        f"{payload['environment']['platform']}, {payload['environment']['torch_threads']} threads.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return payload

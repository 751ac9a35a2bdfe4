"""Results folder of an experiment: results.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

from .atomic import atomic_write
from .experiment import Experiment, environment, summarize
from .plots import plot_accuracy, plot_losses

__all__ = ["write_report", "format_table", "json_safe", "REPORT_FILES"]

# What write_report puts in a results folder (normlab.lab.outdir.claim_out refuses to mix
# them with an earlier run's).
REPORT_FILES = ("results.json", "report.md", "accuracy.png", "loss.png")


def _fmt_speedup(row: dict) -> str:
    if row["method"] == row["baseline"]:
        return "1.00x (baseline)"
    return "never" if row["speedup"] is None else f"{row['speedup']:.2f}x"


def format_table(rows: list[dict]) -> str:
    """The markdown table of a summary (one row per method)."""
    lines = [
        "| method | final test acc (mean ± std) | steps to baseline's best | speed-up | s/run |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        steps = "never" if r["steps_to_target"] is None else str(r["steps_to_target"])
        acc = f"{100 * r['final_acc_mean']:.2f} ± {100 * r['final_acc_std']:.2f}%"
        if r["diverged_seeds"]:
            acc += f" ({len(r['diverged_seeds'])} diverged)"
        lines.append(f"| {r['method']} | {acc} | {steps} | {_fmt_speedup(r)} "
                     f"| {r['seconds_per_run']:.1f} |")
    return "\n".join(lines)


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


def _run_record(run, chance: float) -> dict:
    """A run as results.json holds it. A diverged run counts at chance accuracy from its
    divergence on (as the summary counts it), so its ``final_acc`` is chance; the last
    accuracy it measured is kept as ``acc_before_divergence``."""
    record = run.to_dict()
    if run.diverged_at is not None:
        record["acc_before_divergence"] = record.get("final_acc")
        record["final_acc"] = chance
    return record


def write_report(exp: Experiment, out: Path, baseline: str | None = "none",
                 command: str | None = None, threads: int | None = None) -> dict:
    """Write ``results.json``, ``report.md``, ``accuracy.png`` and ``loss.png`` into ``out``.

    ``threads``: the torch threads each run used when not this process's count (runs in
    single-threaded worker processes, ``--jobs``)."""
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
        "environment": environment() | ({"torch_threads": str(threads)} if threads else {}),
        "distributed": exp.distributed,
        "summary": rows,
        "runs": {k: [_run_record(r, 1.0 / data.num_classes) for r in runs]
                 for k, runs in exp.runs.items()},
    }
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
        f" (momentum {cfg.momentum}), weight decay {cfg.weight_decay}; {len(exp.seeds)} seeds "
        f"({', '.join(map(str, exp.seeds))}); test set evaluated every {cfg.eval_every} steps.",
        "",
        *([f"Data parallel: {exp.distributed['world_size']} processes, "
           f"{exp.distributed['stats']} batch statistics, {exp.distributed['backend']}.", ""]
          if exp.distributed else []),
        format_table(rows),
        "",
        f"Speed-up (arXiv:1903.00925): steps `{rows[0]['baseline']}` needs to reach its best "
        f"seed-mean test accuracy ({100 * rows[0]['target_acc']:.2f}%), divided by the steps "
        "each method's seed-mean curve needs to reach it; 'never' if it does not within the "
        "budget. A diverged run counts at chance accuracy from then on.",
        "",
        "![test accuracy](accuracy.png)",
        "",
        "![losses](loss.png)",
        "",
        f"Environment: torch {payload['environment']['torch']}, "
        f"{payload['environment']['platform']}, {payload['environment']['torch_threads']} threads.",
    ]
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    # Last, each file atomically: a results.json on disk means the whole folder was written.
    atomic_write(out / "results.json", json.dumps(json_safe(payload), indent=1))
    return payload

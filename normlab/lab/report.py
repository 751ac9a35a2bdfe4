"""Results folder of an experiment: results.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

from .atomic import atomic_write
from .experiment import Experiment, data_info, environment, summarize
from .plots import plot_accuracy, plot_aux_loss, plot_batch_sizes, plot_losses
from .metrics import format_speedup, recovered_fraction

__all__ = ["write_report", "format_table", "format_batch_table", "json_safe", "REPORT_FILES"]

# What write_report puts in a results folder (normlab.lab.outdir.claim_out refuses to mix
# them with an earlier run's).
REPORT_FILES = ("results.json", "report.md", "accuracy.png", "loss.png", "aux_loss.png",
                "batch_size.png")


def _fmt_speedup(row: dict) -> str:
    reason = row.get("speedup_reason")
    if row["method"] == row["baseline"] and not reason:
        return "1.00x (baseline)"
    return format_speedup(row["speedup"], row.get("speedup_at_cap", False), reason)


def _single_method(rows: list[dict]) -> bool:
    """One method only: its speed-up would be against itself, so tables leave it out."""
    return len({r["method"] for r in rows}) == 1


def _fmt_steps(steps: float | None) -> str:
    return "never" if steps is None else f"{steps:.0f}" if steps >= 10 else f"{steps:.2g}"


def _fmt_value(row: dict, mean: float, std: float | None = None) -> str:
    """Accuracy in percent; a regression error as it is (4 significant digits)."""
    if row.get("metric", "accuracy") == "accuracy":
        return f"{100 * mean:.2f}%" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}%"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _metric_title(rows: list[dict]) -> str:
    metric = rows[0].get("metric", "accuracy") if rows else "accuracy"
    return "acc" if metric == "accuracy" else f"{metric}, lower is better"


def format_table(rows: list[dict]) -> str:
    """The markdown table of a summary (one row per method, and batch size if several), then
    its resolution line; with one method, no steps-to-target or speed-up column and no
    resolution line."""
    sweep = len({r.get("batch_size") for r in rows}) > 1
    single = _single_method(rows)
    # With one method there is no baseline to reach: no steps-to-target, no speed-up.
    compared = "" if single else "steps to baseline's best | speed-up | "
    lines = [
        ("| batch | " if sweep else "| ") + f"method | final test {_metric_title(rows)} "
        "(mean ± std) | " + compared + "s/run |",
        "|---" * (5 + sweep - 2 * single) + "|",
    ]
    for r in rows:
        steps = "–" if r.get("speedup_reason") else _fmt_steps(r["steps_to_target"])
        acc = _fmt_value(r, r["final_acc_mean"], r["final_acc_std"])
        if r["diverged_seeds"]:
            acc += f" ({len(r['diverged_seeds'])} diverged)"
        lines.append(("| " + str(r["batch_size"]) + " " if sweep else "")
                     + f"| {r['method']} | {acc} | "
                     + ("" if single else f"{steps} | {_fmt_speedup(r)} | ")
                     + f"{r['seconds_per_run']:.1f} |")
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows if r.get("resolution")))
    if resolutions and not single:
        lines += ["", *resolutions]
    return "\n".join(lines)


def format_batch_table(rows: list[dict]) -> str:
    """Methods x batch sizes: the final test metric (mean ± std over seeds)."""
    sizes = list(dict.fromkeys(r["batch_size"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["batch_size"]): r for r in rows}
    lines = [f"| method | " + " | ".join(f"batch {b}" for b in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            _fmt_value(cell[m, b], cell[m, b]["final_acc_mean"], cell[m, b]["final_acc_std"])
            for b in sizes) + " |")
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
    """Write ``results.json``, ``report.md``, ``accuracy.png``, ``loss.png``,
    ``aux_loss.png`` (when a method has an auxiliary loss) and, for a batch-size sweep,
    ``batch_size.png`` into ``out``; ``payload["plots"]`` names the PNGs written.

    ``threads``: the torch threads each run used when not this process's count (runs in
    single-threaded worker processes, ``--jobs``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(exp, baseline)
    command = command or "normlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = exp.dataset
    info = data_info(data)
    sweep = len(exp.batch_sizes) > 1
    payload = {
        "command": command,
        "config": exp.config.to_dict(),
        "dataset": info | {"note": data.note},
        "seeds": exp.seeds,
        "batch_sizes": exp.batch_sizes,
        "lr_scaling": exp.lr_scaling,
        "model_surgery": exp.surgery,
        "methods": {k: {"name": m.name, "kind": m.kind, "options": m.options()}
                    for k, m in exp.methods.items()},
        "environment": environment(threads or exp.threads),
        "distributed": exp.distributed,
        "summary": rows,
        "runs": {k: [_run_record(r, 1.0 / data.num_classes) for r in runs]
                 for k, runs in exp.runs.items()},
    }
    plot_accuracy(exp, out / "accuracy.png")
    plot_losses(exp, out / "loss.png")
    aux_plot = plot_aux_loss(exp, out / "aux_loss.png")  # None: no method has one
    payload["plots"] = ["accuracy.png", "loss.png"] + (["aux_loss.png"] if aux_plot else []) + (
        ["batch_size.png"] if sweep else [])
    if sweep:
        plot_batch_sizes(exp, rows, out / "batch_size.png")
    cfg = exp.config
    lines = [
        f"# {cfg.model} on {data.name}: {', '.join(exp.runs)}",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {data.name}, {info['train']} train / {info['test'] or '?'} test examples "
        f"({data.source}); {info['task']}, test metric: {rows[0]['metric']}"
        + ("" if rows[0]["metric"] == "accuracy" else " (lower is better)") + ".",
    ]
    if exp.surgery:
        lines += ["", "What was done to the model for each method:", ""]
        lines += [f"- {k}: {v}" for k, v in exp.surgery.items()]
    if data.note:
        lines += ["", f"**Note: {data.note}**"]
    lines += [
        "",
        f"Budget: {cfg.steps} steps, batch "
        + (", ".join(f"{r['batch_size']} (lr {r['lr']:.3g})" for r in rows
                     if r["method"] == rows[0]["method"]) + f" (lr scaling: {exp.lr_scaling})"
           if sweep else f"{cfg.batch_size}")
        + f", {cfg.optimizer} lr {cfg.lr}"
        f" (momentum {cfg.momentum}), weight decay {cfg.weight_decay}; init {cfg.init}, inputs "
        f"{cfg.input_scaling}; {len(exp.seeds)} seeds "
        f"({', '.join(map(str, exp.seeds))}); test set evaluated every {cfg.eval_every} steps"
        + (" and at steps 1, 2, 4, 8, ... (log-spaced schedule)." if cfg.eval_schedule == "log"
           else "."),
        "",
        *([f"Data parallel: {exp.distributed['world_size']} processes, "
           f"{exp.distributed['stats']} batch statistics, {exp.distributed['backend']}.", ""]
          if exp.distributed else []),
        *([f"## Final test {_metric_title(rows)} per batch size", "",
           format_batch_table(rows), "", "![metric vs batch size](batch_size.png)", ""]
          if sweep else []),
        format_table(rows),
        "",
        *([] if _single_method(rows) else [
            f"Speed-up (arXiv:1903.00925): steps `{rows[0]['baseline']}` needs to reach its "
            f"best seed-mean test {rows[0]['metric']} ("
            + ("at each batch size" if sweep else _fmt_value(rows[0], rows[0]["target_acc"]))
            + "), divided by the steps each method's seed-mean curve needs to reach it "
            "(interpolated linearly between evaluations); 'never' if it does not within the "
            "budget; none at all when the baseline diverged in every seed or never beat its "
            "untrained model (and, classifying, a constant prediction of the commonest class). "
            "A diverged run counts at chance accuracy (regression: the untrained error) from "
            "then on.",
            ""]),
        *_recovered(rows),
        "![test accuracy](accuracy.png)",
        "",
        "![losses](loss.png)",
        "",
        *(["![auxiliary loss](aux_loss.png)", ""] if aux_plot else []),
        f"Environment: torch {payload['environment']['torch']}, "
        f"{payload['environment']['platform']}, {payload['environment']['torch_threads']} threads.",
    ]
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    # Last, each file atomically: a results.json on disk means the whole folder was written.
    atomic_write(out / "results.json", json.dumps(json_safe(payload), indent=1))
    return payload

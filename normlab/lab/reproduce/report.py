"""The reproduction report: results.json and report.md with a "paper vs normlab" table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..datasets import Dataset
from ..experiment import environment
from ..report import json_safe
from .runners import Outcome
from .spec import ReproSpec

__all__ = ["write_repro_report", "comparison_table"]


def comparison_table(rows: list[dict], differences: str) -> str:
    """Markdown: claim | paper | normlab | differences | holds?"""
    lines = ["| claim | paper | normlab (mean ± std over seeds) | data and budget differences "
             "| verdict |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r["claim"], r["paper"], r["ours"], differences, r["verdict"]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _steps(spec: ReproSpec) -> str:
    if "epochs" in spec.params:  # the batch-size sweep: steps = epochs * examples / batch
        return f"{spec.params['epochs']} epochs per batch size"
    return f"{spec.config.steps} steps"


def _differences(spec: ReproSpec, data: Dataset, results: dict) -> str:
    cfg = spec.config
    synthetic = ", SYNTHETIC" if data.source == "synthetic" else ""
    # a runner that trains on a subset reports the sizes it used
    train = results.get("train_examples", len(data.x_train))
    test = results.get("test_examples", len(data.x_test))
    return (f"paper: {spec.paper_setting}. Here: {data.name} ({train} train / "
            f"{test} test{synthetic}), {cfg.model}, {_steps(spec)}, "
            f"{spec.seeds} seed(s); see 'Why this budget'")


def write_repro_report(spec: ReproSpec, outcome: Outcome, data: Dataset, out: Path,
                       seconds: float, command: str, quick: bool) -> dict:
    """Write ``results.json`` and ``report.md`` (the plots are already in ``out``)."""
    out = Path(out)
    # the thread count the runs used (1 each in --jobs workers), as the experiments record it
    threads = min((e.threads for e in outcome.experiments if e.threads), default=None)
    env = environment(threads)
    cores = os.cpu_count()
    workers = max((e.workers for e in outcome.experiments), default=1)
    runtime = (f"{seconds:.0f} s wall on {cores} CPU cores, {env['torch_threads']} torch "
               f"thread(s) per run" + (f", {workers} worker processes" if workers > 1 else "")
               + " (other processes may have shared the CPU)")
    differences = _differences(spec, data, outcome.results)
    payload = {
        "experiment": spec.name, "title": spec.title, "paper": spec.paper,
        "command": command, "quick": quick, "runtime_s": seconds, "runtime": runtime,
        "spec": spec.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "note": data.note,
                    "train": len(data.x_train), "test": len(data.x_test)},
        "paper_vs_normlab": outcome.comparisons, "differences": differences,
        "results": outcome.results, "plots": outcome.plots, "environment": env,
        "runs": [{k: [r.to_dict() for r in runs] for k, runs in exp.runs.items()}
                 | {"_config": exp.config.to_dict()} for exp in outcome.experiments],
    }
    cfg = spec.config
    lines = [f"# {spec.name}: {spec.title}", ""]
    if quick:
        lines += ["**QUICK smoke-test run: tiny budget, numbers are meaningless.**", ""]
    lines += [f"Paper: {spec.paper}.", "", f"Command: `{command}`", "",
              f"Run time: {runtime}.", ""]
    if data.note:
        lines += [f"**Data note: {data.note}.**", ""]
    lines += [
        f"Budget: model {cfg.model}, {_steps(spec)}, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr} (momentum {cfg.momentum}), weight decay "
        f"{cfg.weight_decay}; init {cfg.init}, inputs {cfg.input_scaling}"
        + (" (the reading closest to the paper: TensorFlow's Glorot-uniform init with zero "
           "biases, p/255 inputs)" if (cfg.init, cfg.input_scaling) == ("glorot", "unit")
           else "") + f"; seeds {spec.seeds}; arms: "
        + ", ".join(f"{a.label} ({a.method}{', ' + str(dict(a.options)) if a.options else ''}"
                    f"{', model ' + a.model if a.model else ''})" for a in spec.arms)
        + (f"; parameters {dict(spec.params)}" if spec.params else "") + ".", "",
        f"Why this budget: {spec.budget_note}", "",
        "## Paper vs normlab", "", comparison_table(outcome.comparisons, differences), "",
    ]
    for section in outcome.sections:
        lines += [section, ""]
    lines += [f"![{p}]({p})" for p in outcome.plots]
    lines += ["", f"Environment: torch {env['torch']}, numpy {env['numpy']}, {env['platform']}."]
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    # Last: a results.json on disk means the whole folder was written.
    atomic_write(out / "results.json", json.dumps(json_safe(payload), indent=1, default=str))
    return payload

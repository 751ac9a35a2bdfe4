"""Runners: each interprets one kind of :class:`ReproSpec` and returns an :class:`Outcome`.

Every run goes through the lab's trainer (:func:`normlab.lab.experiment.run_experiment` ->
:func:`normlab.lab.train.train`); recording and the lr schedule ride on
:class:`~normlab.lab.reproduce.instrument.Instrumented`. A runner compares what it measured
with each of the spec's claims and says whether the claim holds here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...methods import create_method
from ..config import TrainConfig
from ..datasets import Dataset
from ..experiment import Experiment, run_experiment, summarize
from ..plots import plot_accuracy, plot_losses
from ..report import format_table
from .analysis import (band_stability, fmt_speedup, mean_std_text, pct, seed_speedups,
                       weight_analysis)
from .instrument import Instrumented
from .plots import plot_ce_vs_acc, plot_percentiles, plot_weight_sweep
from .spec import Arm, ReproSpec

__all__ = ["Outcome", "RUNNERS", "run_arms"]


@dataclass
class Outcome:
    """What a runner measured: paper-vs-normlab rows, markdown sections, plots, JSON data."""

    comparisons: list[dict] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    experiments: list[Experiment] = field(default_factory=list)


# (spec, data, out, progress, jobs=, data_spec=) -> Outcome
Runner = Callable[..., Outcome]
RUNNERS: dict[str, Runner] = {}


def _runner(name: str):
    def deco(fn: Runner) -> Runner:
        RUNNERS[name] = fn
        return fn
    return deco


def run_arms(config: TrainConfig, data: Dataset, arms: Sequence[Arm], seeds: Sequence[int],
             progress: bool, *, jobs: int = 1, data_spec: Callable | None = None,
             **instrument) -> Experiment:
    """Train every arm from every seed; arms with their own model run as their own group.

    ``instrument`` goes to :class:`Instrumented` (recording, lr schedule). ``jobs > 1`` runs
    on that many single-threaded worker processes, which load the data with ``data_spec``
    (a picklable callable returning ``data``); runs that record (``instrument``) stay in
    this process, where their recorders live.
    """
    if instrument.get("record_every") or data_spec is None:
        jobs = 1
    methods = {a.label: Instrumented(create_method(a.method, **dict(a.options)), **instrument)
               for a in arms}
    runs: dict[str, list] = {a.label: [] for a in arms}
    groups: dict[str, list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.model or config.model, []).append(arm)
    for model, group in groups.items():
        part = run_experiment(dataclasses.replace(config, model=model), data,
                              {a.label: methods[a.label] for a in group}, seeds, progress,
                              jobs=jobs, data_spec=data_spec)
        runs.update(part.runs)
    return Experiment(config, data, methods, list(seeds), runs, threads=part.threads,
                      workers=part.workers)


def _steps(steps: float | None) -> str:
    return "never" if steps is None else f"{steps:.0f}"


def _verdict(ok: bool | None) -> str:
    return {True: "holds here", False: "does not hold here", None: "cannot tell"}[ok]


def _row(claim, ours: str, ok: bool | None) -> dict:
    return {"claim": claim.claim, "paper": claim.paper, "ours": ours, "verdict": _verdict(ok)}


# --------------------------------------------------------------------------- compare

@_runner("compare")
def run_compare(spec: ReproSpec, data: Dataset, out: Path, progress: bool,
                **execution) -> Outcome:
    """Methods side by side (Figures 1 and 3; PointNet's speed-up table)."""
    halve = spec.params.get("lr_halve_every_epochs")
    steps_per_epoch = len(data.x_train) // spec.config.batch_size
    extra = {"lr_halve_every": halve * steps_per_epoch} if halve else {}
    exp = run_arms(spec.config, data, spec.arms, range(spec.seeds), progress, **extra,
                   **execution)
    rows = summarize(exp, "none")
    by = {r["method"]: r for r in rows}
    o = Outcome(experiments=[exp])
    o.plots += [plot_accuracy(exp, out / "accuracy.png").name, plot_losses(exp, out / "loss.png").name]
    if spec.params.get("scatter"):
        o.plots.append(plot_ce_vs_acc(exp, out / "ce_vs_acc.png"))
    speedups = {k: seed_speedups(exp, k) for k in by if k != "none"}
    for claim in spec.claims:
        label = claim.key.split(":", 1)[1]
        r, base = by[label], by["none"]
        seeds = speedups[label]
        per_seed = mean_std_text([d["speedup"] for d in seeds],
                                 capped=sum(d["at_cap"] for d in seeds))
        ours = (f"{fmt_speedup(r)} on the seed-mean curve (per seed {per_seed}; this "
                f"schedule shows {r['speedup_min']:.2f}x to {r['speedup_max']:.2f}x); "
                f"{_steps(r['steps_to_target'])} vs {_steps(r['baseline_steps'])} steps to "
                "none's best "
                f"({pct(r['target_acc'])}); final {pct(r['final_acc_mean'], r['final_acc_std'])}"
                f" vs none {pct(base['final_acc_mean'], base['final_acc_std'])}")
        ok = r["speedup"] is not None and r["speedup"] > 1
        o.comparisons.append(_row(claim, ours, ok))
    paper_steps = spec.params.get("paper_steps")
    if paper_steps:
        lines = ["## Speed-up table: paper vs normlab", "",
                 "| method | paper: steps to baseline accuracy | paper speed-up | "
                 "normlab: steps to none's best | normlab speed-up |", "|---|---|---|---|---|"]
        for label, (steps, sp) in paper_steps.items():
            r = by[label]
            lines.append(f"| {label} | {steps} | {sp} | {_steps(r['steps_to_target'])} | "
                         f"{fmt_speedup(r)} |")
        o.sections.append("\n".join(lines + ["", rows[0]["resolution"]]))
    o.sections.append("## Per-method summary\n\n" + format_table(rows))
    o.results = {"summary": rows, "seed_speedups": {k: [d["speedup"] for d in v]
                                                    for k, v in speedups.items()},
                 "seed_speedups_at_cap": {k: [d["at_cap"] for d in v]
                                          for k, v in speedups.items()}}
    return o


# --------------------------------------------------------------------------- weight sweep

@_runner("weight_sweep")
def run_weight_sweep(spec: ReproSpec, data: Dataset, out: Path, progress: bool,
                     **execution) -> Outcome:
    """Final accuracy over a log grid of standardization-loss weights (Figure 2, bottom)."""
    weights = sorted(spec.params["weights"])
    arms = [Arm("none", "none")] + [Arm(f"std_loss w={w:g}", "std_loss", {"weight": w})
                                    for w in weights]
    exp = run_arms(spec.config, data, arms, range(spec.seeds), progress, **execution)
    rows = {r["method"]: r for r in summarize(exp, "none")}
    means = [rows[a.label]["final_acc_mean"] for a in arms[1:]]
    stds = [rows[a.label]["final_acc_std"] for a in arms[1:]]
    base = rows["none"]["final_acc_mean"]
    chance = 1.0 / data.num_classes
    ana = weight_analysis(weights, means, base, chance, spec.params.get("tolerance", 0.01))
    o = Outcome(experiments=[exp])
    o.plots.append(plot_weight_sweep(weights, means, stds, base, ana["collapse_weight"],
                                     out / "accuracy_vs_weight.png"))
    collapse = ("no collapse on the grid" if ana["collapse_weight"] is None
                else f"collapse at weight {ana['collapse_weight']:g}")
    robust = ("no weight at or above none's accuracy" if ana["robust_low"] is None else
              f"accuracy >= none - {100 * spec.params.get('tolerance', 0.01):g} pp from "
              f"{ana['robust_low']:g} to {ana['robust_high']:g} ({ana['orders']:.1f} orders)")
    for claim in spec.claims:
        ours = (f"{robust}; best {pct(ana['best_acc'])} at {ana['best_weight']:g}; {collapse}"
                f" (accuracy below {pct(ana['collapse_threshold'])})")
        o.comparisons.append(_row(claim, ours, ana["orders"] >= 3))
    table = ["| weight | final test acc (mean ± std) |", "|---|---|",
             f"| none | {pct(base, rows['none']['final_acc_std'])} |"]
    table += [f"| {w:g} | {pct(m, s)} |" for w, m, s in zip(weights, means, stds)]
    o.sections.append("## Accuracy after the budget, per weight\n\n" + "\n".join(table))
    o.results = {"weights": weights, "acc_mean": means, "acc_std": stds, "none_acc": base,
                 "analysis": ana, "summary": list(rows.values())}
    return o


# --------------------------------------------------------------------------- distributions

def _mean_recording(method: Instrumented) -> dict:
    """Percentile rows averaged over the runs (seeds) of one method, cut to the shortest."""
    recs = method.recordings
    n = min(len(r.steps) for r in recs)
    vals = np.mean([np.asarray(r.values[:n]) for r in recs], axis=0)
    return {"percentiles": recs[0].percentiles, "unit": recs[0].unit,
            "steps": recs[0].steps[:n], "values": vals.tolist()}


@_runner("distributions")
def run_distributions(spec: ReproSpec, data: Dataset, out: Path, progress: bool,
                      **execution) -> Outcome:
    """Pre-activation percentiles over training (Figure 4; the BN paper's Figure 1)."""
    p = spec.params
    exp = run_arms(spec.config, data, spec.arms, range(spec.seeds), progress, **execution,
                   record_every=p["record_every"], percentiles=p["percentiles"],
                   unit=p.get("unit"))
    rows = {r["method"]: r for r in summarize(exp, "none")}
    curves = {k: _mean_recording(m) for k, m in exp.methods.items()}
    stab = {k: band_stability(c["values"]) for k, c in curves.items()}
    o = Outcome(experiments=[exp])
    where = "one unit" if p.get("unit") is not None else "all elements"
    o.plots.append(plot_percentiles(curves, out / "percentiles.png",
                                    f"{p['where']} ({where}); {spec.seeds} seed(s)"))
    o.plots += [plot_accuracy(exp, out / "accuracy.png").name]
    for claim in spec.claims:
        kind, label = claim.key.split(":", 1)
        if kind == "stable":
            s, n = stab[label], stab["none"]
            others = ", ".join(f"{k} {v['median_drift']:.2f}" for k, v in stab.items()
                               if k != label)
            ours = (f"{label}: median drift {s['median_drift']:.2f} band widths, width x"
                    f"{s['width_ratio']:.2f} first→last (others: {others})")
            o.comparisons.append(_row(claim, ours, s["median_drift"] < n["median_drift"]))
        else:  # "accuracy": final accuracy and speed-up over none
            r, b = rows[label], rows["none"]
            ours = (f"final {pct(r['final_acc_mean'], r['final_acc_std'])} vs none "
                    f"{pct(b['final_acc_mean'], b['final_acc_std'])}; speed-up "
                    f"{fmt_speedup(r)} (this schedule shows {r['speedup_min']:.2f}x to "
                    f"{r['speedup_max']:.2f}x)")
            ok = r["final_acc_mean"] > b["final_acc_mean"] and (r["speedup"] or 0) > 1
            o.comparisons.append(_row(claim, ours, ok))
    table = ["| method | median drift (band widths) | band width first → last | final acc |",
             "|---|---|---|---|"]
    table += [f"| {k} | {v['median_drift']:.3f} | {v['width_first']:.3g} → {v['width_last']:.3g}"
              f" | {pct(rows[k]['final_acc_mean'], rows[k]['final_acc_std'])} |"
              for k, v in stab.items()]
    o.sections.append("## Distribution stability\n\nMedian drift: range over training of the "
                      "middle percentile divided by the mean outer band width.\n\n"
                      + "\n".join(table))
    o.results = {"curves": curves, "stability": stab, "summary": list(rows.values())}
    return o

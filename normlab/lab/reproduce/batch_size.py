"""The batch-size study (Collins, Ballé & Shlens 2019, arXiv:1903.00925, section 4.5,
Figure 7): accuracy after training to a plateau, per method and batch size.

The paper trained MobileNet on ImageNet at batch sizes 2-128 with the linear learning-rate
scaling rule (Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
2017, arXiv:1706.02677: ``lr = lr_ref * batch / reference_batch``) and found the
standardization loss at 66.5-66.9% top-1 over all of them (0.4 pp spread), BN falling at small
batches and the loss above BN at batch 2 and 4.

Here every batch size trains for the same number of **epochs** of a fixed training subset
(so every batch size sees the same examples the same number of times), with a constant
linearly scaled learning rate. The test set is evaluated after every epoch; with a constant
learning rate the accuracy after epoch ``e`` of an ``E``-epoch run *is* the result of an
``e``-epoch budget, so one run per cell gives the whole accuracy-vs-epoch-budget curve, and
the report shows it so the reader can see whether the plateau was reached. A cell is "at its
plateau" when its seed-mean accuracy over the budget's last quarter of epochs is at most
``plateau_tol`` above its mean over the quarter before (:func:`plateau_gain`); a claim whose
cells are not at their plateau gets "cannot tell".
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..datasets import Dataset
from ..metrics import mean_std
from .analysis import pct, spread
from .plots import plot_batch_size, plot_epoch_budget
from .runners import Outcome, _row, _runner, run_arms
from .spec import ReproSpec

__all__ = ["run_batch_size", "subset", "plateau_gain", "load_subset"]


def subset(data: Dataset, train: int | None, test: int | None, seed: int = 0) -> Dataset:
    """The first ``test`` test examples and a seeded random ``train`` of the training set."""
    x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    if train and train < len(x_tr):
        idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:train]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if test and test < len(x_te):
        x_te, y_te = x_te[:test], y_te[:test]
    return dataclasses.replace(data, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def load_subset(load: Callable[[], Dataset], train: int | None, test: int | None) -> Dataset:
    """``subset(load(), train, test)``: what a ``--jobs`` worker calls to get the same data."""
    return subset(load(), train, test)


def plateau_gain(curve: list[float]) -> float:
    """Accuracy gained over the last quarter of the budget: the mean accuracy after epochs
    ``3E/4+1 .. E`` minus the mean after epochs ``E/2+1 .. 3E/4``, where ``curve[e]`` is the
    accuracy after ``e`` epochs (``curve[0]``: before training).

    Means over several epochs, not two single evaluations: one evaluation of a 2,000-image
    test set moves by about a point from epoch to epoch at a plateau, so a difference of two
    single points would call a flat curve rising (or a rising one flat) by chance.
    """
    epochs = len(curve) - 1
    if epochs < 4:
        raise ValueError(f"need at least 4 epochs to judge a plateau, got {epochs}")
    half, three_q = epochs // 2, (3 * epochs) // 4
    return float(np.mean(curve[three_q + 1:]) - np.mean(curve[half + 1:three_q + 1]))


def _train_cell(spec: ReproSpec, data: Dataset, model: str, batch: int, progress: bool,
                **execution):
    p = spec.params
    per_epoch = len(data.x_train) // batch
    cfg = dataclasses.replace(spec.config, model=model, batch_size=batch,
                              steps=per_epoch * int(p["epochs"]), eval_schedule="linear",
                              eval_every=per_epoch,
                              lr=spec.config.lr * batch / int(p["reference_batch"]))
    return run_arms(cfg, data, spec.arms, range(spec.seeds), progress, **execution)


@_runner("batch_size")
def run_batch_size(spec: ReproSpec, data: Dataset, out: Path, progress: bool, jobs: int = 1,
                   data_spec: Callable[[], Dataset] | None = None) -> Outcome:
    """Accuracy vs batch size after a fixed number of epochs, linear lr scaling."""
    p = spec.params
    sizes, epochs = list(p["batch_sizes"]), int(p["epochs"])
    tol = float(p.get("plateau_tol", 0.01))
    data = subset(data, p.get("train_subset"), p.get("test_subset"))
    if data_spec is not None:
        data_spec = functools.partial(load_subset, data_spec, p.get("train_subset"),
                                      p.get("test_subset"))
    chance = 1.0 / data.num_classes
    o = Outcome()
    results: dict[str, dict] = {}
    for model in p.get("models", (spec.config.model,)):
        # curves[label][batch]: seed-mean accuracy after 0..epochs epochs
        curves: dict[str, dict[int, list[float]]] = {a.label: {} for a in spec.arms}
        finals: dict[str, dict[int, list[float]]] = {a.label: {} for a in spec.arms}
        for b in sizes:
            exp = _train_cell(spec, data, model, b, progress, jobs=jobs, data_spec=data_spec)
            o.experiments.append(exp)
            for label, runs in exp.runs.items():
                padded = [r.test_acc + [chance] * (epochs + 1 - len(r.test_acc)) for r in runs]
                curves[label][b] = np.mean(padded, axis=0).tolist()
                finals[label][b] = [c[-1] for c in padded]
        results[model] = _analyse(spec, model, sizes, curves, finals, tol, o, out)
    o.results = {"batch_sizes": sizes, "epochs": epochs, "plateau_tol": tol,
                 "train_examples": len(data.x_train), "test_examples": len(data.x_test),
                 "models": results}
    return o


def _analyse(spec, model, sizes, curves, finals, tol, o: Outcome, out: Path) -> dict:
    means = {k: [mean_std(v[b])[0] for b in sizes] for k, v in finals.items()}
    stds = {k: [mean_std(v[b])[1] for b in sizes] for k, v in finals.items()}
    spreads = {k: spread(dict(zip(sizes, means[k]))) for k in means}
    gains = {k: [plateau_gain(curves[k][b]) for b in sizes] for k in curves}
    # flat[k][j]: method k at batch sizes[j] gained at most tol in the budget's last quarter
    flat = {k: [g <= tol for g in gains[k]] for k in gains}
    limit = float(spec.params.get("spread_tol", 0.01))
    o.plots.append(plot_batch_size(sizes, means, stds, out / f"accuracy_vs_batch_{model}.png",
                                   title=f"{model}: accuracy after the epoch budget"))
    o.plots.append(plot_epoch_budget(sizes, curves, out / f"epoch_budget_{model}.png", model))
    for claim in spec.claims:
        kind, label = claim.key.split(":", 1)
        if kind == "spread":
            others = ", ".join(f"{k} {100 * v:.1f}" for k, v in spreads.items() if k != label)
            ours = (f"[{model}] {label}: {pct(min(means[label]))}–{pct(max(means[label]))}, "
                    f"spread {100 * spreads[label]:.1f} pp (others, pp: {others}); holds if "
                    f"<= {100 * limit:.1f} pp")
            ok = spreads[label] <= limit if all(flat[label]) else None
            cells = [f"{label}@{b}" for b, f in zip(sizes, flat[label]) if not f]
        elif kind == "drops":  # "drops:batch_norm": at the smallest batch size run
            j, best = 0, int(np.argmax(means[label]))
            ours = (f"[{model}] {label} at batch {sizes[j]}: {pct(means[label][j])} vs its best "
                    f"{pct(means[label][best])} at batch {sizes[best]} "
                    f"({100 * (means[label][best] - means[label][j]):.1f} pp lower; holds if "
                    f"> {100 * limit:.1f} pp)")
            need = {j, best}
            ok = means[label][best] - means[label][j] > limit
            cells = [f"{label}@{sizes[i]}" for i in sorted(need) if not flat[label][i]]
        else:  # "beats:<method>@2,4"
            rival, at = label.split("@")
            small = [int(s) for s in at.split(",") if int(s) in sizes]
            idx = [sizes.index(s) for s in small]
            ours = "; ".join(f"[{model}] batch {s}: std_loss {pct(means['std_loss'][j])} vs "
                             f"{rival} {pct(means[rival][j])}" for s, j in zip(small, idx))
            ok = bool(small) and all(means["std_loss"][j] > means[rival][j] for j in idx)
            cells = [f"{k}@{sizes[j]}" for j in idx for k in ("std_loss", rival)
                     if not flat[k][j]]
            if not small:
                ours, ok = f"[{model}] batch {at} not in this run", None
        if cells:  # a verdict needs every cell it rests on at its plateau
            ok = None
            ours += f" (not at the plateau: {', '.join(cells)}; see the epoch-budget tables)"
        o.comparisons.append(_row(claim, ours, ok))
    o.sections.append(_tables(spec, model, sizes, means, stds, spreads, curves, gains, tol))
    return {"acc_mean": means, "acc_std": stds, "spread": spreads, "final_acc": finals,
            "curves": curves, "plateau_gain": gains, "at_plateau": flat}


def _tables(spec, model, sizes, means, stds, spreads, curves, gains, tol) -> str:
    epochs = int(spec.params["epochs"])
    ref, lr = int(spec.params["reference_batch"]), spec.config.lr
    head = "| method | " + " | ".join(f"batch {b}" for b in sizes) + " | spread | paper |"
    rows = [head, "|---" * (len(sizes) + 3) + "|"]
    paper = dict(spec.params.get("paper_spread", {}))
    rows += [f"| {k} | " + " | ".join(pct(m, s) for m, s in zip(means[k], stds[k]))
             + f" | {100 * spreads[k]:.1f} pp | {paper.get(k, '-')} |" for k in means]
    budgets = sorted({1 << i for i in range(epochs.bit_length()) if 1 << i <= epochs}
                     | {epochs})
    ep_head = ("| method | " + " | ".join(f"{e} ep" for e in budgets)
               + " | largest last-quarter gain | at plateau |")
    ep = [ep_head, "|---" * (len(budgets) + 3) + "|"]
    for k in curves:
        accs = [np.mean([curves[k][b][e] for b in sizes]) for e in budgets]
        worst = int(np.argmax(gains[k]))
        ep.append(f"| {k} | " + " | ".join(f"{100 * a:.1f}" for a in accs)
                  + f" | {100 * gains[k][worst]:+.1f} pp (batch {sizes[worst]}) | "
                  + ("yes" if max(gains[k]) <= tol else "**no**") + " |")
    gain_head = "| method | " + " | ".join(f"batch {b}" for b in sizes) + " |"
    gain = [gain_head, "|---" * (len(sizes) + 1) + "|"]
    gain += [f"| {k} | " + " | ".join(f"{100 * g:+.1f}" + ("" if g <= tol else " **")
                                      for g in gains[k]) + " |" for k in gains]
    steps = ", ".join(f"{b}: lr {lr * b / ref:.3g}" for b in sizes)
    h, q = epochs // 2, (3 * epochs) // 4
    return (f"## {model}: test accuracy after {epochs} epochs, per batch size\n\n"
            + "\n".join(rows)
            + f"\n\nSpread: max - min over batch sizes of the seed-mean accuracy. Learning rate "
              f"per batch size (linear scaling from {lr:g} at batch {ref}): {steps}.\n\n"
            + f"## {model}: accuracy vs epoch budget (mean over batch sizes)\n\n"
            + "\n".join(ep)
            + f"\n\nA cell is at its plateau when its seed-mean accuracy, averaged over the "
              f"budget's last quarter (epochs {q + 1}-{epochs}), is at most {100 * tol:g} pp "
              f"above its average over the quarter before (epochs {h + 1}-{q}); the column "
              "gives the largest such gain over batch sizes. With a constant learning rate, "
              "the accuracy after e epochs of the run is the result of an e-epoch budget.\n\n"
            + f"Last-quarter gain (pp; ** above the {100 * tol:g} pp plateau tolerance), "
              f"per batch size:\n\n" + "\n".join(gain))

"""PNG plots of an experiment: test accuracy, losses and the auxiliary loss vs step, mean over
seeds with a band."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..methods.base import Method  # noqa: E402
from .atomic import atomic_savefig  # noqa: E402
from .experiment import Experiment  # noqa: E402
from .train import eval_schedule  # noqa: E402

__all__ = ["plot_accuracy", "plot_losses", "plot_aux_loss", "aux_loss_groups",
           "plot_batch_sizes"]


def _groups(exp: Experiment, labels=None) -> dict[str, list]:
    """Runs per curve: per method, or per (method, batch size) in a batch-size sweep; only
    the methods in ``labels`` when given."""
    runs_of = {k: v for k, v in exp.runs.items() if labels is None or k in labels}
    if len(exp.batch_sizes) == 1:
        return runs_of
    return {f"{k} bs{b}": [r for r in runs if r.batch_size == b]
            for b in exp.batch_sizes for k, runs in runs_of.items()}


def _metric_label(exp: Experiment) -> str:
    return "test accuracy" if exp.task == "classification" else "test mse (lower is better)"


def _band(ax, x, curves, label, smooth: int = 1) -> None:
    """Mean line and +- std band; a curve cut short (a diverged run) stops where it stopped."""
    n = len(x)
    arr = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        arr[i, :min(n, len(c))] = c[:n]
    if smooth > 1 and n >= smooth:
        kernel = np.ones(smooth) / smooth
        arr = np.stack([np.convolve(a, kernel, mode="valid") for a in arr])
        x = x[smooth - 1:smooth - 1 + arr.shape[1]]
    x = np.asarray(x[:arr.shape[1]])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after a divergence
        mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
    (line,) = ax.plot(x, mean, label=label, lw=1.5)
    if len(curves) > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def _save(fig, axes, path: Path) -> Path:
    """Grid and legend on every axis, then write the figure to ``path`` and close it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def plot_accuracy(exp: Experiment, path: Path) -> Path:
    """Test accuracy vs step: seed mean, band = +- one std over seeds."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    steps = eval_schedule(exp.config)
    for label, runs in _groups(exp).items():
        _band(ax, steps, [r.test_acc for r in runs], label)
    ax.set(xlabel="training step", ylabel=_metric_label(exp),
           title=f"{exp.config.model} on {exp.dataset.name} ({len(exp.seeds)} seeds, mean ± std)")
    return _save(fig, [ax], path)


def plot_losses(exp: Experiment, path: Path) -> Path:
    """Training cross-entropy (smoothed) and test cross-entropy vs step."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    smooth = max(1, exp.config.steps // 50)
    for label, runs in _groups(exp).items():
        _band(ax1, np.arange(1, exp.config.steps + 1), [r.train_loss for r in runs], label, smooth)
        _band(ax2, eval_schedule(exp.config), [r.test_loss for r in runs], label)
    loss = "cross-entropy" if exp.task == "classification" else "mse"
    ax1.set(xlabel="training step", ylabel=f"train {loss}",
            title=f"training loss (moving mean of {smooth})")
    ax2.set(xlabel="training step", ylabel=f"test {loss}", title="test loss")
    return _save(fig, [ax1, ax2], path)


def aux_loss_groups(exp: Experiment) -> dict[str, list]:
    """The curves of :func:`_groups` whose method has an auxiliary loss (it overrides
    :meth:`Method.auxiliary_loss`) and recorded a finite value of it."""
    labels = [k for k, m in exp.methods.items()
              if type(m).auxiliary_loss is not Method.auxiliary_loss]
    return {k: runs for k, runs in _groups(exp, labels).items()
            if any(np.isfinite(v) for r in runs for v in r.aux_loss)}


def plot_aux_loss(exp: Experiment, path: Path) -> Path | None:
    """The auxiliary loss term (as added to the task loss, e.g. the weighted standardization
    loss) vs step, smoothed like the training loss; log y when every value is positive.
    Writes nothing and returns ``None`` when no method has an auxiliary loss."""
    groups = aux_loss_groups(exp)
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    smooth = max(1, exp.config.steps // 50)
    for label, runs in groups.items():
        _band(ax, np.arange(1, exp.config.steps + 1), [r.aux_loss for r in runs], label, smooth)
    values = np.asarray([v for runs in groups.values() for r in runs for v in r.aux_loss])
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="auxiliary loss (weighted)",
           title=f"auxiliary loss (moving mean of {smooth})")
    return _save(fig, [ax], path)


def plot_batch_sizes(exp: Experiment, rows: list[dict], path: Path) -> Path:
    """Final test metric vs batch size (log2 axis), one line per method, +- std over seeds."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label in exp.runs:
        mine = [r for r in rows if r["method"] == label]
        scale = 100.0 if exp.task == "classification" else 1.0
        ax.errorbar([r["batch_size"] for r in mine], [scale * r["final_acc_mean"] for r in mine],
                    yerr=[scale * r["final_acc_std"] for r in mine], marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel=f"batch size (lr scaling: {exp.lr_scaling})",
           ylabel=f"final {_metric_label(exp)}" + (" (%)" if exp.task == "classification" else ""),
           title=f"{exp.config.model} on {exp.dataset.name}: {exp.config.steps} steps")
    return _save(fig, [ax], path)

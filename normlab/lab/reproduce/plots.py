"""The reproduction plots beyond accuracy/loss curves (those come from ``normlab.lab.plots``).

Collins, Ballé & Shlens 2019, arXiv:1903.00925: Figure 2 (cross-entropy vs accuracy; accuracy
vs loss weight), Figure 4 (activation percentiles over training), section 4.4 (accuracy vs
batch size); Ioffe & Szegedy 2015, arXiv:1502.03167, Figure 1 (sigmoid-input percentiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_savefig  # noqa: E402
from ..experiment import Experiment  # noqa: E402

__all__ = ["plot_ce_vs_acc", "plot_weight_sweep", "plot_percentiles", "plot_batch_size"]


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return Path(path).name


def plot_ce_vs_acc(exp: Experiment, path: Path) -> str:
    """Test cross-entropy vs test accuracy at every evaluation of every run (Figure 2, top)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, runs in exp.runs.items():
        loss = [v for r in runs for v in r.test_loss]
        acc = [v for r in runs for v in r.test_acc]
        ax.scatter(loss, acc, s=8, alpha=0.6, label=label)
    ax.set(xlabel="test cross-entropy", ylabel="test accuracy",
           title="cross-entropy vs accuracy over training (all seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_weight_sweep(weights: Sequence[float], means: Sequence[float], stds: Sequence[float],
                      baseline: float, collapse: float | None, path: Path) -> str:
    """Final accuracy vs standardization-loss weight (log axis); collapse marked."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.errorbar(weights, means, yerr=stds, marker="o", capsize=3, label="std_loss")
    ax.axhline(baseline, color="gray", ls="--", label="none (no normalization)")
    if collapse is not None:
        ax.axvline(collapse, color="red", ls=":", label=f"collapse (weight {collapse:g})")
    ax.set_xscale("log")
    ax.set(xlabel="standardization-loss weight", ylabel="final test accuracy",
           title="accuracy vs loss weight")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_percentiles(curves: Mapping[str, dict], path: Path, title: str) -> str:
    """One panel per method: the recorded percentiles over steps, outer bands shaded."""
    labels = list(curves)
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.5), dpi=110,
                             sharey=True, squeeze=False)
    for ax, label in zip(axes[0], labels):
        steps = np.asarray(curves[label]["steps"])
        vals = np.asarray(curves[label]["values"])
        pcts = curves[label]["percentiles"]
        n = len(pcts)
        for i in range(n // 2):
            ax.fill_between(steps, vals[:, i], vals[:, n - 1 - i], alpha=0.2 + 0.2 * i, lw=0,
                            color="C0", label=f"{pcts[i]:g}-{pcts[n - 1 - i]:g}th")
        ax.plot(steps, vals[:, n // 2], color="C3", lw=1.5, label=f"{pcts[n // 2]:g}th")
        ax.set(title=label, xlabel="training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pre-activation")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_batch_size(batch_sizes: Sequence[int], means: Mapping[str, Sequence[float]],
                    stds: Mapping[str, Sequence[float]], path: Path,
                    title: str = "accuracy vs batch size") -> str:
    """Final accuracy vs batch size (log2 axis), one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label in means:
        ax.errorbar(batch_sizes, means[label], yerr=stds[label], marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size (linear lr scaling)", ylabel="final test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_epoch_budget(batch_sizes: Sequence[int],
                      curves: Mapping[str, Mapping[int, Sequence[float]]], path: Path,
                      title: str) -> str:
    """Test accuracy vs epochs trained, one panel per method, one line per batch size."""
    labels = list(curves)
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=100,
                             sharex=True, sharey=True, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(batch_sizes)))
    for ax, label in zip(axes.flat, labels):
        for color, b in zip(colors, batch_sizes):
            curve = curves[label][b]
            ax.plot(range(len(curve)), curve, color=color, label=f"batch {b}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("epochs trained (constant lr)")
    fig.supylabel("test accuracy (seed mean)")
    fig.suptitle(title)
    return _save(fig, path)

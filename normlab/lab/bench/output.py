"""Benchmark results as JSON (records + the machine they ran on) and markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import atomic_write
from .allocator import MALLOC_ENV, malloc_env_ok

__all__ = ["machine_info", "write_results", "markdown_table", "TABLES"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers depend on: hardware, software, allocator settings, load."""
    from ...functional.standardization import implementation

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["normlab"] + sys.argv[1:]),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "malloc_ok": malloc_env_ok(),
        "std_loss_cpu_path": implementation(),
        "load_average": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cell(r: dict, key: str = "ratio", lo: str = "q1", hi: str = "q3") -> str:
    if "error" in r:
        return "error"
    if lo in r:
        return f"{r[key]:.2f} [{r[lo]:.2f}-{r[hi]:.2f}]"
    return f"{r[key]:.2f}"


def _table(records: Sequence[dict], columns: Sequence[tuple], header: Sequence[str], cell) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = ["| method | " + " | ".join(header) + " |",
             "|---|" + "---|" * len(header)]
    for m in methods:
        cells = []
        for col in columns:
            hit = [r for r in records if r["method"] == m and _matches(r, col)]
            cells.append(cell(hit[0]) if hit else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matches(r: dict, col: tuple) -> bool:
    return all(r.get(k) == v for k, v in col)


def _train_md(records: Sequence[dict]) -> str:
    cols = list(dict.fromkeys((("model", r["model"]), ("threads", r["threads"]),
                               ("compile", r["compile"])) for r in records))
    base = {c: next((r.get("median_ms") for r in records
                     if r.get("ratio") == 1.0 and r.get("q3") == 1.0 and _matches(r, c)), None)
            for c in cols}
    header = [f"{dict(c)['model']} {dict(c)['threads']}t{' compiled' if dict(c)['compile'] else ''}"
              + (f" ({base[c]:.1f} ms)" if base[c] else "") for c in cols]
    return _table(records, cols, header, _cell)


def _infer_md(records: Sequence[dict]) -> str:
    cols = list(dict.fromkeys((("model", r["model"]), ("threads", r["threads"]),
                               ("batch", r["batch"])) for r in records))
    header = [f"{dict(c)['model']} {dict(c)['threads']}t b{dict(c)['batch']}" for c in cols]

    def cell(r: dict) -> str:
        if "error" in r:
            return "error"
        text = _cell(r)
        if r.get("n_folded"):
            text += f"; folded {r['folded_ratio']:.2f}"
        return text

    return _table(records, cols, header, cell)


def _memory_md(records: Sequence[dict]) -> str:
    cols = list(dict.fromkeys((("model", r["model"]),) for r in records))
    header = [dict(c)["model"] for c in cols]

    def cell(r: dict) -> str:
        return "error" if "error" in r else f"{r['ratio']:.2f} ({r['peak_mb']:.1f} MiB)"

    return _table(records, cols, header, cell)


TABLES = {"train": _train_md, "infer": _infer_md, "memory": _memory_md, "layers": _train_md}
_EXPLAIN = {
    "train": "Training step (zero_grad + forward + loss + backward + step) time relative to "
             "`none`: median of per-round ratios [interquartile range]; column headers give "
             "`none`'s median step time.",
    "infer": "Eval-mode latency of each method's deployed model (`for_inference`) relative to "
             "the bare model: median [IQR]; `folded` is the same model after "
             "`fold_batch_norm`, where that folded anything.",
    "layers": "Forward + sum + backward of each method's layer (std_loss: the loss) on one "
              "tensor, relative to torch's BatchNorm2d: median of per-round ratios [IQR].",
    "memory": "Peak memory of a training step (parameters, gradients, optimizer state and "
              "the step's allocations through PyTorch's CPU allocator) relative to `none`.",
}


def markdown_table(kind: str, records: Sequence[dict]) -> str:
    """The markdown table of ``records`` from benchmark ``kind`` (train, infer, memory)."""
    if kind not in TABLES:
        raise KeyError(f"unknown benchmark {kind!r}; known: {', '.join(TABLES)}")
    return TABLES[kind](records)


def write_results(kind: str, records: list[dict], meta: dict, out: Path,
                  stem: str | None = None) -> tuple[Path, Path]:
    """Write ``{stem}.json`` (meta + records) and ``{stem}.md`` into ``out``; return the paths.

    ``stem`` defaults to ``kind``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or kind
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    errors = [f"- {r['method']} ({r.get('model')}): {r['error']}" for r in records if "error" in r]
    text = [f"# normlab bench {kind}", "", f"`{meta.get('command', '')}`", "",
            f"{meta.get('cpu')} ({meta.get('cpu_count')} cores), torch {meta.get('torch')}, "
            f"{meta.get('date')}, load average before {meta.get('load_average')}; "
            f"std_loss CPU path: {meta.get('std_loss_cpu_path')}.", "",
            _EXPLAIN[kind], "", markdown_table(kind, records), ""]
    if meta.get("note"):
        text += [meta["note"], ""]
    if errors:
        text += ["Errors:", ""] + sorted(set(errors)) + [""]
    atomic_write(md, "\n".join(text))
    atomic_write(js, json.dumps({"benchmark": kind, "meta": meta, "records": records}, indent=1))
    return js, md

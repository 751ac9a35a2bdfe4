"""Atomic writes: a results file is either the old one or the new one, never half of each.

A sweep can be interrupted at any moment (Ctrl-C, a kill, a full disk); a reader of the
results folder must never find a truncated ``results.json``. Each file is written to a
temporary file in the same folder, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "atomic_savefig"]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    Raises:
        OSError: the folder is missing or not writable (nothing is left behind).
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (the format is taken from the suffix)."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write(path, buf.getvalue())

"""The results folder of a command: checked and created before any work, locked while in use.

Every command that writes a results folder (``run``, ``compare``, ``reproduce``, ``bench``)
calls :func:`claim_out` before it loads data or trains, so a bad ``--out`` costs nothing:

- the path must be a folder or creatable as one (not an existing file, not below a file)
  and writable; otherwise :class:`OutDirError` (a ``ValueError``: one line, exit status 2);
- the folder is locked with ``fcntl.flock`` on ``<out>/.normlab.lock`` for the life of the
  process: a second writer gets :class:`OutDirError` naming the process that holds it. The
  operating system releases the lock when its holder exits, however it dies (a kill, a
  crash), so a stale lock never blocks;
- an existing result (any of the files the command writes) is refused unless
  ``overwrite=True`` (``--overwrite``); with it, the old files are deleted first and a line
  says so, so the folder never mixes the files of two runs. ``keep=True`` (a resumed sweep)
  leaves the folder's contents in place.

Each file is then written through :func:`normlab.lab.atomic.atomic_write`: a reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Sequence

__all__ = ["OutDirError", "OutDir", "claim_out", "release_all", "LOCK_NAME"]

LOCK_NAME = ".normlab.lock"

# Locks held by this process, by resolved folder: a second claim of the same folder in one
# process (``reproduce all`` under one parent, tests) reuses the lock.
_HELD: dict[Path, IO[str]] = {}


class OutDirError(ValueError):
    """The results folder cannot be used; the message names it and why."""


class OutDir:
    """A checked, locked results folder.

    Attributes:
        path: the folder.
        replaced: the old result files that were deleted (``overwrite=True``).
    """

    def __init__(self, path: Path, replaced: list[str]) -> None:
        self.path = path
        self.replaced = replaced

    def release(self) -> None:
        """Give the lock back before the process ends (it is released at exit anyway)."""
        handle = _HELD.pop(self.path.resolve(), None)
        if handle is not None:
            handle.close()

    def __fspath__(self) -> str:
        return str(self.path)


def _check_creatable(path: Path) -> None:
    """Raise OutDirError unless ``path`` is, or can be made, a writable folder."""
    if path.exists() and not path.is_dir():
        raise OutDirError(f"--out {path}: exists and is not a folder")
    for parent in path.parents:  # `file/sub`: a parent that is a file
        if parent.exists():
            if not parent.is_dir():
                raise OutDirError(f"--out {path}: {parent} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutDirError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
    # os.access says yes to root everywhere; creating a file is the real test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".normlab-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutDirError(f"--out {path}: folder is not writable ({e.strerror or e})") from None


def _lock(path: Path) -> None:
    import fcntl

    key = path.resolve()
    if key in _HELD:
        return
    handle = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutDirError(f"--out {path}: in use by {holder}; wait for it to finish or "
                          "choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"normlab pid {os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle


def _existing(path: Path, products: Sequence[str]) -> list[str]:
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    return [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in products)]


def claim_out(path: str | os.PathLike, products: Sequence[str], overwrite: bool = False,
              keep: bool = False, quiet: bool = False) -> OutDir:
    """Check, create and lock the results folder ``path`` for a command writing ``products``.

    Args:
        path: the folder (``--out``).
        products: the file names (glob patterns allowed, e.g. ``"*.png"``) the command writes.
        overwrite: delete an existing result first (and say so) instead of refusing.
        keep: leave existing files in place (resuming into the same folder).
        quiet: do not print the "replacing" line.

    Raises:
        OutDirError: the folder is a file, below a file, not writable, locked by another
            process, or holds a result and neither ``overwrite`` nor ``keep`` is set.
    """
    path = Path(path).expanduser()
    _check_creatable(path)
    _lock(path)
    old = [] if keep else _existing(path, products)
    if old and not overwrite:
        OutDir(path, []).release()
        raise OutDirError(f"--out {path}: already holds a result ({', '.join(old)}); pass "
                          "--overwrite to replace it, or choose another --out")
    for name in old:
        (path / name).unlink(missing_ok=True)
    if old and not quiet:
        print(f"note: replacing the result in {path} (deleted {', '.join(old)})",
              file=sys.stderr)
    return OutDir(path, old)


def release_all() -> None:
    """Give back every folder lock this process holds (the CLI calls it as a command ends)."""
    while _HELD:
        _HELD.popitem()[1].close()

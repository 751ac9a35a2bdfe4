"""Finished runs on disk, one file each, so an interrupted sweep loses none and resumes.

Every finished (method, batch size, seed) run is written atomically
(:func:`normlab.lab.atomic.atomic_write`) to ``<out>/runs/<method>-bs<B>-seed<S>.json`` the
moment it ends, with a fingerprint of everything that defines it (the configuration at that
batch size, the method and its options, the data and the model). ``--resume`` reads back the
runs whose fingerprint matches and trains only the others; a run file with another
fingerprint is refused with one line rather than mixed into the results. Since a run is a
pure function of its fingerprint (same machine and thread count), the resumed sweep's
results equal an uninterrupted one's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import atomic_write
from .train import RunResult

__all__ = ["RunStore", "fingerprint"]


def fingerprint(config: dict, method: dict, data: dict, model: str) -> str:
    """A short hash of what defines a run (everything but its seed, which is in the name)."""
    text = json.dumps({"config": config, "method": method, "data": data, "model": model},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunStore:
    """The ``runs/`` folder of a results folder."""

    def __init__(self, out: str | Path) -> None:
        self.folder = Path(out) / "runs"

    def path(self, label: str, batch_size: int, seed: int) -> Path:
        return self.folder / f"{label}-bs{batch_size}-seed{seed}.json"

    def save(self, label: str, result: RunResult, print_: str) -> Path:
        """Write one finished run (atomically)."""
        from .report import json_safe  # report imports the experiment, which imports this

        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"label": label, "fingerprint": print_, "run": result.to_dict()}
        return atomic_write(self.path(label, result.batch_size, result.seed),
                            json.dumps(json_safe(payload), indent=1))

    def load(self, label: str, batch_size: int, seed: int, print_: str) -> RunResult | None:
        """The saved run, or None if there is none.

        Raises:
            ValueError: the file is unreadable or was made by another configuration.
        """
        path = self.path(label, batch_size, seed)
        if not path.exists():
            return None
        try:
            payload = json.loads(path.read_text())
            saved = payload["fingerprint"]
            result = RunResult.from_dict(payload["run"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--resume: {path} is not a normlab run file ({err}); "
                             "delete it to retrain that run") from None
        if saved != print_:
            raise ValueError(f"--resume: {path} was made with another configuration, method "
                             "or data; resume with the same options, or use another --out")
        return result

    def count(self) -> int:
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0

"""The ``normlab`` command line.

Each subcommand lives in its own module under :mod:`normlab.lab.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func``; this file only discovers
them, so a new command is one new file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from . import commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="normlab: the standardization loss and the normalizations it replaces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        # Bad input from the user: one clear line, no traceback. KeyError quotes its message.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"normlab {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``normlab`` command line.

Each subcommand lives in its own module under :mod:`normlab.lab.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func``; this file only discovers
them, so a new command is one new file.

How a command ends (exit status): 0 done; 2 bad input (one line ``normlab CMD: error: ...``
naming the problem, before any work where it can be checked up front); 1 a failure during
the work (one line); 130 interrupted by Ctrl-C (SIGINT) and 143 by SIGTERM, each with one
line and no traceback. On an interruption the ``finally`` blocks of the command run, so
worker and rank processes are stopped and results folder locks are released.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
from typing import Sequence

from . import commands
from .interrupts import Terminated

__all__ = ["main", "build_parser", "Terminated"]


def _interrupted(signum, frame) -> None:
    # Once: a second Ctrl-C while ranks/workers are being stopped must not abort the cleanup
    # with a traceback, so both signals are ignored from here on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


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


def _message(err: BaseException) -> str:
    # KeyError quotes its message; an OSError's str carries errno noise before the reason.
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from .outdir import release_all

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("normlab: interrupted", file=sys.stderr)
        return 130
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. started with nohup
                previous[sig] = signal.signal(sig, _interrupted)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, TypeError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError) as err:
        # Bad input from the user: one clear line, no traceback.
        print(f"normlab {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a failure during the work (disk full, I/O error)
        print(f"normlab {args.command}: failed: {_message(err)}", file=sys.stderr)
        return 1
    except Terminated:  # before KeyboardInterrupt, its base class
        print(f"normlab {args.command}: terminated (SIGTERM); stopped", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"normlab {args.command}: interrupted (Ctrl-C); stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        release_all()


if __name__ == "__main__":
    sys.exit(main())

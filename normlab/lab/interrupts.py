"""SIGTERM as an interrupt: one exception type for every command, so cleanup runs once.

Ctrl-C raises ``KeyboardInterrupt`` in the main thread; SIGTERM (a scheduler, ``kill``)
raises :class:`Terminated`, a ``KeyboardInterrupt`` subclass, so every ``finally`` and
``except KeyboardInterrupt`` that stops workers and keeps finished runs handles both, and
the CLI still tells them apart for its exit status (130 and 143, the shell's codes).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "terminate_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same cleanup as Ctrl-C runs."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main
    thread, so ``finally`` blocks stop workers and keep finished runs. A no-op off the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



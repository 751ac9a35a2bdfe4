"""The glibc allocator settings every normlab timing runs under.

glibc's malloc serves large blocks (the activations of a training step) with ``mmap`` and
hands them back to the OS on ``free``; the next step page-faults every page back in. On the
2-core machines normlab is developed on this makes a training step up to 3.5x slower and its
time noisy, differently for each method (each has its own tensor sizes), which would swamp
the differences ``normlab bench`` measures. Raising both thresholds to 4 GiB keeps freed
blocks in the process, as a caching allocator (PyTorch's CUDA allocator, tcmalloc) would.
glibc reads the variables once at process start, so they must be set before Python starts;
:func:`tune_malloc` sets the same thresholds from inside a running process with ``mallopt``
(what ``normlab run``, ``compare`` and ``reproduce`` and their worker processes do).
"""

from __future__ import annotations

import ctypes
import os
from typing import Mapping

__all__ = ["MALLOC_ENV", "MALLOC_REASON", "malloc_env_ok", "tune_malloc"]

MALLOC_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
}

MALLOC_REASON = (
    "MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ are 4 GiB: without them glibc returns "
    "freed activations to the OS every step and page-faults them back, and step times swing "
    "by up to 3.5x"
)


def malloc_env_ok(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) holds the settings of :data:`MALLOC_ENV`.

    A tcmalloc/jemalloc ``LD_PRELOAD`` counts too: those allocators cache freed blocks anyway.
    """
    env = os.environ if environ is None else environ
    if any(name in env.get("LD_PRELOAD", "") for name in ("tcmalloc", "jemalloc")):
        return True
    return all(env.get(k) == v for k, v in MALLOC_ENV.items())


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (``mallopt``), so freed
    activations stay in the process instead of being page-faulted back every step.
    Returns False where the C library is not glibc (then nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)
                    and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False

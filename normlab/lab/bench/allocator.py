"""The glibc allocator settings every normlab timing runs under.

glibc's malloc serves large blocks (the activations of a training step) with ``mmap`` and
hands them back to the OS on ``free``; the next step page-faults every page back in. On the
2-core machines normlab is developed on this makes a training step up to 3.5x slower and its
time noisy, differently for each method (each has its own tensor sizes), which would swamp
the differences ``normlab bench`` measures. Raising both thresholds to 4 GiB keeps freed
blocks in the process, as a caching allocator (PyTorch's CUDA allocator, tcmalloc) would.
glibc reads the variables once at process start, so they must be set before Python starts.
"""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["MALLOC_ENV", "MALLOC_REASON", "malloc_env_ok"]

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

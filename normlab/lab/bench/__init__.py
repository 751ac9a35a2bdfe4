"""``normlab bench``: what each normalization costs in wall-clock time and memory.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, argue for the standardization loss on training speed and on
zero inference cost; these benchmarks measure both, for every registered method, through the
same machinery users run (``build_model``, ``method.auxiliary_loss``, ``make_optimizer`` +
``method.wrap_optimizer``, ``method.for_inference``).

- :mod:`.timing` — interleaved timing (A B A B ...), medians and spreads of ratios.
- :mod:`.cases` — the benchmark models and one method's training setup.
- :mod:`.train`, :mod:`.infer`, :mod:`.memory` — the three benchmarks.
- :mod:`.allocator` — the glibc settings every timing needs.
- :mod:`.output` — JSON and markdown tables.
"""

from .allocator import MALLOC_ENV, MALLOC_REASON, malloc_env_ok
from .cases import BENCH_MODELS, BenchModel, TrainSetup, make_setup
from .infer import bench_infer
from .memory import bench_memory, step_peak_bytes
from .timing import interleaved_times, ratio_summary
from .train import bench_train

__all__ = [
    "MALLOC_ENV", "MALLOC_REASON", "malloc_env_ok",
    "BENCH_MODELS", "BenchModel", "TrainSetup", "make_setup",
    "interleaved_times", "ratio_summary",
    "bench_train", "bench_infer", "bench_memory", "step_peak_bytes",
]

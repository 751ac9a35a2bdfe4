"""The standardization loss's optional CPU kernel: a C++ ``torch.library`` operator.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925. The kernel reads ``x`` once for the two per-channel statistics
(shifted sums around a per-channel pilot mean, blocks summed in the input type and blocks in
float64) and once for the gradient (affine in ``x`` per channel), threads over channels, and
registers ``torch.ops.normlab.std_loss`` with a C++ autograd node (no Python in its backward).

Opt-in, built ahead of training: :func:`load` (``set_implementation("kernel")``) compiles it
once per machine with ``torch.utils.cpp_extension.load_inline`` (about a minute); later
processes load the cached library directly, without ninja or torch's extension versioner.

- Cache key: a hash of the source, the flags, torch's version and the CPU architecture, in
  ``$TORCH_EXTENSIONS_DIR/normlab_std_loss_<key>/`` (default root ``~/.cache/torch_extensions``),
  whatever path python or torch was reached through. No ``-march=native``: a shared cache
  may serve machines with different CPUs.
- Build lock: an ``fcntl.flock`` on ``normlab.lock`` there, which the OS releases when its
  holder dies, so an interrupted build leaves no lock that blocks anyone; a waiter gives up
  after ``NORMLAB_KERNEL_LOCK_TIMEOUT`` seconds (default 300). Torch's own ``lock`` file, left
  by an interrupted torch build and waited on for ever, is removed while the flock is held.
- Failure: the full compiler output is warned once per process and kept in
  ``build_error.txt``; later processes (``--jobs`` workers) read it instead of rebuilding.
  Delete it to retry. ``NORMLAB_CPU_KERNEL=0`` disables the kernel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time
import warnings

import torch

try:  # POSIX advisory locks; elsewhere builds are not serialized
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["load", "error", "build_directory", "NAME", "SOURCE", "CFLAGS"]

_log = logging.getLogger("normlab")
_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ok": False, "error": ""}

SOURCE = r"""
// One read of x for the statistics, one pass for the gradient (normlab standardization loss).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

// Values summed in the input type before a block total is added in double: vectorizes, and
// keeps float32 rounding to a block of (x - k) values, which are of the order of the spread.
constexpr int64_t kBlock = 256;
constexpr int64_t kChunks = 16;

// Per-channel pilot k_c: the mean of up to kBlock values of channel c. Sums of (x - k_c) then
// do not cancel the way sums of x and x^2 do when |mean| >> std.
template <typename T>
void pilot(const T* x, int64_t O, int64_t C, int64_t I, double* k) {
  // The first rows in memory order (contiguous reads); up to kBlock values per channel.
  const int64_t cols = std::min(I, kBlock);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(O, (I > 1 ? kBlock : 64) / cols));
  std::fill(k, k + C, 0.0);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < cols; ++i) k[c] += static_cast<double>(x[(o * C + c) * I + i]);
  for (int64_t c = 0; c < C; ++c) {
    // Rounded to T: the kernel subtracts exactly this value.
    k[c] = static_cast<double>(static_cast<T>(k[c] / static_cast<double>(rows * cols)));
  }
}

template <typename T>
void shifted_sums(const T* x, int64_t O, int64_t C, int64_t I, const double* k, double* s1,
                  double* s2) {
  if (I > 1) {  // channel-major rows: threads split the channels
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const T kc = static_cast<T>(k[c]);
        double a1 = 0.0, a2 = 0.0;
        for (int64_t o = 0; o < O; ++o) {
          const T* row = x + (o * C + c) * I;
          for (int64_t b = 0; b < I; b += kBlock) {
            const int64_t e = std::min(I, b + kBlock);
            T b1 = 0, b2 = 0;
#pragma omp simd reduction(+ : b1, b2)
            for (int64_t i = b; i < e; ++i) {
              const T d = row[i] - kc;
              b1 += d;
              b2 += d * d;
            }
            a1 += b1;
            a2 += b2;
          }
        }
        s1[c] = a1;
        s2[c] = a2;
      }
    });
    return;
  }
  // Channels last (I == 1): a fixed number of row chunks (so results do not depend on the
  // thread count), each with its own per-channel sums.
  const int64_t chunks = std::min<int64_t>(kChunks, O);
  std::vector<double> p1(chunks * C, 0.0), p2(chunks * C, 0.0);
  std::vector<T> kt(k, k + C);
  at::parallel_for(0, chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> b1(C), b2(C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o0 = O * t / chunks, o1 = O * (t + 1) / chunks;
      for (int64_t ob = o0; ob < o1; ob += kBlock) {
        std::fill(b1.begin(), b1.end(), T(0));
        std::fill(b2.begin(), b2.end(), T(0));
        const int64_t oe = std::min(o1, ob + kBlock);
        for (int64_t o = ob; o < oe; ++o) {
          const T* row = x + o * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T d = row[c] - kt[c];
            b1[c] += d;
            b2[c] += d * d;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          p1[t * C + c] += b1[c];
          p2[t * C + c] += b2[c];
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t t = 0; t < chunks; ++t) {
      a1 += p1[t * C + c];
      a2 += p2[t * C + c];
    }
    s1[c] = a1;
    s2[c] = a2;
  }
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.device().is_cpu(),
              "normlab std_loss kernel: x must be a contiguous (O, C, I) CPU tensor");
  TORCH_CHECK(x.size(0) * x.size(2) >= 2 && x.size(1) >= 1, "normlab std_loss kernel: empty x");
}

// (loss in x's dtype, mean and biased variance per channel in float64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> moments_loss(const at::Tensor& x, double eps) {
  check(x);
  const int64_t O = x.size(0), C = x.size(1), I = x.size(2);
  auto opts = x.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({C}, opts), var = at::empty({C}, opts);
  std::vector<double> s1(C), s2(C);
  double* k = mean.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normlab_std_loss_forward", [&] {
    pilot<scalar_t>(x.const_data_ptr<scalar_t>(), O, C, I, k);
    shifted_sums<scalar_t>(x.const_data_ptr<scalar_t>(), O, C, I, k, s1.data(), s2.data());
  });
  const double m = static_cast<double>(O * I);
  double* v = var.data_ptr<double>();
  double loss = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const double d = s1[c] / m;
    v[c] = std::max(s2[c] / m - d * d, 0.0);
    k[c] += d;
    loss += k[c] * k[c] + v[c] - std::log(v[c] + eps) - 1.0;
  }
  return {at::scalar_tensor(0.5 * loss, x.options()), mean, var};
}

template <typename T>
void affine_rows(const T* x, T* out, int64_t O, int64_t C, int64_t I, const T* a, const T* b) {
  if (I > 1) {
    at::parallel_for(0, O * C, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T ar = a[r % C], br = b[r % C];
        const T* xr = x + r * I;
        T* yr = out + r * I;
#pragma omp simd
        for (int64_t i = 0; i < I; ++i) yr[i] = xr[i] * ar + br;
      }
    });
    return;
  }
  at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const T* xr = x + o * C;
      T* yr = out + o * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * a[c] + b[c];
    }
  });
}

// dL/dx = g (mu + (1 - 1/(var + eps)) (x - mu)) / M = x a_c + b_c: one pass over x.
at::Tensor loss_grad(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                    double grad, double eps) {
  check(x);
  const int64_t O = x.size(0), C = x.size(1), I = x.size(2);
  const double gm = grad / static_cast<double>(O * I);
  at::Tensor md = mean.to(at::kDouble).contiguous(), vd = var.to(at::kDouble).contiguous();
  const double* mu = md.const_data_ptr<double>();
  const double* v = vd.const_data_ptr<double>();
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normlab_std_loss_backward", [&] {
    std::vector<scalar_t> a(C), b(C);
    for (int64_t c = 0; c < C; ++c) {
      const double coef = (1.0 - 1.0 / (v[c] + eps)) * gm;
      a[c] = static_cast<scalar_t>(coef);
      b[c] = static_cast<scalar_t>(mu[c] * (gm - coef));
    }
    affine_rows<scalar_t>(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), O, C, I,
                          a.data(), b.data());
  });
  return out;
}

// The loss as one differentiable operator: forward and backward without Python in between.
struct StdLoss : public torch::autograd::Function<StdLoss> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, mean, var] = moments_loss(x, eps);
    ctx->save_for_backward({x, mean, var});
    ctx->saved_data["eps"] = eps;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    TORCH_CHECK(!grads[0].requires_grad(),
                "normlab std_loss kernel: double backward is not supported; use "
                "normlab.functional.set_implementation('torch')");
    auto saved = ctx->get_saved_variables();
    const double eps = ctx->saved_data["eps"].toDouble();
    return {loss_grad(saved[0], saved[1], saved[2], grads[0].item<double>(), eps),
            at::Tensor()};
  }
};

at::Tensor loss_autograd(const at::Tensor& x, double eps) { return StdLoss::apply(x, eps); }

at::Tensor loss_plain(const at::Tensor& x, double eps) { return std::get<0>(moments_loss(x, eps)); }

}  // namespace

TORCH_LIBRARY(normlab, m) {
  m.def("std_loss(Tensor x, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) { m.impl("std_loss", &loss_plain); }

TORCH_LIBRARY_IMPL(normlab, Autograd, m) { m.impl("std_loss", &loss_autograd); }
"""

CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_KEY = hashlib.sha256("\0".join(
    [SOURCE, *CFLAGS, *LDFLAGS, torch.__version__, platform.machine()]).encode()).hexdigest()[:16]
NAME = f"normlab_std_loss_{_KEY}"


def build_directory() -> str:
    """Where the library for this source, these flags and this torch version is cached."""
    from torch.utils.cpp_extension import get_default_build_root

    return os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), NAME)


def _library(folder: str) -> str:  # where load_inline puts the library
    return os.path.join(folder, f"{NAME}.so")


def _registered() -> bool:
    try:
        return hasattr(torch.ops.normlab, "std_loss")
    except Exception:  # torch.ops namespaces may raise on lookup failures in some versions
        return False


class _EarlierFailure(RuntimeError):
    pass


def _raise_if_failed(folder: str) -> None:
    failed = os.path.join(folder, "build_error.txt")
    if os.path.exists(failed):
        with open(failed) as f:
            raise _EarlierFailure(f"an earlier build failed (delete {failed} to retry):\n{f.read()}")


def _lock_timeout() -> float:
    raw = os.environ.get("NORMLAB_KERNEL_LOCK_TIMEOUT", "300")
    if not raw.replace(".", "", 1).isdigit():
        raise ValueError(f"NORMLAB_KERNEL_LOCK_TIMEOUT must be a number of seconds, got {raw!r}")
    return float(raw)


def _build(folder: str) -> None:
    from torch.utils.cpp_extension import load_inline

    load_inline(NAME, cpp_sources=SOURCE, is_python_module=False, build_directory=folder,
                extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False)


def _build_locked(folder: str, timeout: float) -> None:
    """Build under the folder's flock; raise TimeoutError after ``timeout`` s of waiting."""
    with open(os.path.join(folder, "normlab.lock"), "a") as handle:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"another process has held the build lock {handle.name} for "
                            f"over {timeout:g} s (NORMLAB_KERNEL_LOCK_TIMEOUT)") from None
                    time.sleep(0.2)
        # Leaving the with block closes the file, which releases the flock.
        if os.path.exists(_library(folder)):  # built while this process waited
            torch.ops.load_library(_library(folder))
            return
        _raise_if_failed(folder)  # or failed while it waited: do not compile it again
        # Only holders of the flock build here, so torch's baton file is a leftover of an
        # interrupted build; left in place it makes load_inline wait for ever.
        stale = os.path.join(folder, "lock")
        if os.path.exists(stale):
            os.remove(stale)
        _build(folder)


def error() -> str:
    """Why the kernel is not available: the full message ("" if it is, or was not tried)."""
    return str(_state["error"])


def load(build: bool = True) -> bool:
    """Load the cached kernel, building it first if ``build`` and it is not cached.

    Returns False where that is impossible; the first failure in a process warns once with
    the full reason (:func:`error` keeps it), later calls return False silently.
    """
    if _state["tried"]:
        return bool(_state["ok"])
    with _lock:
        if _state["tried"]:
            return bool(_state["ok"])
        if os.environ.get("NORMLAB_CPU_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
            _state.update(tried=True, ok=False, error="NORMLAB_CPU_KERNEL=0")
            return False
        if _registered():
            _state.update(tried=True, ok=True, error="")
            return True
        folder = build_directory()
        try:
            if os.path.exists(_library(folder)):
                torch.ops.load_library(_library(folder))
            elif not build and not os.path.exists(os.path.join(folder, "build_error.txt")):
                return False
            else:
                _raise_if_failed(folder)
                os.makedirs(folder, exist_ok=True)
                _log.warning("normlab: building the standardization-loss CPU kernel in %s "
                             "(once per machine, about a minute)", folder)
                try:
                    _build_locked(folder, _lock_timeout())
                except Exception as err:
                    if not isinstance(err, (TimeoutError, _EarlierFailure)):  # kept for others
                        with open(os.path.join(folder, "build_error.txt"), "w") as f:
                            f.write(f"{type(err).__name__}: {err}")
                    raise
            if not _registered():
                raise RuntimeError(f"{_library(folder)} registered no normlab::std_loss")
        except Exception as err:  # any build or load failure means: use the torch path
            msg = str(err).strip() or type(err).__name__
            _state.update(tried=True, ok=False, error=msg)
            warnings.warn(f"normlab: the standardization-loss CPU kernel is unavailable, using "
                          f"the pure-torch path. Reason:\n{msg}", RuntimeWarning, stacklevel=3)
            return False
        _state.update(tried=True, ok=True, error="")
        return True

"""XLA:CPU settings this engine's workloads need, applied before JAX starts its CPU backend.

YNNPACK convolutions: jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions by default.
At this project's shapes they ran up to 2x slower than XLA's own convolution, and the exact NTK
spent most of its time in them (BENCHMARKS.md, "YNNPACK convolutions off").
`-individual_convolution` keeps every other YNN fusion (matrix products, elementwise) as it is.

LLVM optimisation level 1 (XLA's default is 2 or more): the heavy work of these programs runs in
library kernels (convolutions, matrix products), so LLVM's expensive passes over the fused
elementwise code cost compile time without buying run time; level 1 cut cold compiles by about
a third with run times unchanged, level 0 made the zero-cost proxies run much slower
(BENCHMARKS.md, "LLVM optimisation level 1"). Values move at float32 round-off.

BLAS and LAPACK on one thread: the proxies' SVDs and eigensolvers (jacob_cov, AZ-NAS, the
NTK, VKDNW, NASWOT) run inside the scoring programs as calls into scipy's OpenBLAS, made from
XLA's threads. OpenBLAS's own worker thread then keeps spinning for a while after each call
and takes a core from the convolutions of the next candidate: with it, grad_prune's search ran
1.3-1.5x slower and the main job's proxies 1.15x (BENCHMARKS.md, "BLAS on one thread"). The
matrices are at most a few thousand by 64, so one thread loses nothing there.
$OPENBLAS_NUM_THREADS is set for the libraries loaded later (and child processes); those
already loaded (an entry point's imports can load scipy's) are set through threadpoolctl, which
knows every BLAS vendor's thread setter. The recorded proxy values (tests/nb201_pins_test.py)
and the searches' picks are unchanged.

A setting the user made wins: nothing is added for an option $XLA_FLAGS already names, and the
thread count is left alone when $OPENBLAS_NUM_THREADS or $OMP_NUM_THREADS is set. Set an option
yourself (e.g. `--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`,
`--xla_backend_optimization_level=3`, `OPENBLAS_NUM_THREADS=2`) to keep the default.

Only on CPU runs: when JAX will run on an accelerator ($JAX_PLATFORMS names another platform
first, or, with it unset, a GPU/TPU plugin is installed: `pip install -e '.[cuda]'`), nothing is
added; the optimisation level would otherwise apply to the GPU's code generation too, and the
accelerator does its own linear algebra.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os

SETTINGS = {'--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
            '--xla_backend_optimization_level': '1'}
BLAS_THREADS = 1
# the variables OpenBLAS reads for its thread count: a user who set either chose it
_THREAD_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS')


def accelerator_expected() -> bool:
  """Whether JAX's default backend will be an accelerator: $JAX_PLATFORMS names one first, or
  it is unset and a PJRT plugin (jax_cuda12_plugin, libtpu, ...) is installed."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() != 'cpu'
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True
  return importlib.util.find_spec('jax_plugins') is not None or (
      importlib.util.find_spec('libtpu') is not None)


def apply() -> bool:
  """Adds the settings to $XLA_FLAGS, each unless the user set that option, and limits BLAS to
  `BLAS_THREADS` unless the user set a thread count; True if it added anything. Nothing on an
  accelerator run (`accelerator_expected`). The XLA flags only take effect when called before
  JAX creates its CPU client (i.e. before the first array)."""
  if accelerator_expected():
    return False
  flags = os.environ.get('XLA_FLAGS', '')
  added = [f'{option}={value}' for option, value in SETTINGS.items() if option not in flags]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([flags] + added).strip()
  return bool(added) | limit_blas_threads()


def limit_blas_threads() -> bool:
  """Sets BLAS to `BLAS_THREADS` threads, in the libraries loaded now and later, unless the user
  set a thread count; True if it set it."""
  if any(name in os.environ for name in _THREAD_VARIABLES):
    return False
  os.environ['OPENBLAS_NUM_THREADS'] = str(BLAS_THREADS)
  try:  # local: only an entry point's start-up needs it
    import threadpoolctl
  except ImportError:  # an install older than the dependency: the later-loaded BLAS still get it
    return True
  threadpoolctl.threadpool_limits(BLAS_THREADS, user_api='blas')
  return True

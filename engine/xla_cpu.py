"""XLA:CPU settings this engine's workloads need, applied before JAX starts its CPU backend.

YNNPACK convolutions: jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions by default.
At this project's shapes they are up to 2x slower than XLA's own convolution (measured on a
2-core AMD EPYC, 3x3 conv forward, NHWC: batch 1,024 at 16x16x32 41 -> 82-90 GFLOP/s, 8x8x64
59 -> 141-156; batch 64 at 16x16x32 66 -> 139; 32x32x16 unchanged), and the exact NTK spent
most of its time in them. `-individual_convolution` keeps every other YNN fusion (matrix
products, elementwise) as it is.

LLVM optimisation level 1 (XLA's default is 2 or more): the heavy work of these programs runs in
library kernels (convolutions, matrix products), so LLVM's expensive passes over the fused
elementwise code cost compile time without buying run time. Cold compiles, NB201 C=16 N=5,
B=64, 2-core Intel Xeon (2026-12-03, `bench_score`): six zero-cost proxies 77.6 -> 52.2 s,
exact NTK 36.6 -> 26.9 s, independent NTK 28.9 -> 21.4 s, run times unchanged within the noise
(level 0 made the six 2.6x slower to run). Values move at float32 round-off (relative 1e-7 to
1e-6; 3e-5 on a GraSP value near zero).

An XLA flag the user set wins: nothing is added for an option $XLA_FLAGS already names. Set
an option yourself (e.g. `--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`,
`--xla_backend_optimization_level=3`) to keep XLA's default.
"""
from __future__ import annotations

import os

SETTINGS = {'--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
            '--xla_backend_optimization_level': '1'}


def apply() -> bool:
  """Adds the settings to $XLA_FLAGS, each unless the user set that option; True if it added
  any. Only takes effect when called before JAX creates its CPU client (i.e. before the first
  array)."""
  flags = os.environ.get('XLA_FLAGS', '')
  added = [f'{option}={value}' for option, value in SETTINGS.items() if option not in flags]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([flags] + added).strip()
  return bool(added)

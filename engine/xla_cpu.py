"""XLA:CPU settings this engine's workloads need, applied before JAX starts its CPU backend.

YNNPACK convolutions: jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions by default.
At this project's shapes they are up to 2x slower than XLA's own convolution (measured on a
2-core AMD EPYC, 3x3 conv forward, NHWC: batch 1,024 at 16x16x32 41 -> 82-90 GFLOP/s, 8x8x64
59 -> 141-156; batch 64 at 16x16x32 66 -> 139; 32x32x16 unchanged), and the exact NTK spent
most of its time in them. `-individual_convolution` keeps every other YNN fusion (matrix
products, elementwise) as it is.

An XLA flag the user set wins: nothing is added when $XLA_FLAGS already names the option. Set
the option yourself (e.g. `+individual_convolution`) to keep XLA's default.
"""
from __future__ import annotations

import os

YNN_OPTION = '--xla_cpu_experimental_ynn_fusion_type'
YNN_SETTING = '-individual_convolution'


def apply() -> bool:
  """Adds the settings to $XLA_FLAGS unless the user set them; True if it added them. Only
  takes effect when called before JAX creates its CPU client (i.e. before the first array)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_OPTION in flags:
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {YNN_OPTION}={YNN_SETTING}'.strip()
  return True

"""Proxy throughput: per-arch time and archs/s at several batch sizes K, compile time apart.

  python -m experiments.bench_score --proxies=ntk_cond,ntk_cond_independent,linear_regions \
      --ks=1,8,32,128 --ntk_width=16 --ntk_cells=5 --ntk_batch=64 --repeats=1

For each proxy and K: one Scorer (one compile for that K), then one call on K random NB201 archs
(a second call with fresh archs when --calls=2). Run time excludes compilation. Prints a Markdown
table and the machine it ran on.
"""
from __future__ import annotations

import platform
import time

import jax
import numpy as np
from absl import app, flags

from engine import proxies as proxies_lib
from engine import scoring
from search_spaces import nb201

_PROXIES = flags.DEFINE_string('proxies', 'ntk_cond,ntk_cond_independent,linear_regions',
                               'Proxies to time, one at a time.')
_KS = flags.DEFINE_string('ks', '1,8,32,128', 'Batch sizes K.')
_CALLS = flags.DEFINE_integer('calls', 1, 'Timed calls per (proxy, K), each on fresh archs.')
_WIDTH = flags.DEFINE_integer('ntk_width', 16, 'NTK network C.')
_CELLS = flags.DEFINE_integer('ntk_cells', 5, 'NTK network N.')
_BATCH = flags.DEFINE_integer('ntk_batch', 64, 'NTK batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'NTK repeats per arch.')
_CHUNK = flags.DEFINE_integer('cotangent_chunk', 16, 'Coupled NTK pullbacks vmapped together.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for the archs.')


def machine() -> str:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  import os
  return (f'{cpu}, {os.cpu_count()} cores, {len(jax.devices())} x {dev.platform} '
          f'({dev.device_kind}), jax {jax.__version__}')


def main(argv):
  del argv
  settings = proxies_lib.ScoreSettings(ntk_width=_WIDTH.value, ntk_cells=_CELLS.value,
                                       ntk_batch=_BATCH.value, ntk_repeats=_REPEATS.value,
                                       cotangent_chunk=_CHUNK.value)
  ks = [int(k) for k in _KS.value.split(',')]
  rng = np.random.default_rng(_SEED.value)
  print(f'machine: {machine()}')
  print(f'date: {time.strftime("%Y-%m-%d %H:%M")}')
  print(f'settings: NTK net C={_WIDTH.value} N={_CELLS.value}, batch {_BATCH.value}, '
        f'{_REPEATS.value} repeat(s); linear regions {settings.lr_batches}x'
        f'{settings.lr_batch_size} {settings.lr_patch}x{settings.lr_patch} inputs, C='
        f'{settings.lr_width}\n')
  print('| proxy | K | compile s | run s | s/arch | archs/s |')
  print('|---|---|---|---|---|---|')
  for name in _PROXIES.value.split(','):
    for k in ks:
      scorer = scoring.Scorer(name, settings, seed=_SEED.value, batch_candidates=k)
      k = scorer.batch_candidates
      for _ in range(_CALLS.value):
        ops = nb201.sample_ops(rng, k)
        scorer.score_ops(ops)
      t = scorer.timing
      per_arch = t.run_s / t.scored
      print(f'| {name} | {k} | {t.compile_s:.1f} | {t.run_s:.2f} | {per_arch:.4f} | '
            f'{1 / per_arch:.2f} |', flush=True)


if __name__ == '__main__':
  app.run(main)

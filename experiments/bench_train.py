"""Training-step throughput of one NB201 arch: fp32 and QAT images/s, compile apart.

  python -m experiments.bench_train --arch=6111 --width=16 --cells=5 --batch=128

Times the jitted train step of `engine.train` (augmentation, forward, backward, SGD update) on
random uint8 images after one warm-up call, `--steps` times per mode, and prints the median.
QAT is timed on calibrated ranges and BN statistics from a few float steps, as a real run has.
"""
from __future__ import annotations

import time

from absl import app, flags

from experiments import common

_ARCH = flags.DEFINE_string('arch', '6111', 'NB201 arch string or index.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Channels C.')
_CELLS = flags.DEFINE_integer('cells', 5, 'Cells per stage N.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per mode.')


def main(argv):
  del argv
  common.quiet_logs()
  import jax
  import numpy as np
  import optax
  from engine import train
  from experiments import train as train_exp
  from search_spaces import nb201
  from search_spaces.nb201 import qat
  try:
    arch = train_exp.arch_from_flag(_ARCH.value, nb201_only=True)
  except common.USER_ERRORS as err:
    common.fail(str(err))
  if min(_WIDTH.value, _CELLS.value, _BATCH.value, _STEPS.value) < 1:
    common.fail('--width, --cells, --batch and --steps must be positive')
  ops = nb201.parse_arch_str(arch)
  cfg = nb201.NB201Config(C=_WIDTH.value, N=_CELLS.value)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (_BATCH.value, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, _BATCH.value).astype(np.int32)
  v = qat.init_variables(jax.random.key(0), ops, cfg)
  tx = optax.sgd(0.01, 0.9, nesterov=True)
  step = train.make_train_step(lambda m: qat.QATNetwork(tuple(ops), cfg, m), tx)
  print(f'{arch} C={cfg.C} N={cfg.N} batch {_BATCH.value}, {jax.device_count()} device(s)')
  for mode in ('fp32', 'quant'):
    if mode == 'quant':
      v = qat.calibrate(v, ops, cfg, [train._normalize(images)])
    state = jax.device_put((v, tx.init(v['params'])), jax.devices()[0])
    t0 = time.perf_counter()
    *state, m = step(mode, *state, jax.random.key(0), images, labels)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for i in range(_STEPS.value):
      t0 = time.perf_counter()
      *state, m = step(mode, *state, jax.random.key(i + 1), images, labels)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    v = state[0]
    med = float(np.median(times))
    print(f'{mode:5s}: {_BATCH.value / med:6.1f} images/s (step {med:.3f} s, min-max '
          f'{_BATCH.value / max(times):.1f}-{_BATCH.value / min(times):.1f}); first call '
          f'(compile + one step) {first:.1f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

"""Training-step throughput of one arch of any space: fp32 and QAT images/s, compile apart.

  python -m experiments.bench_train --arch=6111 --width=16 --cells=5 --batch=128
  python -m experiments.bench_train --search_space=tinycnn --arch=f32k5-relu-max

The network is the one `--experiment=train` trains (`engine.train.trainable`: the lowered graph,
NB201's at `--width`/`--cells`, any other space's at its own size).
Times the jitted train step of `engine.train.train` (augmentation, forward, backward, SGD update) on
random uint8 images after one warm-up call, `--steps` times per mode, and prints the median.
QAT is timed on calibrated ranges and BN statistics from a few float steps, as a real run has.
"""
from __future__ import annotations

import time

from absl import app, flags

from experiments import common

_SPACE = flags.DEFINE_string('search_space', 'nb201', 'Registered search space of --arch.')
_ARCH = flags.DEFINE_string('arch', None, 'Arch string (NB201: or index); default NB201 6111.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Channels C (a space with size settings: NB201).')
_CELLS = flags.DEFINE_integer('cells', 5, 'Cells per stage N (a space with size settings).')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per mode.')


def main(argv):
  del argv
  common.quiet_logs()
  import jax
  import numpy as np
  import optax
  from engine.train import train
  from engine.train import trainable
  from experiments import train as train_exp
  from search_spaces import registry
  try:
    space = registry.get(_SPACE.value)
    if _ARCH.value is None and space.name != registry.DEFAULT:
      raise ValueError(f'--search_space={space.name} needs --arch=<a {space.name} arch string>')
    arch = train_exp.arch_from_flag(_ARCH.value or '6111', search_space=space.name)
    common.check_size_flags(space, 'trains')
    if min(_WIDTH.value, _CELLS.value, _BATCH.value, _STEPS.value) < 1:
      raise ValueError('--width, --cells, --batch and --steps must be positive')
    net = trainable.trainable(space.name, arch, C=_WIDTH.value, N=_CELLS.value)
  except (*common.USER_ERRORS, registry.SpaceError) as err:
    common.fail(str(err))
  rng = np.random.default_rng(0)
  size = net.image_size
  images = rng.integers(0, 256, (_BATCH.value, size, size, 3)).astype(np.uint8)
  labels = rng.integers(0, net.num_classes, _BATCH.value).astype(np.int32)
  v = net.init(jax.random.key(0))
  tx = optax.sgd(0.01, 0.9, nesterov=True)
  step = train.make_train_step(net.model_fn, tx)
  described = ''.join(f' {k}={v}' for k, v in net.size.items())
  print(f'{space.name} {net.arch}{described} batch {_BATCH.value}, {jax.device_count()} '
        f'device(s)')
  for mode in ('fp32', 'quant'):
    if mode == 'quant':
      v = net.calibrate(v, [train._normalize(images)])
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

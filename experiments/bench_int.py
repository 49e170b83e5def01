"""Integer-only reference inference speed: the numpy reference against its compiled (XLA) run.

  python -m experiments.bench_int --arch=6111 --width=16 --cells=5 --images=2000
  python -m experiments.bench_int --search_space=tinycnn --arch=f32k5-relu-max

Builds the int8 network of one arch of any space (`engine.train.trainable`: the lowered graph,
NB201's at `--width`/`--cells`) from freshly initialised, calibrated QAT variables (random
uint8 images; the speed does not depend on training), then times
  * `engine.quant.graph_int.IntGraph.reference_logits`: numpy, eager (the reference), on
    `--reference_images` images;
  * `IntGraph.logits`: the same kernels compiled by XLA, on `--images` images, compile (first
    batch) apart;
and checks that the two give the same int8 logits on every image both ran, for the rounding
given (`--rounding`, `engine.quant.quant.ROUNDINGS`; default TFLite Micro's).
"""
from __future__ import annotations

import time

from absl import app, flags

from experiments import common

_SPACE = flags.DEFINE_string('search_space', 'nb201', 'Registered search space of --arch.')
_ARCH = flags.DEFINE_string('arch', None, 'Arch string (NB201: or index); default NB201 6111.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Channels C (a space with size settings: NB201).')
_CELLS = flags.DEFINE_integer('cells', 5, 'Cells per stage N (a space with size settings).')
_IMAGES = flags.DEFINE_integer('images', 2000, 'Images for the compiled run.')
_REF_IMAGES = flags.DEFINE_integer('reference_images', 100, 'Images for the numpy reference.')
_BATCH = flags.DEFINE_integer('batch', 500, 'Batch of the compiled run.')
_ROUNDING = flags.DEFINE_enum('rounding', 'tflm', ['tflm', 'litert_reference', 'single'],
                              'Whose rounding the integer network follows.')


def main(argv):
  del argv
  common.quiet_logs()
  import jax
  import numpy as np
  from engine.train import train, trainable
  from experiments import train as train_exp
  from hardware import graph as graph_lib
  from search_spaces import registry
  try:
    space = registry.get(_SPACE.value)
    if _ARCH.value is None and space.name != registry.DEFAULT:
      raise ValueError(f'--search_space={space.name} needs --arch=<a {space.name} arch string>')
    arch = train_exp.arch_from_flag(_ARCH.value or '6111', search_space=space.name)
    common.check_size_flags(space, 'runs')
    if min(_WIDTH.value, _CELLS.value, _IMAGES.value, _REF_IMAGES.value, _BATCH.value) < 1:
      raise ValueError('--width, --cells, --images, --reference_images and --batch must be '
                       'positive')
    net = trainable.trainable(space.name, arch, C=_WIDTH.value, N=_CELLS.value)
  except (*common.USER_ERRORS, registry.SpaceError) as err:
    common.fail(str(err))
  rng = np.random.default_rng(0)
  n = max(_IMAGES.value, _REF_IMAGES.value)
  size = net.image_size
  x = np.asarray(train._normalize(rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)))
  v = net.calibrate(net.init(jax.random.key(0)),
                    [x[i:i + 128] for i in range(0, min(n, 256), 128)])  # what exists
  int_net = net.integer(v, rounding=_ROUNDING.value)
  macs = float(np.sum(graph_lib.node_stats(net.graph).macs))  # conv and dense
  described = ''.join(f' {k}={v}' for k, v in net.size.items())
  print(f'{space.name} {net.arch}{described}, {_ROUNDING.value} rounding, '
        f'{jax.device_count()} device(s)')

  t0 = time.perf_counter()
  ref = int_net.reference(x[:_REF_IMAGES.value])
  t_ref = time.perf_counter() - t0
  print(f'numpy reference: {_REF_IMAGES.value} images in {t_ref:.2f} s, '
        f'{_REF_IMAGES.value / t_ref:.1f} images/s')

  batch = min(_BATCH.value, _IMAGES.value)
  t0 = time.perf_counter()
  first = int_net.logits(x[:batch], batch)
  t_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  fast = int_net.logits(x[:_IMAGES.value], batch)
  t_fast = time.perf_counter() - t0
  rate = _IMAGES.value / t_fast
  line = (f'compiled: first batch of {batch} (compile + run) {t_first:.2f} s; '
          f'{_IMAGES.value} images in {t_fast:.2f} s, {rate:.1f} images/s, '
          f'10,000 images in {10000 / rate:.0f} s')
  line += f'; {2 * macs * rate / 1e9:.1f} GOP/s ({macs / 1e6:.1f} M multiply-accumulates/image)'
  print(line)
  both = min(_IMAGES.value, _REF_IMAGES.value)
  same = np.array_equal(fast[:both], ref[:both]) and np.array_equal(first, fast[:batch])
  print(f'compiled == numpy reference on {both} images: {same}')
  if not same:  # a failed check, as export's: one line, exit 3
    common.fail('verification failed: the compiled integer network differs from the numpy '
                'reference', common.VERIFICATION_FAILED_EXIT)
  if len(np.unique(ref[:both], axis=0)) == 1 and both > 1:  # equal, but on nothing to tell apart
    print('note: every image gives the same logits, so the check above compares constants')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

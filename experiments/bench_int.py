"""Integer-only reference inference speed: the numpy reference against its compiled (XLA) run.

  python -m experiments.bench_int --arch=6111 --width=16 --cells=5 --images=2000

Builds the int8 network of one NB201 arch from freshly initialised, calibrated QAT variables
(random uint8 images; the speed does not depend on training), then times
  * `IntNetwork(...)(x)`: numpy, eager (the reference), on `--reference_images` images;
  * `IntNetwork.logits(x)`: the same kernels compiled by XLA, on `--images` images, compile
    (first batch) apart;
and checks that the two give the same int8 logits on every image both ran, for the rounding
given (`--rounding`, `engine.quant.ROUNDINGS`; default TFLite Micro's).
"""
from __future__ import annotations

import time

from absl import app, flags

from experiments import common

_ARCH = flags.DEFINE_string('arch', '6111', 'NB201 arch string or index.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Channels C.')
_CELLS = flags.DEFINE_integer('cells', 5, 'Cells per stage N.')
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
  from engine import train
  from experiments import train as train_exp
  from search_spaces import nb201
  from search_spaces.nb201 import integer, qat
  try:
    arch = train_exp.arch_from_flag(_ARCH.value, nb201_only=True)
  except common.USER_ERRORS as err:
    common.fail(str(err))
  if min(_WIDTH.value, _CELLS.value, _IMAGES.value, _REF_IMAGES.value, _BATCH.value) < 1:
    common.fail('--width, --cells, --images, --reference_images and --batch must be positive')
  ops = nb201.parse_arch_str(arch)
  cfg = nb201.NB201Config(C=_WIDTH.value, N=_CELLS.value)
  rng = np.random.default_rng(0)
  n = max(_IMAGES.value, _REF_IMAGES.value)
  x = np.asarray(train._normalize(rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)))
  v = qat.calibrate(qat.init_variables(jax.random.key(0), ops, cfg), ops, cfg,
                    [x[i:i + 128] for i in range(0, min(n, 256), 128)])  # what exists
  net = integer.IntNetwork(v, ops, cfg, rounding=_ROUNDING.value)
  macs = float(nb201.count_flops(np.eye(len(nb201.OPS))[np.asarray(ops)][None], cfg, 'nb201')[0])
  print(f'{arch} C={cfg.C} N={cfg.N}, {_ROUNDING.value} rounding, '
        f'{jax.device_count()} device(s)')

  t0 = time.perf_counter()
  ref = net(x[:_REF_IMAGES.value]).q
  t_ref = time.perf_counter() - t0
  print(f'numpy reference: {_REF_IMAGES.value} images in {t_ref:.2f} s, '
        f'{_REF_IMAGES.value / t_ref:.1f} images/s')

  batch = min(_BATCH.value, _IMAGES.value)
  t0 = time.perf_counter()
  first = net.logits(x[:batch], batch)
  t_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  fast = net.logits(x[:_IMAGES.value], batch)
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
    print('note: every image gives the same logits (an arch whose output does not depend on '
          'its input, e.g. all none), so the check above compares constants')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

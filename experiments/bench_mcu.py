"""Emulated Cortex-M instruction counts of any space's archs against the hardware model's latency.

  python -m experiments.bench_mcu --archs=50 --width=16 --cells=5 --out=runs/bench_mcu.csv
  python -m experiments.bench_mcu --search_space=tinycnn --archs=20 --out=runs/bench_tiny.csv

For each of `--archs` random archs of `--search_space` (seed `--seed`; NB201: connected ones;
every space: those with an int8 path) the network the trainer trains (`engine.train.trainable`: the
lowered graph, NB201's at `--width`/`--cells`) is made an untrained int8 model
(initial weights, ranges calibrated on noise images: counts do not depend on training),
exported, generated as C (`deploy.c_source`), built for `--target` and run on one image in QEMU
(`deploy.mcu`). One CSV row per arch is appended as soon as it is measured, so
a stopped run resumes where it stopped (a row is reused only for the same --target, --width and
--cells). At the end it prints Kendall tau between the hardware
model's predicted latency (`--device`, each runtime) and the emulated instructions, the
instructions per MAC (or element) of each kernel class, and flash / SRAM against the model.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import tempfile
import time

from absl import app, flags

from experiments import common

_SPACE = flags.DEFINE_string('search_space', 'nb201', 'Registered search space to sample.')
_ARCHS = flags.DEFINE_integer('archs', 50, 'Random archs to measure (NB201: connected ones).')
_SEED = flags.DEFINE_integer('seed', 0, 'Arch sampling seed.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Channels C (a space with size settings: NB201).')
_CELLS = flags.DEFINE_integer('cells', 5, 'Cells per stage N (a space with size settings).')
_TARGET = flags.DEFINE_enum('target', 'm4', ['m4', 'm7'], 'Cortex-M4 (mps2-an386) or M7 (an500).')
_DEVICE = flags.DEFINE_string('device', 'nucleo-l4r5zi', 'Hardware-model device for the '
                              'predicted latency (its core should match --target).')
_OUT = flags.DEFINE_string('out', 'runs/bench_mcu.csv', 'CSV of per-arch rows (appended, resumable).')

from deploy.export import C_COST_RUNTIMES as RUNTIMES  # noqa: E402
# what the emulator and the toolchain measured; the hardware model's predictions are recomputed
# from the arch at summary time, so a model change needs no new emulation
FIELDS = ['arch', 'target', 'width', 'cells', 'instructions', 'emulator_s', 'macs', 'flash_bytes',
          'text', 'rodata', 'bss', 'arena', 'stack', 'per_kernel']
# a stored row is reused only when all of these match this run's (--device and --seed change no
# row: the predictions are recomputed and the seed only picks the archs)
KEY = ('arch', 'target', 'width', 'cells')


def _key(row) -> tuple:
  return tuple(str(row[k]) for k in KEY)


def measure(net, target: str, device: str, workdir) -> dict:
  """The row of one arch, `net` an `engine.train.trainable.Trainable`."""
  import jax
  import numpy as np
  from deploy import c_source, export, mcu
  from engine.train import trainable
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, net.image_size, net.image_size, 3)).astype(np.float32)
  v = trainable.init_calibrated(net, jax.random.key(0), x)
  model, ref = net.tflite(v, f'bench_mcu {net.space} {net.arch}'), net.integer(v)
  project = c_source.generate(model, workdir)
  elf = mcu.build(workdir, target)
  q = ref.quantize_input(x[:1]).astype(np.int8)
  want = ref.logits(x[:1])
  m = export.measure(project, mcu.run(workdir, q, target), want, elf, net.graph, target, device)
  if m['bitexact_fraction'] != 1.0:
    raise export.VerificationFailed(f'{net.arch}: the emulated logits differ from the integer '
                                    f'reference')
  s = m['sizes']
  return {'arch': net.arch, 'target': target, 'width': net.size.get('C', ''),
          'cells': net.size.get('N', ''),
          'instructions': int(round(m['instructions_per_inference'])),
          'emulator_s': m['emulator_seconds_per_inference'],
          'macs': sum(layer.macs for layer in project.layers
                      if layer.kernel in ('conv', 'pointwise', 'dense', 'affine')),
          'flash_bytes': m['flash_bytes'], 'text': s['.text'], 'rodata': s['.rodata'],
          'bss': s['.bss'], 'arena': project.arena_bytes, 'stack': m['stack_bytes'],
          'per_kernel': json.dumps({k: [v['work'], int(v['instructions'])]
                                    for k, v in m['instructions_per_kernel'].items()})}


def summarize(rows, nets, device: str) -> str:
  """The summary of `rows` and their `engine.train.trainable.Trainable`s."""
  import numpy as np
  from deploy import export
  from hardware import latency
  pred = [export.predicted_c_costs(net.graph, device) for net in nets]
  ins = np.array([float(r['instructions']) for r in rows])
  lines = [f'{len(rows)} archs; instructions per inference {ins.min() / 1e6:.1f}-'
           f'{ins.max() / 1e6:.1f} M (median {np.median(ins) / 1e6:.1f} M); emulator '
           f'{np.median([float(r["emulator_s"]) for r in rows]):.2f} s per inference (median, '
           f'max {max(float(r["emulator_s"]) for r in rows):.2f})']
  macs = np.array([float(r['macs']) for r in rows])
  lines.append(f'Kendall tau (MACs, instructions) {latency.kendall_tau(macs, ins):.3f}')
  real = np.array([float(r['flash_bytes']) for r in rows])
  for rt in RUNTIMES:
    lat = np.array([p[rt]['latency_ms'] for p in pred])
    err = np.array([p[rt]['flash_bytes'] for p in pred]) / real - 1
    lines.append(f'{rt:10s}: Kendall tau (predicted latency on {device}, instructions) '
                 f'{latency.kendall_tau(lat, ins):.3f}; predicted flash vs .text+.rodata median '
                 f'{np.median(err):+.1%} (range {err.min():+.1%} to {err.max():+.1%}), within '
                 f'10% on {int(np.sum(np.abs(err) <= 0.1))}/{len(rows)}')
  per = {}
  for r in rows:
    for k, (w, n) in json.loads(r['per_kernel']).items():
      p = per.setdefault(k, [0, 0])
      p[0] += w
      p[1] += n
  lines.append('instructions per MAC (conv, pointwise, dense, affine) or element: ' + ', '.join(
      f'{k} {n / max(w, 1):.2f}' for k, (w, n) in sorted(per.items(), key=lambda kv: -kv[1][1])))
  eq = sum(int(r['arena']) == p['plan_bytes'] for r, p in zip(rows, pred))
  lines.append(f'arena == hardware model TFLM plan on {eq}/{len(rows)} archs; stack '
               f'{min(int(r["stack"]) for r in rows)}-{max(int(r["stack"]) for r in rows)} bytes; '
               f'.bss - arena {np.median([int(r["bss"]) - int(r["arena"]) for r in rows]):.0f} '
               f'bytes (median: the im2col row)')
  return '\n'.join(lines)


def _archs(space, count: int, seed: int, size: dict) -> list:
  """`count` random archs of `space` with an int8 path (NB201: connected), as Trainables."""
  import numpy as np
  from engine.train import trainable
  rng = np.random.default_rng(seed)
  exportable = trainable.int8_exportable(space.name) or (lambda arch: True)
  connected = space.relax.valid if space.relax and space.relax.valid else None
  nets, seen = [], set()
  for _ in range(20):  # a few rounds of samples: most spaces need one
    for arch in space.sample(rng, 4 * count):
      name = space.encode(arch)
      if name in seen or not exportable(arch) or (
          connected is not None and not connected(space.to_array([arch]))[0]):
        continue
      seen.add(name)
      nets.append(trainable.trainable(space.name, name, **size))
      if len(nets) == count:
        return nets
  return nets


def main(argv):
  del argv
  from deploy import mcu
  from search_spaces import registry
  import hardware
  common.quiet_logs()
  if _ARCHS.value < 2:
    common.fail('--archs must be at least 2: the summary ranks archs against the hardware model')
  if min(_WIDTH.value, _CELLS.value) < 1:
    common.fail('--width and --cells must be positive')
  try:  # before any emulation
    space = registry.get(_SPACE.value)
    common.check_size_flags(space, 'runs')
    hardware.get_device(_DEVICE.value)
    common.check_output_file(_OUT.value, 'out', 'bench_mcu.csv')
  except (ValueError, registry.SpaceError) as err:
    common.fail(str(err))
  why = mcu.tools_missing(_TARGET.value)
  if why:
    common.fail(why)
  nets = _archs(space, _ARCHS.value, _SEED.value,
                {'C': _WIDTH.value, 'N': _CELLS.value} if space.sized_lower else {})
  if len(nets) < 2:
    common.fail(f'{space.name} has fewer than 2 archs with an int8 path in its samples; '
                f'nothing to rank')
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  done, fields = {}, FIELDS
  if out.exists():
    with out.open() as f:
      reader = csv.DictReader(f)
      fields = reader.fieldnames or FIELDS  # a file of an older layout keeps its columns
      if 'arch' not in fields:
        common.fail(f'--out={out} is not a bench_mcu CSV (no arch column); pass a new file')
      missing = [k for k in KEY if k not in fields]
      if missing:  # an older bench_mcu's: its rows cannot be told apart by their settings
        common.fail(f'--out={out} has no {", ".join(missing)} column (an older bench_mcu '
                    f'wrote it); add the settings its rows were measured with, or pass a new '
                    f'file')
      done = {_key(r): r for r in reader if r.get(fields[-1])}  # whole rows
  new = not out.exists()
  with out.open('a', newline='') as f, tempfile.TemporaryDirectory() as tmp:
    w = csv.DictWriter(f, fields, restval='', extrasaction='ignore')
    if new:
      w.writeheader()
    # arch strings name their space (NB201 |op~i|..., tinycnn f8k3-..., mbv2 w0.5-...), and a
    # space without a size of its own leaves width and cells blank
    keys = [_key(dict(arch=net.arch, target=_TARGET.value, width=net.size.get('C', ''),
                      cells=net.size.get('N', ''))) for net in nets]
    for i, (net, key) in enumerate(zip(nets, keys)):
      if key in done:
        continue
      t0 = time.perf_counter()
      try:
        row = measure(net, _TARGET.value, _DEVICE.value, os.path.join(tmp, str(i)))
      except Exception as err:  # pylint: disable=broad-except (re-raised unless a failed check)
        # a C project that does not build or run, or emulated logits that differ: one line and
        # the verification exit code; the rows measured so far stay in --out
        failed = common.failed_verification_message(err)
        if failed is None:
          raise
        common.fail(failed, common.VERIFICATION_FAILED_EXIT)
      w.writerow(row)
      f.flush()
      done[key] = {k: str(v) for k, v in row.items()}
      print(f'[{sum(k in done for k in keys)}/{len(nets)}] {net.arch}: '
            f'{row["instructions"] / 1e6:.1f} M instructions, '
            f'{time.perf_counter() - t0:.1f} s', flush=True)
  print(summarize([done[k] for k in keys], nets, _DEVICE.value))


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

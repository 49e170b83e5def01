"""`--experiment=train`: train one arch of any space in fp32, with PTQ or with QAT
(engine/train/train.py; every space through its lowered hardware graph,
`engine.train.trainable`: NB201's at --train_width/--train_cells, the other spaces' at their own
size).

  python -m experiments.run --experiment=train --search_space=nb201 --arch=6111 \
      --data_dir=../shared/data/cifar10 --epochs=10 --quant=qat --workdir=runs/6111_qat
  python -m experiments.run --experiment=train --search_space=tinycnn --arch=f16k3-f32k3-relu-max \
      --epochs=10 --quant=qat --workdir=runs/tinycnn_qat

Prints the final numbers as JSON (also in WORKDIR/results.json); rerunning the same command
resumes from the latest checkpoint.
"""
from __future__ import annotations

import json

from engine.train import train as train_lib
from experiments import common
from search_spaces import nb201


def arch_from_flag(spec, benchmark_file=None, search_space='nb201', nb201_only=False) -> str:
  """--arch (string or index) -> the space's arch string (one-line ValueError if bad);
  `nb201_only`: a tool without --search_space (its error names no other space)."""
  if search_space != 'nb201':
    from search_spaces import registry
    space = registry.get(search_space)
    if not spec:
      raise ValueError(f'--experiment=train needs --arch=<a {search_space} arch string>')
    return space.encode(space.decode(spec.strip()))
  if not spec:
    raise nb201.ArchError('--experiment=train needs --arch=<NB201 arch string or index>')
  ops = common.select_archs(spec, 0, benchmark_file) if (
      spec.strip().startswith('|') or spec.strip().lstrip('-').isdigit()) else None
  if ops is None:
    raise nb201.ArchError(f'--arch={spec!r} is neither an NB201 arch string (|op~0|+...) nor an '
                          f'index 0..{nb201.NUM_ARCHS - 1}'
                          + ('; this tool measures NB201 archs only' if nb201_only
                             else _space_hint(spec)))
  return nb201.format_arch_str(ops[0])


def _space_hint(spec: str) -> str:
  """'; it is a <space> arch: pass --search_space=<space>' when another space reads `spec`."""
  from search_spaces import registry
  for name in registry.names():
    if name == 'nb201':
      continue
    try:
      registry.get(name).decode(spec.strip())
    except Exception:  # pylint: disable=broad-except (each space's own parse error)
      continue
    return f'; it is a {name} arch: pass --search_space={name}'
  return ''


def config_from_flags(f) -> train_lib.TrainConfig:
  return train_lib.TrainConfig(
      arch=arch_from_flag(f.arch, f.benchmark_file, f.search_space), search_space=f.search_space,
      C=f.train_width, N=f.train_cells,
      dataset=f.dataset, epochs=f.epochs, quant=f.quant, batch_size=f.train_batch,
      optimizer=f.optimizer, lr=f.lr, weight_decay=f.weight_decay,
      warmup_epochs=f.warmup_epochs, label_smoothing=f.label_smoothing,
      calib_batches=f.calib_batches, init_from=f.init_from, distill_from=f.distill_from,
      distill_alpha=f.distill_alpha, distill_temperature=f.distill_temperature,
      train_images=f.train_images, test_images=f.test_images,
      int_eval_images=f.int_eval_images, seed=f.seed)


def run(f, workdir='train_out'):
  cfg = config_from_flags(f)
  data_dir = f.data_dir or str(nb201.data_dir() / 'cifar10')
  results = train_lib.train(cfg, data_dir, workdir, progress=f.progress)
  print(json.dumps(results, indent=1))

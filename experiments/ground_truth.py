"""Train a finite search space's archs with one short budget: its trained ground truth.

  python -m experiments.ground_truth --search_space=tinycnn --data_dir=../shared/data/cifar10 \
      --workdir=tinycnn_gt

Resumable: rerun the same command after a stop; finished chunks are kept. Writes
workdir/chunks/*.csv and, at the end, workdir/ground_truth.csv (one row per arch and seed, with a
`flag`: '' for an accuracy, 'nonfinite' or 'at_chance' for a run that is not one).

Several processes or hosts share the sweep on jax.distributed (`engine.sweep`), one command each
with the same flags and its own --process_id; process 0 writes ground_truth.csv:

  python -m experiments.ground_truth --workdir=/shared/gt --num_processes=2 --process_id=0 \
      --coordinator_address=node0:12355 --data_dir=../shared/data/cifar10
"""
from __future__ import annotations

import collections
import csv
import io
import pathlib

from absl import app
from absl import flags

from engine.train import ground_truth as gt
from engine import sweep as sweep_lib
from experiments import common
from search_spaces import nb201

from search_spaces import registry

flags.DEFINE_string('search_space', 'tinycnn', 'A registered finite search space.')
flags.DEFINE_string('data_dir', None, 'CIFAR-10 python batches (data_batch_1 trains, test_batch '
                    'tests); default $ZERONAS_DATA_DIR/cifar10 or ../shared/data/cifar10.')
flags.DEFINE_string('workdir', 'ground_truth_out', 'Where chunks and the table go.')
flags.DEFINE_integer('num_archs', 300, 'Archs, a stratified prefix of the space.', lower_bound=1)
flags.DEFINE_integer('noise_archs', 30, 'Of them, how many get extra seeds.', lower_bound=0)
flags.DEFINE_integer('noise_seeds', 2, 'Extra seeds for the noise archs.', lower_bound=0)
flags.DEFINE_integer('epochs', gt.GroundTruthConfig.epochs, 'Epochs per run.', lower_bound=1)
flags.DEFINE_integer('chunk', 12, 'Runs per atomically written chunk.', lower_bound=1)
flags.DEFINE_string('coordinator_address', '', 'With --num_processes > 1: host:port of process '
                    '0 (jax.distributed\'s coordinator); auto: SLURM/Cloud TPU detection.')
flags.DEFINE_integer('num_processes', 1, 'Processes sharing the sweep (chunk i: process i mod '
                     'N).', lower_bound=1)
flags.DEFINE_integer('process_id', 0, 'This process\'s id, 0..num_processes-1.', lower_bound=0)
FLAGS = flags.FLAGS


def run(config: dict, workdir) -> list[dict]:
  space = registry.get(config['search_space'])
  if space.enumerate is None or space.train_net is None:
    raise ValueError(f'{space.name} has no finite list of archs or no training network; a ground '
                     f'truth sweep needs both')
  share = sweep_lib.connect(config.get('coordinator_address', ''),
                            config.get('num_processes', 1), config.get('process_id', 0))
  data_dir = config["data_dir"] or str(nb201.data_dir() / "cifar10")
  rows = gt.run_sweep(space, workdir, data_dir, config['num_archs'], config['noise_archs'],
                      config['noise_seeds'], config['chunk'],
                      gt.GroundTruthConfig(epochs=config['epochs']), progress=True, share=share)
  if not share.writes_outputs:
    print(f'{share}: every chunk is on disk; process 0 writes {workdir}/ground_truth.csv')
    return rows
  buf = io.StringIO()
  writer = csv.DictWriter(buf, gt.COLUMNS)
  writer.writeheader()
  writer.writerows(rows)
  common.write_text_atomic(pathlib.Path(workdir) / 'ground_truth.csv', buf.getvalue())
  flagged = collections.Counter(r['flag'] for r in rows if r['flag'])
  print(f'{len(rows)} runs in {workdir}/ground_truth.csv' + (
      f'; {sum(flagged.values())} flagged ('
      + ', '.join(f'{n} {f}' for f, n in sorted(flagged.items()))
      + '): not accuracies, skipped by the readers' if flagged else ''))
  return rows


def main(argv):
  del argv
  config = {k: FLAGS[k].value for k in ('search_space', 'data_dir', 'num_archs', 'noise_archs',
                                        'noise_seeds', 'epochs', 'chunk',
                                        'coordinator_address', 'num_processes', 'process_id')}
  common.quiet_logs()
  try:
    common.check_workdir(FLAGS.workdir)
    run(config, FLAGS.workdir)
  except common.USER_ERRORS as err:
    common.fail(err)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

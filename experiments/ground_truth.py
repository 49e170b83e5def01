"""Train a finite search space's archs with one short budget: its trained ground truth.

  python -m experiments.ground_truth --search_space=tinycnn --data_dir=../shared/data/cifar10 \
      --workdir=tinycnn_gt

Resumable: rerun the same command after a stop; finished chunks are kept. Writes
workdir/chunks/*.csv and, at the end, workdir/ground_truth.csv (one row per arch and seed, with a
`flag`: '' for an accuracy, 'nonfinite' or 'at_chance' for a run that is not one).
"""
from __future__ import annotations

import collections
import csv
import io
import pathlib

from absl import app
from absl import flags
from tqdm import tqdm

from engine import ground_truth as gt
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
FLAGS = flags.FLAGS


def run(config: dict, workdir) -> list[dict]:
  space = registry.get(config['search_space'])
  if space.enumerate is None or space.train_net is None:
    raise ValueError(f'{space.name} has no finite list of archs or no training network; a ground '
                     f'truth sweep needs both')
  data_dir = config["data_dir"] or str(nb201.data_dir() / "cifar10")
  rows = gt.run_sweep(space, workdir, data_dir, config['num_archs'], config['noise_archs'],
                      config['noise_seeds'], config['chunk'],
                      gt.GroundTruthConfig(epochs=config['epochs']), progress=tqdm)
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
                                        'noise_seeds', 'epochs', 'chunk')}
  try:
    run(config, FLAGS.workdir)
  except common.USER_ERRORS as err:
    common.fail(err)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

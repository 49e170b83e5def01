"""zeronas-mcu entry point: `python -m experiments.run --experiment=NAME [flags]`.

With no flags it runs the default job: score 64 random NB201 archs with the TE-NAS proxies.
Bad input ends with one line on stderr naming the problem and the fix, and exit code 2.
"""
from __future__ import annotations

import sys

from absl import app, flags

from experiments import common

_EXPERIMENT = flags.DEFINE_enum('experiment', 'score', sorted(common.EXPERIMENTS),
                                'What to run.')
flags.DEFINE_enum('search_space', 'nb201', ['nb201'], 'Search space.')
flags.DEFINE_string('dataset', 'cifar10', 'cifar10, cifar100 or ImageNet16-120.')
flags.DEFINE_string('archs', 'random:64',
                    'all | random:N | a file with one arch string or index per line | an arch '
                    'string | an arch index.')
flags.DEFINE_string('proxies', 'ntk_cond,linear_regions', 'Comma-separated proxy names.')
flags.DEFINE_integer('batch_candidates', 8, 'Candidates per compiled call (K).')
flags.DEFINE_integer('candidate_chunk', 1,
                     'Candidates vmapped together inside a call; 1 runs only active ops.')
flags.DEFINE_integer('seed', 0, 'Seed for arch sampling, inputs and inits.')
flags.DEFINE_string('output', 'scores.csv', 'Output CSV path.')
flags.DEFINE_string('data_dir', None,
                    'Folder with CIFAR python pickle batches; without it inputs are N(0,1).')
flags.DEFINE_string('benchmark_file', None,
                    'NB201 CSV with arch_index,arch_str (default: the NB201 table in '
                    '$ZERONAS_DATA_DIR or ../shared/data).')
flags.DEFINE_integer('ntk_batch', 64, 'NTK batch size B.')
flags.DEFINE_integer('repeats', 3, 'NTK repeats (fresh init and batch each), averaged.')
flags.DEFINE_integer('ntk_width', 8, 'Channels C of the NTK proxy network (NB201: 16).')
flags.DEFINE_integer('ntk_cells', 1, 'Cells per stage N of the NTK proxy network (NB201: 5).')
flags.DEFINE_integer('cotangent_chunk', 0, 'Coupled NTK pullbacks vmapped together (0 = all).')
flags.DEFINE_string('init', 'torch_default', 'Weight init: torch_default or kaiming_normal.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; all options are --flags (see --help)')
  try:
    common.EXPERIMENTS[_EXPERIMENT.value](flags.FLAGS)
  except common.USER_ERRORS as err:
    common.fail(str(err))


if __name__ == '__main__':
  sys.exit(app.run(main))

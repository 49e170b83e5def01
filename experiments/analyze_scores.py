"""Rank correlation of a scores CSV with NB201 ground truth, and between proxies.

  python -m experiments.analyze_scores --scores=scores.csv \
      --benchmark_file=../shared/data/nb201/nb201_test_acc_200ep_nats.csv --dataset=cifar10

Joins on arch_index, drops flagged or non-finite values per proxy (and says how many), and prints
Spearman rho and Kendall tau (scipy.stats) of each proxy's "higher is better" orientation with test
accuracy, TE-NAS's rank-sum of ntk_cond and linear_regions, and Kendall tau between the two NTK
variants when both are present.
"""
from __future__ import annotations

import numpy as np
from absl import app, flags
from scipy import stats

from engine import proxies as proxies_lib
from experiments import common
from search_spaces import nb201

_SCORES = flags.DEFINE_string('scores', 'scores.csv', 'CSV written by --experiment=score.')
_BENCH = flags.DEFINE_string('benchmark_file', None, 'NB201 accuracy CSV (default: data dir).')
_DATASET = flags.DEFINE_enum('dataset', 'cifar10', list(common.ACC_COLUMN),
                             'Which test accuracy column (the names --dataset takes elsewhere).')


def load(scores_path, benchmark_file=None, dataset='cifar10'):
  """(ScoresCsv, test accuracy per row); ValueError (one line) for a file it cannot use."""
  scores = common.read_scores_csv(scores_path)
  if (scores.indices < 0).any():
    raise ValueError(f'{scores.path} has rows without an arch_index (not an NB201 run); this '
                     f'tool joins NB201 accuracies on it: use --experiment=correlate for the '
                     f'other spaces')
  table = nb201.load_arch_index(benchmark_file or str(nb201.default_benchmark_file()))
  return scores, table.columns[common.ACC_COLUMN[dataset]][scores.indices]


def proxy_column(scores, name):
  """Values oriented so that higher predicts better, with a validity mask."""
  values = scores.columns[name]
  valid = np.isfinite(values) & ~scores.flagged[name]
  sign = 1.0 if proxies_lib.REGISTRY[name].higher_is_better else -1.0
  return sign * values, valid


def correlations(score, acc):
  """(rho, tau), or None where they are undefined (fewer than 3 values, or all tied)."""
  if len(score) < 3 or len(np.unique(score)) < 2:
    return None
  return stats.spearmanr(score, acc).statistic, stats.kendalltau(score, acc).statistic


def _cells(found, score) -> str:
  if found is not None:
    return f'{found[0]:.3f} | {found[1]:.3f}'
  why = 'too few values' if len(score) < 3 else 'all tied'
  return f'n/a ({why}) | n/a'


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; pass --scores=scores.csv')
  try:
    scores, acc = load(_SCORES.value, _BENCH.value, _DATASET.value)
  except ValueError as err:  # this tool's checks, and nb201's table errors (ArchError)
    common.fail(str(err))
  names = [n for n in proxies_lib.REGISTRY if n in scores.columns]
  print(f'{len(acc)} archs, {_DATASET.value} test accuracy\n')
  print('| proxy | archs used | flagged/non-finite | Spearman rho | Kendall tau |')
  print('|---|---|---|---|---|')
  columns = {}
  for name in names:
    score, valid = proxy_column(scores, name)
    columns[name] = (score, valid)
    print(f'| {name} | {valid.sum()} | {(~valid).sum()} | '
          f'{_cells(correlations(score[valid], acc[valid]), score[valid])} |')
  for ntk in ('ntk_cond', 'ntk_cond_independent'):
    if ntk in columns and 'linear_regions' in columns:
      # TE-NAS: rank by each (better = higher rank), sum the ranks. Flagged NTKs rank last.
      score, valid = columns[ntk]
      score = np.where(valid, score, -np.inf)
      combined = stats.rankdata(score) + stats.rankdata(columns['linear_regions'][0])
      print(f'| TE-NAS rank sum ({ntk} + linear_regions) | {len(acc)} | - | '
            f'{_cells(correlations(combined, acc), combined)} |')
  if 'ntk_cond' in columns and 'ntk_cond_independent' in columns:
    both = columns['ntk_cond'][1] & columns['ntk_cond_independent'][1]
    tau = stats.kendalltau(columns['ntk_cond'][0][both],
                           columns['ntk_cond_independent'][0][both]).statistic
    print(f'\nKendall tau between ntk_cond and ntk_cond_independent: {tau:.3f} '
          f'({both.sum()} archs)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

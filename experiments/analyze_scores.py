"""Rank correlation of a scores CSV with NB201 ground truth, and between proxies.

  python -m experiments.analyze_scores --scores=scores.csv \
      --benchmark_file=../shared/data/nb201/nb201_test_acc_200ep_nats.csv --dataset=cifar10

Joins on arch_index, drops flagged or non-finite values per proxy (and says how many), and prints
Spearman rho and Kendall tau (scipy.stats) of each proxy's "higher is better" orientation with test
accuracy, TE-NAS's rank-sum of ntk_cond and linear_regions, and Kendall tau between the two NTK
variants when both are present.
"""
from __future__ import annotations

import csv

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
  with open(scores_path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if r['arch_index'] != '']
  table = nb201.load_arch_index(benchmark_file or str(nb201.default_benchmark_file()))
  index = np.array([int(r['arch_index']) for r in rows])
  acc = table.columns[common.ACC_COLUMN[dataset]][index]
  return rows, acc


def proxy_column(rows, name):
  """Values oriented so that higher predicts better, with a validity mask."""
  values = np.array([float(r[name]) for r in rows])
  valid = np.isfinite(values)
  if name + '_flag' in rows[0]:
    valid &= np.array([r[name + '_flag'] == '' for r in rows])
  sign = 1.0 if proxies_lib.REGISTRY[name].higher_is_better else -1.0
  return sign * values, valid


def correlations(score, acc):
  return stats.spearmanr(score, acc).statistic, stats.kendalltau(score, acc).statistic


def main(argv):
  del argv
  rows, acc = load(_SCORES.value, _BENCH.value, _DATASET.value)
  names = [n for n in proxies_lib.REGISTRY if n in rows[0]]
  print(f'{len(rows)} archs, {_DATASET.value} test accuracy\n')
  print('| proxy | archs used | flagged/non-finite | Spearman rho | Kendall tau |')
  print('|---|---|---|---|---|')
  columns = {}
  for name in names:
    score, valid = proxy_column(rows, name)
    columns[name] = (score, valid)
    rho, tau = correlations(score[valid], acc[valid])
    print(f'| {name} | {valid.sum()} | {(~valid).sum()} | {rho:.3f} | {tau:.3f} |')
  for ntk in ('ntk_cond', 'ntk_cond_independent'):
    if ntk in columns and 'linear_regions' in columns:
      # TE-NAS: rank by each (better = higher rank), sum the ranks. Flagged NTKs rank last.
      score, valid = columns[ntk]
      score = np.where(valid, score, -np.inf)
      combined = stats.rankdata(score) + stats.rankdata(columns['linear_regions'][0])
      rho, tau = correlations(combined, acc)
      print(f'| TE-NAS rank sum ({ntk} + linear_regions) | {len(rows)} | - | {rho:.3f} | '
            f'{tau:.3f} |')
  if 'ntk_cond' in columns and 'ntk_cond_independent' in columns:
    both = columns['ntk_cond'][1] & columns['ntk_cond_independent'][1]
    tau = stats.kendalltau(columns['ntk_cond'][0][both],
                           columns['ntk_cond_independent'][0][both]).statistic
    print(f'\nKendall tau between ntk_cond and ntk_cond_independent: {tau:.3f} '
          f'({both.sum()} archs)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

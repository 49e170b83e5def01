"""Aggregate selection: the split, the choice and the held-out report, on hand-made scores."""
import csv

import numpy as np
import pytest

from engine.proxies import aggregate
from experiments import select_aggregate


def _write_scores(path, n=200, seed=0):
  rng = np.random.default_rng(seed)
  cols = {name: rng.normal(size=n) for name in ('params', 'flops', 'nwot', 'synflow')}
  # Accuracy follows nwot and synflow together; params and flops are noise.
  acc = (np.argsort(np.argsort(cols['nwot'])) + np.argsort(np.argsort(cols['synflow']))
         + rng.normal(scale=5, size=n))
  flags = {name: [''] * n for name in cols}
  flags['synflow'][3] = 'nonfinite'
  with open(path, 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['arch_index', 'arch_str'] + [c for n in cols for c in (n, n + '_flag')]
               + ['cifar10_test_acc'])
    for i in range(n):
      w.writerow([i, 'x'] + [v for n in cols for v in (cols[n][i], flags[n][i])] + [acc[i]])
  return cols, acc


def test_split_is_seeded_disjoint_and_complete():
  sel, held = aggregate.split_archs(101, 0.3, seed=4)
  assert len(sel) == 30 and len(held) == 71
  assert not set(sel) & set(held) and set(sel) | set(held) == set(range(101))
  again = aggregate.split_archs(101, 0.3, seed=4)
  np.testing.assert_array_equal(sel, again[0])
  assert not np.array_equal(sel, aggregate.split_archs(101, 0.3, seed=5)[0])
  with pytest.raises(ValueError, match='select_fraction'):
    aggregate.split_archs(10, 1.0, 0)


def test_candidates_cover_every_combination_and_method():
  cands = aggregate.candidate_aggregates(['params', 'nwot', 'synflow'], max_components=3)
  assert len(cands) == (3 + 1) * 2  # three pairs and one triple, rank and logrank each
  assert {c.method for c in cands} == {'rank', 'logrank'}


def test_selection_finds_the_generating_pair_and_reports_held_out(tmp_path):
  cols, acc = _write_scores(tmp_path / 'scores.csv')
  columns, flags, acc_read, acc_name = select_aggregate.read_scores(tmp_path)
  assert acc_name == 'cifar10_test_acc' and flags['synflow'][3] == 1
  np.testing.assert_allclose(acc_read, acc)
  report = select_aggregate.select(columns, flags, acc_read, list(columns), 3, 0.5, 0, 5)
  assert set(report['chosen']['name'].split(':')[1].split('+')) == {'nwot', 'synflow'}
  # The held-out figure is computed on the other half only: recompute it by hand.
  _, held = aggregate.split_archs(len(acc), 0.5, 0)
  agg = aggregate.parse(report['chosen']['name'])
  pool = {n: columns[n][held] for n in agg.components}
  score, _ = aggregate.compute(agg, pool, {n: flags[n][held] for n in agg.components})
  from scipy import stats
  assert report['chosen']['held_out_spearman'] == pytest.approx(
      stats.spearmanr(score, acc[held]).statistic)
  assert report['chosen']['held_out_spearman'] > 0.8
  singles = {s['name']: s['held_out_spearman'] for s in report['single_proxies_held_out']}
  assert abs(singles['params']) < 0.3


def test_cli_writes_report_and_rejects_bad_input(tmp_path, capsys):
  _write_scores(tmp_path / 'scores.csv')
  from absl import flags as absl_flags
  fl = absl_flags.FLAGS
  fl(['prog', f'--scores_file={tmp_path}', '--combine=nwot,synflow,params', '--max_components=2'])
  try:
    assert select_aggregate.main([]) == 0
    assert (tmp_path / 'aggregate_selection.md').exists()
    assert 'held-out Spearman' in (tmp_path / 'aggregate_selection.md').read_text()
    fl(['prog', f'--scores_file={tmp_path}', '--combine=nwot,zzz'])
    assert select_aggregate.main([]) == 2
    assert 'zzz not in the scores' in capsys.readouterr().err
    fl(['prog', f'--scores_file={tmp_path / "nope"}'])
    assert select_aggregate.main([]) == 2
    (tmp_path / 'a_file').write_text('')
    for bad, said in [('--max_components=1', 'at least 2'), ('--top_listed=0', 'at least the'),
                      ('--combine=nwot,nwot', 'names a proxy twice'),
                      (f'--report_dir={tmp_path / "a_file"}', 'is a file, not a folder')]:
      fl.unparse_flags()
      fl(['prog', f'--scores_file={tmp_path}', bad])
      capsys.readouterr()
      assert select_aggregate.main([]) == 2, bad
      assert said in capsys.readouterr().err, bad
  finally:
    fl.unparse_flags()


def test_fitted_weights_are_chosen_on_the_selection_split_only(tmp_path):
  rng = np.random.default_rng(3)
  n = 400
  cols = {name: rng.normal(size=n) for name in ('params', 'nwot', 'synflow')}
  rank = lambda v: np.argsort(np.argsort(v))
  acc = 2 * rank(cols['nwot']) + rank(cols['synflow']) + rng.normal(scale=5, size=n)
  flags = {name: np.zeros(n, int) for name in cols}
  report = select_aggregate.select(cols, flags, acc, list(cols), 2, 0.5, 0, 5, fit_weights=True,
                                   refine=1)
  chosen = aggregate.parse(report['chosen']['name'])
  assert chosen.weights and set(chosen.components) == {'nwot', 'synflow'}
  assert chosen.weights[chosen.components.index('nwot')] > chosen.weights[
      chosen.components.index('synflow')]
  # Held-out figure recomputed on the other half with the chosen weights.
  _, held = aggregate.split_archs(n, 0.5, 0)
  score, _ = aggregate.compute(chosen, {k: v[held] for k, v in cols.items()})
  from scipy import stats
  assert report['chosen']['held_out_spearman'] == pytest.approx(
      stats.spearmanr(score, acc[held]).statistic)


def test_constant_scores_are_no_result():
  """Every aggregate's Spearman is nan on constant proxies: one line, no 'chosen ... nan'."""
  n = 40
  columns = {'nwot': np.ones(n), 'synflow': np.ones(n)}
  flags = {k: np.zeros(n, bool) for k in columns}
  with pytest.raises(ValueError, match='no aggregate has a finite Spearman'):
    select_aggregate.select(columns, flags, np.arange(n, dtype=float), list(columns), 2, 0.5,
                            0, 5)

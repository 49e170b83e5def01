"""experiments/select_rerank.py: its picks are the search's own rerank picks for the same
values, the whole job ranks a planted tie-breaker first, and bad input is one line."""
import csv
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from engine import search
from experiments import common
from experiments import run as run_lib
from experiments import search as search_exp
from experiments import select_rerank
from tests import cli


def _value(arch: str, term: str) -> float:
  """A fixed pseudo-random proxy value per (arch, term), with ties (8 levels)."""
  return float(hashlib.sha256(f'{term}:{arch}'.encode()).digest()[0] % 8)


class _FileScorer:
  """The search's scorer interface over fixed values, as the score file stands in for it."""
  higher_is_better = {'synflow': True, 'jacob_cov': True}
  compile_s = run_s = 0.0

  def reseed(self, seed):
    pass

  def default_k(self, n):
    return 8

  def __init__(self, table, pool):
    self.space = table.space
    self.code = {m.tobytes(): table.space.encode(table.archs[i])
                 for i, m in zip(pool, table.one_hot(pool))}

  def _values(self, codes):
    return {t: np.array([_value(c, t) for c in codes]) for t in self.higher_is_better}

  def score_archs(self, group, archs, k=None, progress=None):
    return self._values([self.space.encode(a) for a in archs])

  def score_masks(self, group, masks, k=None, progress=None):  # spaces with choice rows
    return self._values([self.code[m.tobytes()] for m in np.asarray(masks, np.float32)])


@pytest.fixture(scope='module')
def cells():
  return select_rerank.pool_cells(['cifar10'], [None, 50.0], {})


@pytest.mark.parametrize('terms', [('synflow',), ('synflow', 'jacob_cov')])
def test_its_picks_are_the_searchs_own_rerank_picks(cells, terms):
  """The same pool, objective (ranks, cost terms) and tie order as `search('rerank')` given the
  same values: the study measures what the search would pick."""
  codes = {c[1].space.encode(c[1].archs[i]) for c in cells for i in c[2]}
  scores = {a: {t: _value(a, t) for t in terms} for a in codes}
  chosen = select_rerank.picks(cells, [scores], terms)
  for (name, table, pool, acc, size, f), (name2, pick, size2) in zip(cells, chosen):
    assert name == name2 and size == size2
    assert 100 < len(pool) <= 256  # NB201's largest tier, capped at the search's pool
    scorer = _FileScorer(table, pool)
    problem = search.Problem(table, scorer, ','.join(terms), search_exp.weights_from_flags(f),
                             f.objective)
    result = search.search('rerank', problem, 0, search_exp.options_from_flags(f))
    assert pick == acc[result.index]


def test_several_seeds_give_the_mean_of_their_picks_or_one_ensemble_pick(cells):
  codes = {c[1].space.encode(c[1].archs[i]) for c in cells for i in c[2]}
  seeds = [{a: {'synflow': _value(a, f'synflow{k}')} for a in codes} for k in range(2)]
  one = [select_rerank.picks(cells, [s], ['synflow']) for s in seeds]
  both = select_rerank.picks(cells, seeds, ['synflow'])
  for k, (name, pick, _) in enumerate(both):
    assert pick == pytest.approx((one[0][k][1] + one[1][k][1]) / 2)
  # the ensemble ranks by the summed objective: equal to one seed when both seeds agree
  assert select_rerank.picks(cells, seeds[:1] * 2, ['synflow'], ensemble=True) == one[0]
  # and otherwise picks the first arch (size order) with the highest summed percentile rank
  ensemble = select_rerank.picks(cells, seeds, ['synflow'], ensemble=True)
  for (_, table, pool, acc, _, _), (_, pick, _) in zip(cells, ensemble):
    pool_codes = [table.space.encode(table.archs[i]) for i in pool]
    ranks = sum(stats.rankdata([s[c]['synflow'] for c in pool_codes]) for s in seeds)
    assert pick == acc[pool[int(np.argmax(ranks))]]


def test_the_cells_are_the_default_searchs_pools(cells):
  f = run_lib.make_config('search', dataset='cifar10')
  assert cells[0][5].proxies == f.proxies == run_lib.RERANK_DEFAULTS['proxies']
  for _, table, pool, _, _, _ in cells:
    params = table.costs['params'][pool]
    assert table.feasible[pool].all() and params.min() >= 0.98 * params.max()
    assert params.max() == table.costs['params'][table.feasible].max()


def test_the_job_ranks_a_planted_tie_breaker_first(tmp_path):
  """Step 1 writes the pool archs; a score file where `snip` is each arch's accuracy and
  `synflow` noise: snip (alone or with anything) is at or above the size baselines in every
  cell and listed first, and the default's row is there."""
  env = dict(cli.os.environ, JAX_PLATFORMS='cpu')
  cells_flags = ['--datasets=cifar10', '--budgets=none,50']
  archs = tmp_path / 'pools.txt'
  step1 = subprocess.run([sys.executable, '-m', 'experiments.select_rerank',
                          f'--write_pool_archs={archs}', *cells_flags], cwd=cli.REPO, env=env,
                         capture_output=True, text=True, timeout=600)
  assert step1.returncode == 0, step1.stderr[-2000:]
  codes = archs.read_text().split()
  bench = common.arch_index_table(None, required=True)
  from search_spaces import registry
  space = registry.get('nb201')
  acc = bench.columns[common.ACC_COLUMN['cifar10']][
      bench.ops_to_index(space.to_array([space.decode(c) for c in codes]))]
  with open(tmp_path / 'scores.csv', 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['arch_str', 'snip', 'synflow', 'az_trainability', 'jacob_cov'])
    for c, a in zip(codes, acc):
      w.writerow([c, a, _value(c, 'synflow'), _value(c, 'az'), _value(c, 'jc')])
  step3 = subprocess.run([sys.executable, '-m', 'experiments.select_rerank',
                          f'--pool_scores={tmp_path / "scores.csv"}', '--max_terms=1', *cells_flags],
                         cwd=cli.REPO, env=env, capture_output=True, text=True, timeout=600)
  assert step3.returncode == 0, step3.stderr[-2000:]
  report = (tmp_path / 'rerank_selection.md').read_text()
  rows = [line for line in report.splitlines() if line.startswith('| ') and '/2 |' in line]
  assert rows[0].startswith('| snip | 2/2 |')
  default = run_lib.RERANK_DEFAULTS['proxies']
  assert any(line.startswith(f'| {default} |') for line in rows)  # the default


@pytest.mark.parametrize('args, fragment', [
    (['--half=evaluation', '--write_pool_archs=x.txt'], 'selection half only'),
    (['--pools=4', '--write_pool_archs=x.txt'], 'drop --pools'),
    (['--proxies=synflow', '--write_pool_archs=x.txt'], 'drop --proxies'),
    ([], 'needs one of --write_pool_archs'),
    (['--pool_scores=nowhere.csv'], 'no such file'),
    (['--budgets=none,150', '--write_pool_archs=x.txt'], "bad --budgets entry '150'"),
    (['--zc_width=8', '--write_pool_archs=x.txt'], 'does not read --zc_width'),
    (['--search_space=tinycnn', '--write_pool_archs=x.txt'], 'does not read --search_space'),
    (['--max_terms=2', '--write_pool_archs=x.txt'], '--max_terms is read with --pool_scores'),
    (['--write_pool_archs=.'], '--write_pool_archs=. is a folder'),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
  env = dict(cli.os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'experiments.select_rerank', *args],
                          cwd=tmp_path, env={**env, 'PYTHONPATH': str(cli.REPO)},
                          capture_output=True, text=True, timeout=300)
  cli.assert_one_line_error(result, fragment)
  assert not (tmp_path / 'x.txt').exists()


def test_flagged_values_bad_numbers_and_terms_that_cannot_rank(tmp_path):
  """A value score flagged is no value; a non-number is named by file and line; a term that is
  flagged everywhere or constant cannot rank archs (the job refuses it, or leaves it out)."""
  path = tmp_path / 's.csv'
  path.write_text('arch_str,synflow,synflow_flag,snip,grasp,grasp_flag\n'
                  'a,1.0,,2,5,nonfinite\nb,2.0,nonfinite,2,6,nonfinite\nc,3.0,,2,7,nonfinite\n')
  scores, _ = select_rerank.read_scores(path)
  assert np.isnan(scores['b']['synflow']) and scores['c']['synflow'] == 3.0
  assert select_rerank.uninformative([scores], 'synflow') is None
  assert select_rerank.uninformative([scores], 'snip') == 'it takes one value on every arch'
  assert select_rerank.uninformative([scores], 'grasp') == 'every value is flagged or non-finite'
  bad = tmp_path / 'bad.csv'
  bad.write_text('arch_str,snip\na,1\nb,abc\n')
  with pytest.raises(ValueError, match=r"bad.csv:3: snip is 'abc', not a number"):
    select_rerank.read_scores(bad)

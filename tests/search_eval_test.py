"""experiments/search_eval.py: the fixed split, the cells' summary and table, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import search_eval
from search_spaces import registry
from tests import cli


def test_the_split_is_fixed_and_about_half():
  space = registry.get('nb201')
  strs = [space.encode(a) for a in space.enumerate()]
  half = search_eval.in_evaluation_half(strs)
  assert 0.48 < half.mean() < 0.52
  np.testing.assert_array_equal(half, search_eval.in_evaluation_half(strs))  # no hidden state
  # the split is a function of the arch alone, not of its position in the list
  np.testing.assert_array_equal(search_eval.in_evaluation_half(strs[::-1]), half[::-1])


def _row(dataset, pct, seed, search, max_macs=93.0, oracle=94.0):
  return dict(dataset=dataset, budget_pct=pct, seed=seed, search=search, feasible=True,
              max_macs=max_macs, max_params=max_macs - 0.5, random=88.0, oracle=oracle)


def test_summary_and_table_say_where_the_search_loses(tmp_path):
  rows = [_row('cifar10', None, 0, 93.5), _row('cifar10', None, 1, 93.3),
          _row('cifar10', 50.0, 0, 92.0, max_macs=92.5, oracle=93.0)]
  summary = search_eval.summarize(rows)
  cells = {e['cell']: e for e in summary}
  assert cells['cifar10/no budget']['search'][0] == pytest.approx(93.4)
  assert cells['cifar10/no budget']['gap']['search'] == pytest.approx(0.6)
  text = search_eval.write_table(tmp_path, summary, 'evaluation')
  assert '| cifar10/no budget | 2 | 93.40 ± 0.10 | 0.60 |' in text
  assert text.splitlines()[-1].endswith('| NO |')  # 92.0 < max_macs 92.5
  assert text.splitlines()[-2].endswith('| yes |')
  assert (tmp_path / 'table.md').read_text() == text


def test_a_search_that_stopped_without_a_pick_is_counted_and_never_a_win(tmp_path):
  stopped = {k: v for k, v in _row('cifar10', None, 1, None).items() if k != 'search'}
  rows = [_row('cifar10', None, 0, 93.9), dict(stopped, stopped='no proxy tells ...')]
  summary = search_eval.summarize(rows)
  assert summary[0]['search'][0] == pytest.approx(93.9) and summary[0]['stopped'] == 1
  line = search_eval.write_table(tmp_path, summary, 'evaluation').splitlines()[-1]
  assert line.startswith('| cifar10/no budget | 2 (1 stopped) | 93.90 | ')  # one pick: no std
  assert line.endswith('| NO |')  # above max_macs on its one pick, but one seed gave none
  only = search_eval.summarize([dict(stopped, stopped='...')])[0]  # baselines still reported
  assert only['stopped'] == 1 and only['max_macs'][0] == 93.0 and np.isnan(only['search'][0])


def test_with_finalists_the_table_sets_the_stage_against_the_same_searches_own_picks(tmp_path):
  rows = [dict(_row('cifar10', None, s, pick), proxy_pick=own, finalist_s=t)
          for s, pick, own, t in [(0, 93.5, 93.0, 100.0), (1, 93.1, 93.4, 50.0)]]
  text = search_eval.write_table(tmp_path, search_eval.summarize(rows), 'evaluation')
  assert text.splitlines()[-1] == ('| cifar10/no budget | 2 | 93.20 ± 0.20 | 93.30 ± 0.20 | '
                                   '+0.10 | 75 |')
  plain = search_eval.write_table(tmp_path, search_eval.summarize([_row('cifar10', None, 0,
                                                                         93.5)]), 'evaluation')
  assert 'with finalists' not in plain


@pytest.mark.parametrize('args, fragment', [
    (['--budgets=none,150'], "bad --budgets entry '150'"),
    (['--datasets=mnist'], "bad --datasets entry 'mnist'"),
    (['--seeds=9-x'], 'bad --seeds'),
    (['--device=stm32h743'], 'search_eval does not read --device'),
    (['--prune_none=yes'], '--prune_none is not read by --experiment=search'),
    (['--finalists=2', '--datasets=cifar10', '--budgets=none', '--seeds=0'],
     '--finalists trains the best candidates on your data: pass --data_dir'),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
  env = dict(cli.os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'experiments.search_eval',
                           f'--workdir={tmp_path}', *args], cwd=cli.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  cli.assert_one_line_error(result, fragment)
  assert not (tmp_path / 'results.json').exists()


def test_importing_it_leaves_the_searchs_defaults_alone():
  from absl import flags
  assert flags.FLAGS['workdir'].default == 'search_out'
  assert flags.FLAGS['seeds'].default == ''


def test_rows_are_keyed_by_the_settings_the_searches_run_with():
  """A run that names the default's settings shares its rows with the no-flag run; the old
  default (named) does not, so rows from before a default changed are never read as the new
  default's."""
  from experiments import run
  default = search_eval.config_key({}, 'evaluation')
  assert search_eval.config_key(dict(run.RERANK_DEFAULTS), 'evaluation') == default
  assert search_eval.config_key({'proxies': run.DEFAULT_SEARCH_OBJECTIVE}, 'evaluation') != default
  assert search_eval.config_key({}, 'selection') != default
  assert json.loads(json.dumps(default)) == default  # as read back from results.json

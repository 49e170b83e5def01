"""compare_scores: per-proxy Spearman between two runs on shared, unflagged archs."""
import csv

import pytest
from scipy import stats

from experiments import compare_scores

import cli


def _write(path, indices, values, flags=None):
  flags = flags or [''] * len(indices)
  with open(path, 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['arch_index', 'arch_str', 'grasp', 'grasp_flag', 'other'])
    for i, v, f in zip(indices, values, flags):
      w.writerow([i, 'x', v, f, 1])
  return path


def _main(*args):
  return cli.call_main(compare_scores.main, *args)


def test_spearman_on_shared_unflagged_archs(tmp_path, capsys):
  a = _write(tmp_path / 'a.csv', [0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6],
             ['', '', 'nonfinite', '', '', ''])
  b = _write(tmp_path / 'b.csv', [5, 4, 3, 2, 1, 0, 9], [6, 4, 5, 0, 2, 1, 7])
  rows = compare_scores.compare(a, b)
  assert rows == [{'name': 'grasp', 'archs': 6, 'used': 5,
                   'spearman': pytest.approx(stats.spearmanr([1, 2, 4, 5, 6],
                                                             [1, 2, 5, 4, 6]).statistic)}]
  assert _main(f'--scores_a={a}', f'--scores_b={b}') == 0
  assert '| grasp | 6 | 5 |' in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
  assert _main(f'--scores_a={tmp_path / "a.csv"}') == 2
  assert _main(f'--scores_a={tmp_path / "x.csv"}', f'--scores_b={tmp_path / "y.csv"}') == 2
  assert 'cannot read' in capsys.readouterr().err


def test_plug_in_space_runs_join_on_the_arch_string(tmp_path):
  """tinycnn's scores.csv has no arch_index: its rows join on arch_str."""
  def write(path, archs, values):
    with open(path, 'w', newline='') as fh:
      w = csv.writer(fh)
      w.writerow(['arch_str', 'synflow', 'synflow_flag'])
      w.writerows([a, v, ''] for a, v in zip(archs, values))
    return path
  a = write(tmp_path / 'a.csv', ['f8k3-relu-max', 'f16k3-relu-max', 'f32k3-relu-max'], [1, 2, 3])
  b = write(tmp_path / 'b.csv', ['f32k3-relu-max', 'f8k3-relu-max', 'f16k3-relu-max'], [3, 1, 2])
  assert compare_scores.compare(a, b) == [{'name': 'synflow', 'archs': 3, 'used': 3,
                                           'spearman': pytest.approx(1.0)}]

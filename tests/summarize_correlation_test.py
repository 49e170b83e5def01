"""summarize_correlation: tables from correlate workdirs (hand-written JSON)."""
import json


from experiments import summarize_correlation as sc

import cli


def _workdir(path, dataset, rows, agreement=None):
  path.mkdir()
  (path / 'correlation.json').write_text(json.dumps({'dataset': dataset, 'archs': 10,
                                                     'rows': rows}))
  if agreement is not None:
    (path / 'agreement.json').write_text(json.dumps({'dataset': dataset, 'rows': agreement}))
  return path


def _main(*workdirs):
  return cli.call_main(sc.main, '--correlate_workdirs=' + ','.join(map(str, workdirs)))


def test_tables_have_one_column_per_workdir_and_published_figures(tmp_path, capsys):
  a = _workdir(tmp_path / 'a', 'cifar10',
               [{'name': 'synflow', 'spearman': 0.75, 'kendall': 0.5, 'used': 9, 'flagged': 1}],
               [{'name': 'synflow', 'reference_column': 'synflow', 'spearman': 0.99,
                 'used': 9}])
  b = _workdir(tmp_path / 'b', 'cifar100',
               [{'name': 'nwot', 'spearman': None, 'kendall': None, 'used': 2, 'flagged': 0}])
  assert _main(a, b) == 0
  out = capsys.readouterr().out
  assert '| `synflow` | 0.750 (tau 0.500; 9 used, 1 flagged) |  | 0.76 |' in out
  assert '| `nwot` |  | n/a (tau n/a; 2 used) | 0.76 |' in out
  assert '| `synflow` (synflow) | 0.990 (9 archs) |' in out


def test_missing_workdir_is_a_one_line_error(tmp_path, capsys):
  assert _main(tmp_path / 'nope') == 2
  assert 'correlation.json not found' in capsys.readouterr().err

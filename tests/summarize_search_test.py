"""experiments.summarize_search: the docs' search tables come from the workdirs' results.json."""
import json

from experiments import summarize_search

import cli


def _write(tmp_path, name, budget, accs, gaps):
  d = tmp_path / name
  d.mkdir()
  limits = {'sram_bytes': 1.0} | ({'latency_ms': budget} if budget else {})
  results = [dict(test_acc=a, gap=g, feasible=True, run_s=2.0 * i, compile_s=9.0 if i == 0 else 0.0,
                  search_s=3.0 * i) for i, (a, g) in enumerate(zip(accs, gaps))]
  (d / 'results.json').write_text(json.dumps(dict(meta=dict(searcher='prune', limits=limits),
                                                  results=results)))
  return d


def test_row_reports_mean_std_and_times(tmp_path):
  d = _write(tmp_path, 'b83', 83.09, [90.0, 92.0], [2.0, 0.0])
  assert summarize_search.row(d) == ('| b83 | prune | 83.09 | 2 | 91.00 +- 1.00 | 1.00 +- 1.00 | '
                                     '2/2 | 1.0 | 9.0 | 1.5 | n/a | n/a | n/a | n/a |')


def test_missing_results_is_a_one_line_error(tmp_path, capsys):
  assert cli.call_main(summarize_search.main, f'--search_workdirs={tmp_path / "nope"}') == 2
  err = capsys.readouterr().err
  assert err.startswith('error: cannot read') and err.count('\n') == 1


def test_row_shows_the_baselines_of_the_run(tmp_path):
  d = _write(tmp_path, 'free', None, [93.0], [1.0])
  data = json.loads((d / 'results.json').read_text())
  data['meta']['baselines'] = {'max_macs': {'test_acc': 93.54}, 'max_params': {'test_acc': 93.5},
                               'random': {'test_acc': 88.661}, 'oracle': {'test_acc': 94.31}}
  (d / 'results.json').write_text(json.dumps(data))
  assert summarize_search.row(d).endswith('| 93.54 | 93.50 | 88.66 | 94.31 |')


def test_anytime_table_averages_the_best_so_far_over_seeds(tmp_path):
  d = _write(tmp_path, 'rand', None, [93.0, 92.0], [1.0, 2.0])
  data = json.loads((d / 'results.json').read_text())
  data['meta']['searcher'] = 'random'
  data['results'][0]['trace'] = [[8, 11, 90.0], [16, 12, 93.0]]
  data['results'][1]['trace'] = [[8, 13, 91.0], [16, 13, 92.0], [20, 14, 94.0]]
  (d / 'results.json').write_text(json.dumps(data))
  no_trace = _write(tmp_path, 'prune', None, [93.0], [1.0])
  table = summarize_search.anytime_table([d, no_trace]).splitlines()
  assert table[0] == ('| workdir | searcher | latency budget (ms) | n=8 | n=16 | '
                      'at the end (mean n) |')
  assert table[2] == '| rand | random | none | 90.50 (2) | 92.50 (2) | 93.50 (2, n=18) |'
  assert len(table) == 3
  assert summarize_search.anytime_table([no_trace]) == ''


def test_a_damaged_results_json_is_a_one_line_error_and_nan_is_counted(tmp_path, capsys):
  for name, content in [('list', '[]'), ('nometa', '{"results": []}'),
                        ('nokeys', '{"meta": {"searcher": "x", "limits": {}}, "results": [{}]}')]:
    (tmp_path / name).mkdir()
    (tmp_path / name / 'results.json').write_text(content)
    assert cli.call_main(summarize_search.main, f'--search_workdirs={tmp_path / name}') == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, (name, err)
  d = _write(tmp_path, 'nan', None, [90.0, float('nan')], [1.0, 2.0])
  assert '| 90.00 +- 0.00 (1 non-finite) |' in summarize_search.row(d)

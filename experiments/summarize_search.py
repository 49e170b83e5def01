"""Markdown table of finished searches: one row per `--experiment=search` workdir.

  python -m experiments.summarize_search --search_workdirs=DIR[,DIR...]

Reads each DIR/results.json and prints searcher, latency budget, seeds, mean +- std of the found
archs' true test accuracy and of the gap to the best feasible arch, how many found archs are
feasible, the search time per seed (run time, the one compile, wall time), and the baselines'
true accuracy under the same constraints (`experiments.search.baselines`: the feasible arch
with the most MACs, the most parameters, a random feasible arch on average, the best feasible
arch), so a searcher that loses to a size rule shows at a glance. docs/search.md's
tables are made with it, so the numbers there can be regenerated from the workdirs.

When the searches recorded an anytime curve (random, evolution, rerank), a second table gives
the mean true accuracy of the best arch (by the objective) after n archs scored.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import common

_WORKDIRS = flags.DEFINE_list('search_workdirs', None, 'Comma-separated workdirs of finished '
                              '--experiment=search runs, one table row each.')

HEADER = ('| workdir | searcher | latency budget (ms) | seeds | test acc (mean +- std) | '
          'gap (mean +- std) | feasible | run s/search | compile s (first seed) | '
          'wall s/search | max_macs | max_params | random | oracle |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
BASELINES = ('max_macs', 'max_params', 'random', 'oracle')


def _load(workdir: pathlib.Path) -> dict:
  path = workdir / 'results.json'
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise ValueError(f'cannot read {path} ({err}); pass folders written by '
                     f'--experiment=search') from None
  needed = {'results': list, 'meta': dict}
  wrong = [k for k, kind in needed.items()
           if not isinstance(data, dict) or not isinstance(data.get(k), kind)]
  if wrong:
    raise ValueError(f'{path} is not a search\'s results.json (no {" or ".join(wrong)}); pass '
                     f'folders written by --experiment=search')
  if not data['results']:
    raise ValueError(f'{path} has no results; the search did not finish a seed')
  keys = ('feasible', 'run_s', 'search_s', 'compile_s')
  lacking = sorted({k for r in data['results'] for k in keys
                    if not isinstance(r, dict) or k not in r})
  if lacking or 'limits' not in data['meta'] or 'searcher' not in data['meta']:
    raise ValueError(f'{path} is damaged or from another version (a result lacks '
                     f'{", ".join(lacking) or "meta limits/searcher"}); rerun that search')
  return data


def row(workdir: pathlib.Path) -> str:
  data = _load(workdir)
  results = data['results']

  def stat(key):  # nan (an accuracy the benchmark lacks) is counted, never averaged in
    v = np.array([r[key] for r in results if r.get(key) is not None], float)
    bad = int((~np.isfinite(v)).sum())
    v = v[np.isfinite(v)]
    note = f' ({bad} non-finite)' if bad else ''
    return (f'{v.mean():.2f} +- {v.std():.2f}' if len(v) else 'n/a') + note

  mean = lambda key: float(np.mean([r[key] for r in results]))
  budget = data['meta']['limits'].get('latency_ms')
  feasible = sum(bool(r['feasible']) for r in results)
  return (f'| {workdir.name} | {data["meta"]["searcher"]} | '
          f'{"none" if budget is None else f"{budget:.2f}"} | {len(results)} | '
          f'{stat("test_acc")} | {stat("gap")} | {feasible}/{len(results)} | '
          f'{mean("run_s"):.1f} | {results[0]["compile_s"]:.1f} | {mean("search_s"):.1f} | '
          + ' | '.join(_baseline(data['meta'], name) for name in BASELINES) + ' |')


def anytime_table(workdirs) -> str:
  """Mean true test acc of the best-so-far arch after n = 8, 16, 32, ... archs scored, and at
  the search's end (evolution stops at its budget rounded up to a whole generation, or earlier
  when it stalls, so its n varies by seed), one row per workdir that recorded traces with
  accuracies (empty string when none did)."""
  curves = {}
  for d in workdirs:
    data = _load(d)
    by_n, ends = {}, []
    for r in data['results']:
      trace = [(int(n), acc) for n, _, acc in r.get('trace') or [] if acc is not None]
      for n, acc in trace:
        if n & (n - 1) == 0:  # a power of two
          by_n.setdefault(n, []).append(acc)
      if trace:
        ends.append(trace[-1])
    if ends:
      curves[d] = (data, by_n, ends)
  if not curves:
    return ''
  steps = sorted({n for _, by_n, _ in curves.values() for n in by_n})
  lines = ['| workdir | searcher | latency budget (ms) | ' + ' | '.join(f'n={n}' for n in steps)
           + ' | at the end (mean n) |', '|---|---|---|' + '---|' * (len(steps) + 1)]
  for d, (data, by_n, ends) in curves.items():
    budget = data['meta']['limits'].get('latency_ms')
    cells = [f'{np.mean(by_n[n]):.2f} ({len(by_n[n])})' if n in by_n else '' for n in steps]
    end_n, end_acc = np.mean(ends, axis=0)
    end = f'{end_acc:.2f} ({len(ends)}, n={end_n:.0f})'
    lines.append(f'| {d.name} | {data["meta"]["searcher"]} | '
                 f'{"none" if budget is None else f"{budget:.2f}"} | ' + ' | '.join(cells)
                 + f' | {end} |')
  return '\n'.join(lines)


def _baseline(meta, name) -> str:
  base = (meta.get('baselines') or {}).get(name)
  return 'n/a' if base is None else f'{base["test_acc"]:.2f}'


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; pass the workdirs as '
                f'--search_workdirs=DIR,DIR,...')
  workdirs = common.workdirs_flag(_WORKDIRS.value, 'search_workdirs', 'search')
  try:
    rows = [row(d) for d in workdirs]
    anytime = anytime_table(workdirs)
  except (ValueError, KeyError) as err:
    common.fail(str(err))
  print(HEADER)
  print('\n'.join(rows))
  if anytime:
    print('\nMean true test acc of the best arch by the objective after n archs scored '
          '(seeds averaged in parentheses):\n')
    print(anytime)
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

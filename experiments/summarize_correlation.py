"""Markdown tables from finished `--experiment=correlate` workdirs, one column per workdir.

  python -m experiments.summarize_correlation --correlate_workdirs=DIR[,DIR...]

Prints (1) Spearman rho with test accuracy per proxy and aggregate, with the archs used, next to
the published CIFAR-10 figures for the proxies that have one (labelled as published, from the
papers via the issue), and (2) Spearman rho against the NASLib reference values per proxy, for
the workdirs that wrote agreement.json. docs/correlation.md's tables are made with it, so they
can be regenerated from the workdirs.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags

from experiments import common

_WORKDIRS = flags.DEFINE_list('correlate_workdirs', None, 'Comma-separated workdirs of finished '
                              '--experiment=correlate runs, one table column each.')

# Published Spearman rho on NB201 CIFAR-10 over all archs (as cited in the issue).
PUBLISHED_CIFAR10 = {'flops': 0.80, 'synflow': 0.76, 'jacob_cov': 0.80, 'nwot': 0.76,
                     'zico': 0.80, 'tenas': 0.72, 'agg:ntk_cond+linear_regions': 0.72}


def _load(workdir: pathlib.Path, name: str):
  path = workdir / name
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except ValueError as err:
    raise ValueError(f'cannot parse {path} ({err}); rerun the correlate command') from None


def _num(v, digits=3) -> str:
  return 'n/a' if v is None or v != v else f'{v:.{digits}f}'


def correlation_table(workdirs) -> str:
  runs = []
  for d in workdirs:
    data = _load(d, 'correlation.json')
    if data is None:
      raise ValueError(f'{d}/correlation.json not found; pass folders of finished '
                       f'--experiment=correlate runs')
    runs.append((d, data))
  names = list(dict.fromkeys(r['name'] for _, data in runs for r in data['rows']))
  head = ['proxy'] + [f'{data["dataset"]} ({data["archs"]} archs, `{d}`)' for d, data in runs]
  lines = ['| ' + ' | '.join(head + ['published, CIFAR-10']) + ' |',
           '|' + '---|' * (len(head) + 1)]
  for n in names:
    cells = [f'`{n}`']
    for _, data in runs:
      row = next((r for r in data['rows'] if r['name'] == n), None)
      cells.append('' if row is None else
                   f'{_num(row["spearman"])} (tau {_num(row["kendall"])}; {row["used"]} used'
                   + (f', {row["flagged"]} flagged)' if row['flagged'] else ')'))
    pub = PUBLISHED_CIFAR10.get(n)
    cells.append('' if pub is None else f'{pub:.2f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def agreement_table(workdirs) -> str:
  runs = [(d, a) for d in workdirs if (a := _load(d, 'agreement.json')) is not None]
  if not runs:
    return ''
  names = list(dict.fromkeys(r['name'] for _, a in runs for r in a['rows']))
  head = ['proxy (NASLib column)'] + [f'{a["dataset"]} (`{d}`)' for d, a in runs]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for n in names:
    ref = next(r['reference_column'] for _, a in runs for r in a['rows'] if r['name'] == n)
    cells = [f'`{n}` ({ref})']
    for _, a in runs:
      row = next((r for r in a['rows'] if r['name'] == n), None)
      cells.append('' if row is None else f'{_num(row["spearman"])} ({row["used"]} archs)')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; pass the workdirs as '
                f'--correlate_workdirs=DIR,DIR,...')
  workdirs = common.workdirs_flag(_WORKDIRS.value, 'correlate_workdirs', 'correlate')
  try:
    corr = correlation_table(workdirs)
    agree = agreement_table(workdirs)
  except ValueError as err:
    common.fail(str(err))
  except KeyError as err:
    common.fail(f'a correlation.json lacks {err}: pass workdirs of finished --experiment='
                f'correlate runs (--correlate_workdirs)')
  print('Spearman rho with test accuracy\n')
  print(corr)
  if agree:
    print('\nSpearman rho with the NASLib reference values\n')
    print(agree)
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

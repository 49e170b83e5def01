"""How much a proxy's ranking depends on the run: Spearman rho between two runs' values.

  python -m experiments.compare_scores RUN_A/scores.csv RUN_B/scores.csv

For each proxy column in both files (scores.csv of `--experiment=correlate` or `score`), Spearman
rho (scipy.stats) between the two runs' values on the archs both scored, leaving out archs either
run flagged or found non-finite. Two seeds of the same command measure a proxy's seed-to-seed
repeatability, which bounds how well it can agree with any other single run of it (such as the
NASLib reference values).
"""
from __future__ import annotations

import csv
import pathlib
import sys

import numpy as np
from scipy import stats

from engine import proxies as proxies_lib


def _read(path: pathlib.Path) -> tuple[dict, list[str]]:
  """({arch_index: row}, proxy columns) of one scores CSV."""
  if path.is_dir():
    path = path / 'scores.csv'
  try:
    with path.open(newline='') as fh:
      rows = list(csv.DictReader(fh))
  except OSError as err:
    raise ValueError(f'cannot read {path} ({err.strerror}); pass scores.csv files') from None
  if not rows or 'arch_index' not in rows[0]:
    raise ValueError(f'{path} has no arch_index rows; pass a scores.csv of correlate or score')
  names = [n for n in rows[0] if n in proxies_lib.REGISTRY]
  return {int(r['arch_index']): r for r in rows if r['arch_index'] != ''}, names


def _value(row, name) -> float:
  if row.get(name + '_flag'):
    return float('nan')
  return float(row[name])


def compare(path_a, path_b) -> list[dict]:
  a, names_a = _read(pathlib.Path(path_a))
  b, names_b = _read(pathlib.Path(path_b))
  shared = sorted(set(a) & set(b))
  out = []
  for name in [n for n in names_a if n in names_b]:
    va = np.array([_value(a[i], name) for i in shared])
    vb = np.array([_value(b[i], name) for i in shared])
    ok = np.isfinite(va) & np.isfinite(vb)
    rho = float(stats.spearmanr(va[ok], vb[ok]).statistic) if ok.sum() >= 3 else float('nan')
    out.append({'name': name, 'archs': len(shared), 'used': int(ok.sum()), 'spearman': rho})
  return out


def main(argv):
  if len(argv) != 3:
    print('error: give two scores.csv files (or correlate workdirs) to compare', file=sys.stderr)
    return 2
  try:
    rows = compare(argv[1], argv[2])
  except ValueError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  if not rows:
    print('error: the two files share no proxy column', file=sys.stderr)
    return 2
  print(f'| proxy | archs in both | used | Spearman rho, {argv[1]} vs {argv[2]} |')
  print('|---|---|---|---|')
  for r in rows:
    print(f'| {r["name"]} | {r["archs"]} | {r["used"]} | {r["spearman"]:.3f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))

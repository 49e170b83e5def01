"""How much a proxy's ranking depends on the run: Spearman rho between two runs' values.

  python -m experiments.compare_scores RUN_A/scores.csv RUN_B/scores.csv

For each proxy column in both files (scores.csv of `--experiment=correlate` or `score`), Spearman
rho (scipy.stats) between the two runs' values on the archs both scored, leaving out archs either
run flagged or found non-finite. Two seeds of the same command measure a proxy's seed-to-seed
repeatability, which bounds how well it can agree with any other single run of it (such as the
NASLib reference values).
"""
from __future__ import annotations

import sys

import numpy as np
from scipy import stats

from experiments import common


def _values(scores: common.ScoresCsv, name: str, rows) -> np.ndarray:
  """The proxy's values on `rows`, flagged ones as nan."""
  return np.where(scores.flagged[name][rows], np.nan, scores.columns[name][rows])


def compare(path_a, path_b) -> list[dict]:
  a, b = common.read_scores_csv(path_a), common.read_scores_csv(path_b)
  _, rows_a, rows_b = np.intersect1d(a.indices, b.indices, return_indices=True)
  out = []
  for name in [n for n in a.columns if n in b.columns]:
    va, vb = _values(a, name, rows_a), _values(b, name, rows_b)
    ok = np.isfinite(va) & np.isfinite(vb)
    rho = float(stats.spearmanr(va[ok], vb[ok]).statistic) if ok.sum() >= 3 else float('nan')
    out.append({'name': name, 'archs': len(rows_a), 'used': int(ok.sum()), 'spearman': rho})
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

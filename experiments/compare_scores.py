"""How much a proxy's ranking depends on the run: Spearman rho between two runs' values.

  python -m experiments.compare_scores --scores_a=RUN_A/scores.csv --scores_b=RUN_B/scores.csv

For each proxy column in both files (scores.csv of `--experiment=correlate` or `score`), Spearman
rho (scipy.stats) between the two runs' values on the archs both scored, leaving out archs either
run flagged or found non-finite. Two seeds of the same command measure a proxy's seed-to-seed
repeatability, which bounds how well it can agree with any other single run of it (such as the
NASLib reference values).
"""
from __future__ import annotations

import numpy as np
from absl import app, flags
from scipy import stats

from experiments import common

_SCORES_A = flags.DEFINE_string('scores_a', None, 'First scores.csv of --experiment=correlate or '
                                'score, or its workdir.')
_SCORES_B = flags.DEFINE_string('scores_b', None, 'Second scores.csv (or workdir) to compare '
                                'with --scores_a.')


def _values(scores: common.ScoresCsv, name: str, rows) -> np.ndarray:
  """The proxy's values on `rows`, flagged ones as nan."""
  return np.where(scores.flagged[name][rows], np.nan, scores.columns[name][rows])


def compare(path_a, path_b) -> list[dict]:
  a, b = common.read_scores_csv(path_a), common.read_scores_csv(path_b)
  # NB201 runs join on arch_index, the plug-in spaces' (no index) on arch_str
  indexed = (a.indices >= 0).all() and (b.indices >= 0).all()
  key_a, key_b = (a.indices, b.indices) if indexed else (a.archs.astype(str), b.archs.astype(str))
  _, rows_a, rows_b = np.intersect1d(key_a, key_b, return_indices=True)
  out = []
  for name in [n for n in a.columns if n in b.columns]:
    va, vb = _values(a, name, rows_a), _values(b, name, rows_b)
    ok = np.isfinite(va) & np.isfinite(vb)
    rho = float(stats.spearmanr(va[ok], vb[ok]).statistic) if ok.sum() >= 3 else float('nan')
    out.append({'name': name, 'archs': len(rows_a), 'used': int(ok.sum()), 'spearman': rho})
  return out


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; pass the two files as --scores_a=A.csv '
                f'--scores_b=B.csv')
  for holder in (_SCORES_A, _SCORES_B):
    if not holder.value:
      common.fail(f'--{holder.name} is required: a scores.csv of --experiment=correlate or '
                  f'score, or its workdir')
  path_a, path_b = _SCORES_A.value, _SCORES_B.value
  try:
    rows = compare(path_a, path_b)
  except ValueError as err:
    common.fail(str(err))
  if not rows:
    common.fail('the two files share no proxy column')
  print(f'| proxy | archs in both | used | Spearman rho, {path_a} vs {path_b} |')
  print('|---|---|---|---|')
  for r in rows:
    print(f'| {r["name"]} | {r["archs"]} | {r["used"]} | {r["spearman"]:.3f} |')
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

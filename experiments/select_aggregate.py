"""Pick the best proxy aggregate on one part of a correlate run, report it on the other part.

  python -m experiments.select_aggregate --scores_file=corr_cifar10/scores.csv \
      --combine=params,flops,nwot,synflow,jacob_cov,linear_regions --max_components=4

Every rank-sum and log-rank aggregate (engine/proxies/aggregate.py) of 2..max_components of the given
proxies (and, with --fit_weights, weighted variants of the best few) is scored on a seeded
random `--select_fraction` of the archs (the selection split, ranks over that pool) and the best
by Spearman rho is then measured on the remaining archs (held out, ranks over that pool). Only the held-out figures say how good the choice is: the best of many
candidates on the data that chose it is biased upward. Writes aggregate_selection.md and .json
next to the scores (or into --report_dir).
"""
from __future__ import annotations

import itertools
import json
import pathlib
import sys
import warnings

import numpy as np
from absl import app, flags
from scipy import stats

from engine.proxies import aggregate
from engine import proxies as proxies_lib
from experiments import common

_SCORES = flags.DEFINE_string('scores_file', None,
                              'scores.csv of --experiment=correlate, or its workdir.')
_PROXIES = flags.DEFINE_string('combine', '', 'Proxies to combine (default: every plain proxy '
                               'column in the file).')
_MAX = flags.DEFINE_integer('max_components', 4, 'Most proxies in one aggregate.')
_FRACTION = flags.DEFINE_float('select_fraction', 0.5, 'Share of archs the choice is made on.')
_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the split.')
_TOP = flags.DEFINE_integer('top_listed', 10, 'Candidates listed in the report.')
_FIT = flags.DEFINE_bool('fit_weights', False, 'Also fit per-component weights (each from '
                         'WEIGHT_GRID) for the best --refine aggregates, on the selection split.')
_REFINE = flags.DEFINE_integer('refine', 5, 'With --fit_weights: aggregates whose weights are fit.')
_OUTPUT = flags.DEFINE_string('report_dir', None,
                              'Folder for the report (default: the scores folder).')


def read_scores(path: pathlib.Path):
  """(columns {name: float [n]}, flags {name: int [n]}, acc [n], acc column name)."""
  scores = common.read_scores_csv(path)
  if not scores.accuracy:
    raise ValueError(f'{scores.path} has no accuracy column '
                     f'({", ".join(common.ACC_COLUMN.values())}); pass a scores.csv from '
                     f'--experiment=correlate')
  acc_name, acc = next(iter(scores.accuracy.items()))
  flag_cols = {n: f.astype(int) for n, f in scores.flagged.items()}
  return scores.columns, flag_cols, acc, acc_name


WEIGHT_GRID = (0.5, 1.0, 2.0)


def weighted_variants(agg: aggregate.Aggregate) -> list[aggregate.Aggregate]:
  """`agg` under every assignment of WEIGHT_GRID weights to its components (scale-free
  duplicates, e.g. all 2, are kept: they tie with their all-1 twin and cost little)."""
  out = []
  for weights in itertools.product(WEIGHT_GRID, repeat=len(agg.components)):
    terms = '+'.join(f'{w:g}*{c}' for w, c in zip(weights, agg.components))
    out.append(aggregate.parse(f'{aggregate.PREFIX}{terms}:{agg.method}'))
  return out


def select(columns, flag_cols, acc, names, max_components, fraction, seed, top, fit_weights=False,
           refine=5):
  """The report as a dict: candidates ranked on the selection split, each with held-out rho."""
  sel, held = aggregate.split_archs(len(acc), fraction, seed)
  candidates = aggregate.candidate_aggregates(names, max_components)
  with warnings.catch_warnings():  # a constant column's nan is handled below, not warned of
    warnings.simplefilter('ignore', stats.ConstantInputWarning)
    on_sel = [(aggregate.spearman_on(a, columns, flag_cols, acc, sel), a) for a in candidates]
  # a nan Spearman (constant or non-finite scores, or a constant accuracy) ranks nothing: such
  # an aggregate is never chosen, and with no other there is no result
  on_sel = [(rho, a) for rho, a in on_sel if np.isfinite(rho)]
  if not on_sel:
    raise ValueError('no aggregate has a finite Spearman on the selection archs: the proxies '
                     'or the accuracies are constant or non-finite there; nothing to choose')
  on_sel.sort(key=lambda t: -t[0])
  if fit_weights:
    seen = {a.name for _, a in on_sel}
    for _, base in on_sel[:refine]:
      for variant in weighted_variants(base):
        if variant.name not in seen:
          seen.add(variant.name)
          candidates.append(variant)
          rho = aggregate.spearman_on(variant, columns, flag_cols, acc, sel)
          if np.isfinite(rho):
            on_sel.append((rho, variant))
    on_sel.sort(key=lambda t: -t[0])

  def held_out(agg):
    score, truth = aggregate.score_on(agg, columns, flag_cols, held), acc[held]
    return {'spearman': float(stats.spearmanr(score, truth).statistic),
            'kendall': float(stats.kendalltau(score, truth).statistic)}

  singles = []
  for n in names:
    valid = aggregate.valid_mask(columns[n][held], flag_cols[n][held])
    sign = 1.0 if proxies_lib.REGISTRY[n].higher_is_better else -1.0
    rho = stats.spearmanr(sign * columns[n][held][valid], acc[held][valid]).statistic
    singles.append({'name': n, 'held_out_spearman': float(rho), 'used': int(valid.sum())})
  listed = [{'name': a.name, 'selection_spearman': rho, **{f'held_out_{k}': v for k, v in
                                                         held_out(a).items()}}
            for rho, a in on_sel[:top]]
  return {'archs': len(acc), 'selection_archs': len(sel), 'held_out_archs': len(held),
          'seed': seed, 'select_fraction': fraction, 'max_components': max_components,
          'proxies': list(names), 'candidates': len(candidates), 'fit_weights': fit_weights,
          'weight_grid': list(WEIGHT_GRID) if fit_weights else None, 'chosen': listed[0],
          'top': listed, 'single_proxies_held_out': singles}


def markdown(report, source, acc_name) -> str:
  c = report['chosen']
  lines = [
      '# Aggregate selection', '',
      f'- Scores: `{source}` ({report["archs"]} archs, ground truth `{acc_name}`).',
      f'- Split (seed {report["seed"]}): {report["selection_archs"]} archs choose, '
      f'{report["held_out_archs"]} are held out; ranks are taken within each part.',
      f'- Candidates: {report["candidates"]} rank and log-rank aggregates of 2-'
      f'{report["max_components"]} of {", ".join(report["proxies"])}'
      + (f', plus per-component weights from {report["weight_grid"]} for the best '
         f'unweighted ones (fit on the selection split only).' if report['fit_weights'] else '.'),
      f'- **Chosen: `{c["name"]}`, held-out Spearman {c["held_out_spearman"]:.3f}, Kendall '
      f'{c["held_out_kendall"]:.3f}** (selection-split Spearman {c["selection_spearman"]:.3f}, '
      f'biased upward by the choice).', '',
      '| aggregate (best on selection split first) | selection rho | held-out rho | '
      'held-out tau |', '|---|---|---|---|']
  lines += [f'| `{r["name"]}` | {r["selection_spearman"]:.3f} | {r["held_out_spearman"]:.3f} | '
            f'{r["held_out_kendall"]:.3f} |' for r in report['top']]
  lines += ['', '| single proxy | held-out rho | archs used |', '|---|---|---|']
  lines += [f'| {s["name"]} | {s["held_out_spearman"]:.3f} | {s["used"]} |'
            for s in report['single_proxies_held_out']]
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if not _SCORES.value:
    print('error: --scores_file is required: a scores.csv or workdir of --experiment=correlate',
          file=sys.stderr)
    return 2
  try:
    path = pathlib.Path(_SCORES.value)
    columns, flag_cols, acc, acc_name = read_scores(path)
    names = [n.strip() for n in _PROXIES.value.split(',') if n.strip()] or list(columns)
    missing = [n for n in names if n not in columns]
    if missing:
      raise ValueError(f'{", ".join(missing)} not in the scores (have {", ".join(columns)}); '
                       f'fix --combine')
    if len(set(names)) < len(names):
      raise ValueError(f'--combine names a proxy twice ({_PROXIES.value}); list each once')
    if len(names) < 2:
      raise ValueError('--combine needs at least two proxies to combine')
    if _MAX.value < 2:
      raise ValueError(f'--max_components={_MAX.value}: an aggregate combines at least 2 '
                       f'proxies; pass 2 or more')
    if _TOP.value < 1:
      raise ValueError(f'--top_listed={_TOP.value}: list at least the chosen one (1 or more)')
    if _OUTPUT.value:
      common.check_workdir(_OUTPUT.value, 'report_dir')
    report = select(columns, flag_cols, acc, names, _MAX.value, _FRACTION.value, _SEED.value,
                    _TOP.value, _FIT.value, _REFINE.value)
  except (ValueError, proxies_lib.ProxyError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  out = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else (path if path.is_dir() else path.parent)
  out.mkdir(parents=True, exist_ok=True)
  text = markdown(report, path, acc_name)
  common.write_text_atomic(out / 'aggregate_selection.md', text)
  common.write_text_atomic(out / 'aggregate_selection.json', json.dumps(report, indent=1) + '\n')
  print(text)
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

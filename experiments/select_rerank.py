"""Choose rerank's proxies (its tie-breaker inside the largest feasible archs) on NB201's
selection half, from score files: every combination of up to --max_terms proxies is tried as
the objective of the search's own rerank pool in every selection cell, and the combinations are
ranked by how many cells they are at or above the size baselines in, then by the mean margin.

  # 1. the archs rerank scores in the selection cells (its pool in each), one per line:
  python -m experiments.select_rerank --write_pool_archs=pools.txt --budgets=none,25,50,75
  # 2. score them once with every candidate proxy (resumable with --workdir; --seed=1, 2, ...
  #    in other workdirs for more seeds):
  python -m experiments.run --experiment=score --archs=pools.txt --stand_in_inputs=photos \
      --proxies=synflow,snip,az_trainability,params,flops --workdir=pool_scores
  # 3. every combination in every cell (several files: one per seed):
  python -m experiments.select_rerank --pool_scores=pool_scores/scores.csv \
      --budgets=none,25,50,75

Only the selection half is read (`--half=evaluation` is refused); what is chosen here must then
be measured on the evaluation half with `experiments.search_eval`. The pool, objective and
weights are the search's own (its flags, resolved through its defaults); the score files stand
in for the scorer. What that approximates: the seeds the files hold (several files: the mean of
each one's pick, as search_eval's mean over --seeds, or with --seed_ensemble one pick from
their summed objective), and one network's scores for every dataset (the score experiment's
network, CIFAR-10's head, unless it was run with --dataset). The best of many combinations on
the cells that chose it is biased upward. Writes rerank_selection.md and rerank_selection.json
next to the first score file.
"""
from __future__ import annotations

import itertools
import json
import pathlib
import types

import numpy as np
from absl import app, flags
from tqdm import tqdm

from experiments import common
from experiments import run as run_lib  # the search's own flags
from experiments import search_eval

_SCORES = flags.DEFINE_list('pool_scores', None, 'select_rerank: score CSVs (--experiment=score) '
                            'of the archs --write_pool_archs listed, one per seed (--seed).')
_ENSEMBLE = flags.DEFINE_bool('seed_ensemble', False, 'select_rerank, several --pool_scores: '
                              'one pick from the objective summed over the seeds (a search that '
                              'scores every arch at each seed) instead of the mean of the '
                              'seeds\' own picks (what search_eval reports over --seeds).')
_WRITE = flags.DEFINE_string('write_pool_archs', None, 'select_rerank: write the archs rerank '
                             'scores in the selection cells to this file, one per line, and stop.')
_TERMS = flags.DEFINE_string('terms', '', 'select_rerank: proxies to combine (default: every '
                             'proxy column of --pool_scores).')
_MAX_TERMS = flags.DEFINE_integer('max_terms', 3, 'select_rerank: most proxies in one '
                                  'combination.', lower_bound=1)
_LISTED = flags.DEFINE_integer('listed', 10, 'select_rerank: combinations listed in the report.',
                               lower_bound=1)
# the flags of the search and of search_eval this tool reads (the pool, the objective, the
# accuracies, the cells); the score files stand in for the scorer, so its flags are refused
READ = ('searcher', 'rerank_pool', 'rerank_band', 'objective', 'proxy_weights', 'w_flops',
        'w_latency', 'benchmark_file', 'datasets', 'budgets', 'half', 'progress')
STEP3 = (_SCORES, _ENSEMBLE, _TERMS, _MAX_TERMS, _LISTED)  # read with --pool_scores only


def pool_cells(datasets, budgets, given: dict) -> list[tuple]:
  """[(cell name, table, pool indices, accuracies, size baseline, search config)] of the
  selection half: the archs the search's rerank scores in each cell, and the better of max_macs
  and max_params."""
  from engine import search as search_lib
  from experiments import search as search_exp
  from search_spaces import registry
  space = registry.get('nb201')
  out = []
  for dataset in datasets:
    f = run_lib.make_config('search', dataset=dataset, **given)
    options = search_exp.options_from_flags(f)
    for c in search_eval.half_cells(space, f, budgets, 'selection'):
      size = max(c.baselines['max_macs']['test_acc'], c.baselines['max_params']['test_acc'])
      out.append((search_eval.cell_name(dataset, c.pct), c.table,
                  search_lib.rerank_pool(c.table, options), c.acc, size, f))
  return out


def read_scores(path: pathlib.Path) -> tuple[dict, list[str]]:
  """({arch string: {proxy: value}}, proxy columns) of a score CSV (`common.read_scores_csv`);
  a value the file flags is nan."""
  scores = common.read_scores_csv(path)
  values = {n: np.where(scores.flagged[n], np.nan, v) for n, v in scores.columns.items()}
  return ({a: {n: float(v[i]) for n, v in values.items()} for i, a in enumerate(scores.archs)},
          list(values))


def uninformative(scores: list[dict], term: str) -> str | None:
  """Why `term` cannot choose between archs (every value flagged or non-finite, or one value
  everywhere), else None."""
  v = np.array([s[term] for seed_scores in scores for s in seed_scores.values()], float)
  if not np.isfinite(v).any():
    return 'every value is flagged or non-finite'
  if np.unique(v[np.isfinite(v)]).size == 1:
    return 'it takes one value on every arch'
  return None


def picks(cells, scores: list[dict], terms, ensemble: bool = False) -> list[tuple]:
  """[(cell name, pick accuracy, size baseline)]: what rerank with objective `terms` picks in
  each cell (the search's Problem.objective over a file's values; ties go to the larger arch,
  as in the search), as the mean over the files (seeds) of each one's pick, or with `ensemble`
  the one pick of the objective summed over the files."""
  from engine import proxies as proxies_lib
  from engine import search as search_lib
  from experiments import search as search_exp
  direction = {p.name: p.higher_is_better for p in proxies_lib.get(list(terms))}
  stand_in = types.SimpleNamespace(higher_is_better=direction)  # the file is the scorer
  out = []
  for name, table, pool, acc, size, f in cells:
    problem = search_lib.Problem(table, stand_in, ','.join(terms),
                                 search_exp.weights_from_flags(f), f.objective)
    codes = [table.space.encode(table.archs[i]) for i in pool]
    fits = []
    for seed_scores in scores:
      values = {t: np.array([seed_scores[c][t] for c in codes]) for t in terms}
      values.update({c: table.costs[c][pool] for c in search_lib.COST_NAMES})
      fits.append(problem.objective(values, table.feasible[pool]))
    chosen = [np.sum(fits, 0)] if ensemble else fits
    out.append((name, float(np.mean([acc[pool[int(np.argmax(fit))]] for fit in chosen])), size))
  return out


def summary(terms, cell_picks) -> dict:
  margins = np.array([p - s for _, p, s in cell_picks])
  return dict(terms=','.join(terms), at_or_above=int((margins >= -1e-9).sum()),
              cells=len(margins), mean_margin=float(margins.mean()),
              worst_margin=float(margins.min()),
              per_cell={n: round(p - s, 2) for n, p, s in cell_picks})


def report(entries, reference, n_tried: int, listed: int, seeds: str) -> str:
  head = ('| proxies | cells at or above the size baselines | mean margin | worst margin |\n'
          '|---|---|---|---|')
  line = lambda e: (f'| {e["terms"]} | {e["at_or_above"]}/{e["cells"]} | '
                    f'{e["mean_margin"]:+.2f} | {e["worst_margin"]:+.2f} |')
  text = [f'Rerank proxies on the selection half: {n_tried} combinations, best {listed} '
          f'({seeds}; margin: the pick minus the better of max_macs and max_params, accuracy '
          'points).',
          '', head] + [line(e) for e in entries[:listed]]
  if reference is not None:
    text += ['', 'The search\'s default proxies, same cells:', '', head, line(reference)]
  cells = list(entries[0]['per_cell'])
  shown = entries[:3] + ([reference] if reference is not None else [])
  text += ['', '| cell | ' + ' | '.join(e['terms'] for e in shown) + ' |',
           '|---' * (len(shown) + 1) + '|']
  text += [f'| {c} | ' + ' | '.join(f'{e["per_cell"][c]:+.2f}' for e in shown) + ' |'
           for c in cells]
  return '\n'.join(text) + '\n'


def main(argv):
  del argv
  common.quiet_logs()
  f = flags.FLAGS
  if f['half'].present and f.half != 'selection':
    common.fail('select_rerank chooses on the selection half only; measure the choice with '
                'python -m experiments.search_eval (its evaluation half)')
  if f['pools'].present or f['proxies'].present:
    common.fail('select_rerank tries the combinations of --terms as rerank\'s proxies; drop '
                f'--{"pools" if f["pools"].present else "proxies"}')
  if bool(_SCORES.value) == bool(_WRITE.value):
    common.fail('select_rerank needs one of --write_pool_archs=FILE (step 1) or '
                '--pool_scores=CSV (step 3)')
  unread = search_eval.unread_flag(READ)
  if unread:
    common.fail(f'select_rerank does not read --{unread} (only the flags that set rerank\'s '
                'pool, its objective and the cells; the score files stand in for the scorer); '
                'drop it')
  late = [fl.name for fl in STEP3 if fl.present] if _WRITE.value else []
  if late:
    common.fail(f'--{late[0]} is read with --pool_scores (step 3), not with --write_pool_archs; '
                'drop it')
  try:
    datasets, budgets = search_eval.cells_from_flags()
    if _WRITE.value:  # before the pools are built
      common.check_output_file(_WRITE.value, 'write_pool_archs', 'pool_archs.txt')
  except ValueError as err:
    common.fail(str(err))
  given = {name: f[name].value for name in search_eval.PASSED_ON if f[name].present}
  given.setdefault('searcher', 'rerank')
  if given['searcher'] != 'rerank':
    common.fail(f'select_rerank chooses rerank\'s proxies; drop --searcher={given["searcher"]}')
  scores, columns = [], []
  if _SCORES.value:
    paths = [pathlib.Path(p) for p in _SCORES.value]
    path = paths[0]
    for p in paths:
      if not p.is_file():
        common.fail(f'--pool_scores={p}: no such file; score the archs of --write_pool_archs '
                    'with --experiment=score first')
    try:
      for p in paths:
        seed_scores, seed_columns = read_scores(p)
        scores.append(seed_scores)
        columns = [c for c in columns if c in seed_columns] if columns else seed_columns
      terms = [t.strip() for t in _TERMS.value.split(',') if t.strip()] or columns
      missing = [t for t in terms if t not in columns]
      if missing:
        raise ValueError(f'--terms: {missing[0]!r} is not a column of {path}; it has '
                         f'{", ".join(columns)}')
      for t in list(terms):
        why = uninformative(scores, t)
        if why and _TERMS.value:
          raise ValueError(f'--terms: {t} cannot rank the archs of {path} ({why}); leave it out')
        if why:
          print(f'note: {t} left out ({why})')
          terms.remove(t)
      if not terms:
        raise ValueError(f'no column of {path} ranks the archs; score them with other proxies')
    except ValueError as err:
      common.fail(str(err))
  try:
    cells = pool_cells(datasets, budgets, given)
  except ValueError as err:
    common.fail(str(err))
  pooled = sorted({c[1].space.encode(c[1].archs[i]) for c in cells for i in c[2]})
  if _WRITE.value:
    common.write_text_atomic(pathlib.Path(_WRITE.value), '\n'.join(pooled) + '\n')
    print(f'wrote {len(pooled)} archs ({len(cells)} selection cells) to {_WRITE.value}')
    return
  for p, seed_scores in zip(paths, scores):
    absent = [a for a in pooled if a not in seed_scores]
    if absent:
      common.fail(f'{len(absent)} of the {len(pooled)} pool archs are not in {p} (e.g. '
                  f'{absent[0]}); score the list --write_pool_archs writes for the same flags')
  combos = [c for k in range(1, _MAX_TERMS.value + 1) for c in itertools.combinations(terms, k)]
  ensemble = _ENSEMBLE.value
  entries = sorted((summary(c, picks(cells, scores, c, ensemble))
                    for c in tqdm(combos, unit='combination', disable=not f.progress)),
                   key=lambda e: (-e['at_or_above'], -e['mean_margin']))
  default = cells[0][5].proxies.split(',')
  reference = (summary(default, picks(cells, scores, default, ensemble))
               if all(t in columns for t in default) else None)
  text = report(entries, reference, len(combos), _LISTED.value,
                f'{len(paths)} score file(s), ' + ('one pick from the objective summed over them'
                                                   if ensemble else 'the mean of their picks'))
  out = path.parent
  common.write_text_atomic(out / 'rerank_selection.md', text)
  common.write_text_atomic(out / 'rerank_selection.json', json.dumps(
      dict(entries=entries, default=reference), indent=1))
  print(text + f'wrote {out}/rerank_selection.md and .json')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

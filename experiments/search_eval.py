"""The search measured held out: NB201's archs split by a fixed hash into a selection half and an
evaluation half; the default search (`--experiment=search`'s config) runs on one half only and is
scored against that half's own oracle and the simple baselines.

  python -m experiments.search_eval --seeds=0-9 --workdir=search_eval_out

It takes the search's flags (`--searcher`, `--proxies`, `--benchmark_file`, `--data_dir`, ...;
`python -m experiments.run --helpfull`) with the search's defaults, plus `--datasets`,
`--budgets` and `--half`.

Cells: each dataset (CIFAR-10, CIFAR-100, ImageNet16-120) x no latency budget and budgets at the
25th, 50th and 75th percentile of the predicted latency of the half's feasible archs, on
STM32F746 with CMSIS-NN (the search's defaults), `--seeds` each. Baselines in every cell:
`max_macs`, `max_params` (the feasible arch with the most MACs / parameters), `random` (the mean
accuracy of a feasible arch: one random sample, in expectation) and `oracle` (the half's best
feasible arch). Choices (objective, weights, pool size) may only be made with `--half=selection`;
`--half=evaluation` (the default) is what the docs report.

A search that stops without a pick (`UninformativeScores`: no proxy tells its final candidates
apart) is counted in its cell ("N (k stopped)"; the cell is then not a win), never scored.

Writes WORKDIR/results.json (every search, rewritten atomically after each, so a killed run
resumes where it stopped), WORKDIR/table.md and WORKDIR/gaps.png (mean gap to the half's oracle
per cell, the search beside the baselines).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time

import numpy as np
from absl import app, flags

from experiments import common
from experiments import run as run_lib  # the search's own flags (--seeds, --searcher, ...)

_DATASETS = flags.DEFINE_string('datasets', 'cifar10,cifar100,ImageNet16-120',
                                'search_eval: NB201 datasets, comma-separated.')
_BUDGETS = flags.DEFINE_string('budgets', 'none,25,50,75',
                               'search_eval: latency budgets, "none" or a percentile of the '
                               'half\'s feasible archs\' predicted latency, comma-separated.')
_HALF = flags.DEFINE_enum('half', 'evaluation', ['evaluation', 'selection'],
                          'search_eval: the half the searches run on (choices are made on '
                          '"selection").')
_POOLS = flags.DEFINE_string('pools', '', 'search_eval, rerank only: pool sizes to compare, '
                             'e.g. 1,4,16,64,256: the largest pool is scored once per seed and '
                             'cell and every smaller pool (its largest archs) picks from it.')
# this job's own defaults for the search's flags (applied in `main`: importing the module must
# not change the search's defaults)
DEFAULTS = {'seeds': '0-9', 'workdir': 'search_eval_out'}

METHODS = ('search', 'max_macs', 'max_params', 'random', 'oracle')


def in_evaluation_half(arch_strs) -> np.ndarray:
  """bool [N]: an arch's half from the first byte of the sha256 of its arch string (fixed, and
  independent of accuracy, cost and order)."""
  return np.array([hashlib.sha256(s.encode()).digest()[0] % 2 == 1 for s in arch_strs])


def _budgets(spec: str) -> list:
  out = []
  for part in spec.split(','):
    part = part.strip()
    if part == 'none':
      out.append(None)
      continue
    try:
      pct = float(part)
    except ValueError:
      pct = -1.0
    if not 0 < pct < 100:
      raise ValueError(f'bad --budgets entry {part!r}; use none or a percentile in (0, 100)')
    out.append(pct)
  return out


def cells_from_flags() -> tuple[list, list]:
  """(datasets, budgets) of --datasets and --budgets; a bad entry is a one-line ValueError."""
  from search_spaces import nb201
  budgets = _budgets(_BUDGETS.value)
  datasets = [d.strip() for d in _DATASETS.value.split(',') if d.strip()]
  unknown = [d for d in datasets if d not in nb201.DATASETS]
  if unknown or not datasets:
    raise ValueError(f'bad --datasets entry {(unknown or [""])[0]!r}; choose from '
                     f'{", ".join(nb201.DATASETS)}')
  return datasets, budgets


def cell_name(dataset: str, pct) -> str:
  return f'{dataset}/' + ('no budget' if pct is None else f'p{pct:g} latency')


# the search's own flags this job passes on when given (the choices a selection run tunes)
PASSED_ON = ('searcher', 'proxies', 'objective', 'proxy_weights', 'rerank_pool', 'rerank_band',
             'w_flops', 'w_latency', 'zc_width', 'zc_cells', 'zc_batch', 'stand_in_inputs',
             'benchmark_file', 'data_dir', 'finalists', 'finalist_epochs',
             'finalist_lr', 'recheck', 'prune_none')


# every flag this job reads: the search's it passes on, and its own
READ = PASSED_ON + ('seeds', 'workdir', 'datasets', 'budgets', 'half', 'pools', 'progress')


def unread_flag(read) -> str | None:
  """The first flag of the search's or of this job's set on the command line that is not in
  `read` (a tool on these cells refuses it in one line rather than ignore it)."""
  f = flags.FLAGS
  return next((fl.name for module in ('experiments.run', 'experiments.search_eval')
               for fl in f.get_flags_for_module(module) if fl.present and fl.name not in read),
              None)


def config_key(given: dict, half: str, pools=()) -> dict:
  """What tells one configuration's rows in results.json from another's: the settings the
  searches run with (the flags given, resolved through the search's defaults), so a run after
  a default changed never reads the old default's rows as its own."""
  resolved = run_lib.make_config('search', **given)
  return dict(sorted((name, getattr(resolved, name)) for name in PASSED_ON), half=half,
              pools=list(pools))


@dataclasses.dataclass
class Cell:
  """One (dataset, budget) cell on one half: its search table and accuracies."""
  dataset: str
  pct: float | None
  budget_ms: float | None
  table: object                # engine.search.SpaceTable of the half's archs
  acc: np.ndarray              # [U] test accuracy of each table arch on `dataset`
  baselines: dict              # method -> its pick's entry (experiments.search.baselines)


def half_cells(space, f, budgets, half: str):
  """The cells of one dataset on one half (`f`: the search's config for that dataset), built
  lazily: the space is costed when the first cell is asked for."""
  from engine import search as search_lib
  from experiments import search as search_exp
  constraints = search_exp.constraints_from_flags(f)
  full = search_exp.space_table(space, constraints, f.dataset)
  acc = search_exp.accuracies(space, f, full.archs)
  if acc is None:
    raise ValueError('no NB201 accuracy table found; pass --benchmark_file')
  keep = in_evaluation_half([space.encode(a) for a in full.archs]) == (half == 'evaluation')
  idx = np.flatnonzero(keep & full.valid)
  feasible_latency = full.costs['latency_ms'][idx][full.feasible[idx]]
  for pct in budgets:
    budget = None if pct is None else float(np.percentile(feasible_latency, pct))
    cell = dataclasses.replace(constraints, latency_budget_ms=budget)
    table = search_lib.build_table(space, cell, [full.archs[i] for i in idx], full.input_shape,
                                   full.num_classes, {k: v[idx] for k, v in full.costs.items()})
    yield Cell(f.dataset, pct, budget, table, acc[idx], search_exp.baselines(space, table,
                                                                             acc[idx]))


def run_cells(workdir: pathlib.Path, datasets, budgets, seeds, half: str,
              given: dict, pools=()) -> list[dict]:
  """Every (dataset, budget, seed) search of this configuration (`given`: the search's flags
  set on the command line) not yet in WORKDIR/results.json; returns this configuration's rows.
  Rows of another configuration in the same file are kept, never mixed in. With `pools`
  (rerank): one row per pool size, each the pick rerank makes from that many of the largest
  feasible archs (the same objective over the same scores as a run with --rerank_pool)."""
  from engine import search as search_lib
  from engine.proxies import aggregate as agg_lib
  from experiments import search as search_exp
  from search_spaces import registry
  space = registry.get('nb201')
  path = workdir / 'results.json'
  every = []
  if path.is_file():
    try:
      every = json.loads(path.read_text())['rows']
    except (ValueError, KeyError, TypeError):
      every = None
    if not isinstance(every, list):
      raise ValueError(f'{path} is not a results.json of search_eval (damaged?); move it away '
                       f'or pass another --workdir')
  config = config_key(given, half, pools)
  rows = [r for r in every if r.get('config') == config]
  done = {(r['dataset'], r['budget_pct'], r['seed']) for r in rows}
  for dataset in datasets:
    f = run_lib.make_config('search', dataset=dataset, **given)
    stage = None if pools else search_exp.finalist_stage(space, f, workdir)  # before any work
    scorer = None
    for c in half_cells(space, f, budgets, half):
      todo = [s for s in seeds if (dataset, c.pct, s) not in done]
      if not todo:
        continue
      if scorer is None:
        images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
        scorer = search_lib.make_scorer(space, agg_lib.split(f.proxies)[0], f, seeds[0], images)
        weights = search_exp.weights_from_flags(f)
      problem = search_lib.Problem(c.table, scorer, f.proxies, weights, f.objective)
      base = c.baselines
      for seed in todo:
        start = time.perf_counter()
        extra = {}
        # what every row of this seed and cell says, picked or stopped
        cell_row = dict(dataset=dataset, budget_pct=c.pct, budget_ms=c.budget_ms, seed=seed,
                        config=config, half=half, searcher=f.searcher, proxies=f.proxies,
                        **{m: base[m]['test_acc'] for m in METHODS[1:]},
                        # not part of `config`: a resumed run may differ here at round-off
                        xla_flags=os.environ.get('XLA_FLAGS', ''))
        if pools:
          picks = _pool_picks(problem, seed, pools, search_lib)
        else:
          try:
            result = search_lib.search(f.searcher, problem, seed,
                                       search_exp.options_from_flags(f))
          except search_lib.UninformativeScores as err:
            # the search declined to pick (no evidence): counted as a stop, never a result
            row = dict(cell_row, rerank_pool=f.rerank_pool, stopped=str(err),
                       search_s=time.perf_counter() - start)
            rows.append(row)
            every.append(row)
            print(f'{cell_name(dataset, c.pct)} seed {seed}: stopped ({err})', flush=True)
            common.write_text_atomic(path, json.dumps(dict(rows=every), indent=1))
            continue
          if stage is not None:  # the search's own pick beside the finalist stage's
            extra['proxy_pick'] = float(c.acc[result.index])
            t0 = time.perf_counter()
            result, _ = search_exp.choose_finalist(stage, problem, result)
            extra['finalist_s'] = time.perf_counter() - t0
          picks = {f.rerank_pool: result.index}
          if result.tied:  # the candidates that shared the best objective, largest first
            extra['tied'] = [dict(arch_str=space.encode(c.table.archs[i]),
                                  acc=float(c.acc[i])) for i in result.tied]
        for pool, index in picks.items():
          row = dict(cell_row, rerank_pool=pool, arch_str=space.encode(c.table.archs[index]),
                     search=float(c.acc[index]), feasible=bool(c.table.feasible[index]),
                     search_s=time.perf_counter() - start, **extra)
          rows.append(row)
          every.append(row)
        print(f'{cell_name(dataset, c.pct)} seed {seed}: '
              + ', '.join((f'pool {p} ' if pools else '') + f'{c.acc[i]:.2f}'
                          for p, i in picks.items())
              + f' (max_macs {base["max_macs"]["test_acc"]:.2f}, oracle '
              f'{base["oracle"]["test_acc"]:.2f})', flush=True)
        common.write_text_atomic(path, json.dumps(dict(rows=every), indent=1))
  return rows


def _pool_picks(problem, seed: int, pools, search_lib) -> dict:
  """{pool size: table index rerank picks} from one scoring of the largest pool."""
  problem.reseed(seed)
  order = search_lib.size_order(problem.table)[:max(pools)]
  values = problem.score(order, problem.scorer.default_k(len(order)))
  ok = problem.table.feasible[order]
  picks = {}
  for pool in sorted(pools):
    fit = problem.objective({n: v[:pool] for n, v in values.items()}, ok[:pool])
    picks[pool] = int(order[search_lib.best_position(problem, order[:pool], fit)[0]])
  return picks


def summarize(rows) -> list[dict]:
  """Per cell (and pool size): mean and std of each method's accuracy over the seeds, and the
  mean gap to the oracle."""
  cells: dict = {}
  for r in rows:
    cells.setdefault((r['dataset'], r['budget_pct'], r.get('rerank_pool')), []).append(r)
  several = len({key[2] for key in cells}) > 1
  out = []
  for (dataset, pct, pool), rs in cells.items():
    name = cell_name(dataset, pct) + (f' pool {pool}' if several else '')
    picked = [r for r in rs if 'stopped' not in r]
    entry = dict(cell=name, seeds=len(rs), pool=pool, stopped=len(rs) - len(picked),
                 feasible=all(r['feasible'] for r in picked))
    for m in METHODS:  # the baselines from every seed's cell, the search from its picks
      v = np.array([r[m] for r in (picked if m == 'search' else rs)] or [np.nan])
      entry[m] = (float(v.mean()), float(v.std()))
    oracle = entry['oracle'][0]
    entry['gap'] = {m: oracle - entry[m][0] for m in METHODS}
    if all('proxy_pick' in r for r in rs):  # --finalists: the search's pick without the stage
      v = np.array([r['proxy_pick'] for r in rs])
      entry['proxy_pick'] = (float(v.mean()), float(v.std()))
      entry['finalist_s'] = float(np.mean([r['finalist_s'] for r in rs]))
    out.append(entry)
  return out


def _mean_std(pair, n: int) -> str:
  """'mean ± std', or the mean alone over fewer than 2 seeds (a std of one value says nothing)."""
  return f'{pair[0]:.2f}' + (f' ± {pair[1]:.2f}' if n > 1 else '')


def write_table(workdir: pathlib.Path, summary, half: str):
  lines = [f'Held-out search on NB201 ({half} half; mean ± std over seeds; gap = the half\'s '
           f'oracle minus the mean)', '',
           '| cell | seeds | search | gap | max_macs | max_params | random | oracle | '
           'search >= max_macs and max_params |', '|---|---|---|---|---|---|---|---|---|']
  for e in summary:
    # a seed whose search stopped without a pick is no win: the cell is then NO, with the count
    beats = (not e['stopped'] and e['search'][0] >= max(e['max_macs'][0], e['max_params'][0]))
    seeds = f'{e["seeds"]}' + (f' ({e["stopped"]} stopped)' if e['stopped'] else '')
    picked = e['seeds'] - e['stopped']
    lines.append(f'| {e["cell"]} | {seeds} | {_mean_std(e["search"], picked)} | '
                 f'{e["gap"]["search"]:.2f} | {e["max_macs"][0]:.2f} | {e["max_params"][0]:.2f} '
                 f'| {e["random"][0]:.2f} | {e["oracle"][0]:.2f} | {"yes" if beats else "NO"} |')
  staged = [e for e in summary if 'proxy_pick' in e]
  if staged:  # the finalist stage against the same searches' own picks
    lines += ['', '| cell | seeds | without finalists | with finalists | gain | finalist s/search '
              '|', '|---|---|---|---|---|---|']
    lines += [f'| {e["cell"]} | {e["seeds"]} | {_mean_std(e["proxy_pick"], e["seeds"])}'
              f' | {_mean_std(e["search"], e["seeds"])} | '
              f'{e["search"][0] - e["proxy_pick"][0]:+.2f} | {e["finalist_s"]:.0f} |'
              for e in staged]
  text = '\n'.join(lines) + '\n'
  common.write_text_atomic(workdir / 'table.md', text)
  return text


def plot_gaps(workdir: pathlib.Path, summary):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(summary)), 4.0))
  width = 0.8 / 4
  x = np.arange(len(summary))
  for k, m in enumerate(('search', 'max_macs', 'max_params', 'random')):
    ax.bar(x + (k - 1.5) * width, [e['gap'][m] for e in summary], width, label=m)
  ax.set_xticks(x, [e['cell'].replace('/', '\n') for e in summary], fontsize=7)
  ax.set_ylabel('gap to the half\'s oracle (accuracy points)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  common.write_atomic(workdir / 'gaps.png', lambda fh: fig.savefig(fh, format='png', dpi=120))
  plt.close(fig)


def main(argv):
  del argv
  from experiments import search as search_exp
  common.quiet_logs()
  f = flags.FLAGS
  unread = unread_flag(READ)
  if unread:
    common.fail(f'search_eval does not read --{unread} (its cells are STM32F746 with CMSIS-NN, '
                f'and it passes on only --{", --".join(PASSED_ON)}); drop it')
  try:  # a search flag the chosen searcher does not read (e.g. --recheck with rerank), bad
    # seeds or cells, an unusable workdir: one line each
    run_lib.refuse_unread(f, 'search')
    seeds = search_exp.parse_seeds(f.seeds if f['seeds'].present else DEFAULTS['seeds'], 0)
    datasets, budgets = cells_from_flags()
    workdir = pathlib.Path(f.workdir if f['workdir'].present else DEFAULTS['workdir'])
    common.check_workdir(workdir)
  except ValueError as err:
    common.fail(str(err))
  common.enable_compile_cache()
  given = {name: f[name].value for name in PASSED_ON if f[name].present}
  given.setdefault('searcher', f.searcher)
  try:
    pools = sorted({int(p) for p in _POOLS.value.split(',') if p.strip()})
  except ValueError:
    pools = [0]
  if pools and (min(pools) < 1 or given['searcher'] != 'rerank'):
    common.fail(f'bad --pools={_POOLS.value!r}; give pool sizes >= 1, with --searcher=rerank')
  try:
    rows = run_cells(workdir, datasets, budgets, seeds, _HALF.value, given, pools)
  except Exception as err:  # the user's to fix (e.g. --finalists without --data_dir): one line
    message = common.user_error_message(err, {'data_dir': f.data_dir,
                                              'benchmark_file': f.benchmark_file})
    if message is None:
      raise
    common.fail(message)
  summary = summarize([r for r in rows if r['seed'] in seeds and r['dataset'] in datasets
                       and r['budget_pct'] in budgets])
  print(write_table(workdir, summary, _HALF.value))
  plot_gaps(workdir, summary)
  print(f'wrote {workdir}/results.json, table.md and gaps.png')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

"""`--experiment=search` (the default job): hardware-aware zero-shot NAS for an MCU, on any
registered search space (`--search_space`), through one path (engine/search/).

For each seed: run the chosen searcher, print the winner, its predicted MCU cost and whether it
fits; write `results.json` and `results.csv` (atomically: temp file + rename) into --workdir,
plus `pareto.png` (predicted latency vs true test accuracy, with the oracle front over the
archs the search knows, under the same cost model) when true accuracies are known: NB201's
benchmark table, or a space's trained ground truth (search_spaces/ground_truth/).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import time

import numpy as np
from tqdm import tqdm

from experiments import common

CSV_COLUMNS = ('seed', 'searcher', 'arch_index', 'arch_str', 'test_acc', 'feasible',
               'sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params',
               'objective', 'search_s', 'compile_s', 'run_s', 'scored', 'best_feasible_acc',
               'gap', 'device', 'runtime')


def parse_seeds(spec: str, default: int) -> list[int]:
  """'0-9' | '0,3,5' | '' (just --seed) -> sorted unique seeds."""
  spec = (spec or '').strip()
  if not spec:
    return [default]
  seeds = []
  try:
    for part in spec.split(','):
      lo, sep, hi = part.strip().partition('-')
      seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
  except ValueError:
    raise ValueError(f'bad --seeds={spec!r}; use a range like 0-9 or a list like 0,3,5') from None
  if not seeds and '-' in spec:
    raise ValueError(f'bad --seeds={spec!r}: a range runs from low to high, e.g. 0-9')
  if not seeds or min(seeds) < 0:
    raise ValueError(f'bad --seeds={spec!r}; seeds are non-negative integers, e.g. 0-9')
  return sorted(set(seeds))


def _source_digest(space, *parts) -> str:
  """Key of a cached cost table: the target, and the source of the cost model and of the
  space's own module (its package, for a space in one)."""
  import inspect
  root = pathlib.Path(__file__).resolve().parents[1]
  module = pathlib.Path(inspect.getsourcefile(space.lower)).resolve()
  own = sorted(module.parent.glob('*.py')) if module.parent.name != 'search_spaces' else [module]
  digest = hashlib.sha256(repr((space.name,) + parts).encode())
  for src in sorted((root / 'hardware').glob('*.py')) + own:
    digest.update(src.read_bytes())
  return digest.hexdigest()[:16]


def _cached_costs(space, archs, input_shape, num_classes, constraints):
  """Costs of every arch of an enumerable space, cached on disk (keyed by the cost model's and
  the spaces' source and the target): NB201's 15,625 take a few seconds to cost, a cache hit
  milliseconds."""
  from engine import search as search_lib
  key = _source_digest(space, constraints.device, constraints.runtime, input_shape,
                       num_classes)
  cache = pathlib.Path(os.environ.get('ZERONAS_CACHE', pathlib.Path.home() / '.cache' /
                                      'zeronas-mcu')) / f'{space.name}_costs_{key}.npz'
  if cache.is_file():
    try:
      with np.load(cache) as z:
        costs = {k: z[k] for k in search_lib.COST_NAMES}
      if all(len(v) == len(archs) for v in costs.values()):
        return costs
    except (OSError, KeyError, ValueError):
      pass
  costs = search_lib.grouped_costs(space, archs, input_shape, num_classes, constraints.device,
                                   constraints.runtime)
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    common.write_atomic(cache, lambda fh: np.savez(fh, **costs))
  except OSError:
    pass  # a read-only home only costs the recomputation next time
  return costs


def space_table(space, constraints, dataset='cifar10', space_samples=4096, seed=0, keep=None):
  """The candidates the search knows: every arch of an enumerable space (costs cached), else
  `space_samples` archs drawn with `seed`; restricted to one group (engine.search), and to the
  archs `keep(arch)` accepts when given (the pipeline: archs its int8 export can run)."""
  from engine import search as search_lib
  shape, classes = space.shape_for(dataset if space.datasets else None)
  if space.enumerate is not None:
    archs = space.enumerate()
    costs = _cached_costs(space, archs, shape, classes, constraints)
  else:
    archs = space.sample(np.random.default_rng([seed, 0x5eed]), space_samples)
    costs = None
  if keep is not None:
    kept = [i for i, a in enumerate(archs) if keep(a)]
    if not kept:
      raise ValueError(f'no {space.name} arch can be exported to int8; nothing to search')
    archs = [archs[i] for i in kept]
    costs = None if costs is None else {k: np.asarray(v)[kept] for k, v in costs.items()}
  return search_lib.build_table(space, constraints, archs, shape, classes, costs)


def _float_or_none(value):
  return None if value is None or value == 0 else float(value)


def constraints_from_flags(f):
  from engine import search as search_lib
  return search_lib.Constraints(device=f.device, runtime=f.runtime,
                                sram_reserve_kb=f.sram_reserve_kb,
                                flash_reserve_kb=f.flash_reserve_kb,
                                latency_budget_ms=_float_or_none(f.latency_budget_ms),
                                energy_budget_mj=_float_or_none(f.energy_budget_mj))


def options_from_flags(f):
  from engine import search as search_lib
  for name in ('random_samples', 'evolution_samples', 'population', 'tournament', 'recheck',
               'batch_candidates', 'rerank_pool'):
    if getattr(f, name) < 1:
      raise ValueError(f'--{name} must be at least 1, got {getattr(f, name)}')
  if getattr(f, 'searcher', None) == 'evolution':  # else one is cut to the other without a word
    for small, large in (('population', 'evolution_samples'), ('tournament', 'population')):
      if getattr(f, small) > getattr(f, large):
        raise ValueError(f'--{small}={getattr(f, small)} is more than --{large}='
                         f'{getattr(f, large)}; pass at most {getattr(f, large)}')
  if f.rerank_band >= 1:  # before any work (rerank checks it too, for callers of the library)
    raise ValueError(f'--rerank_band must be in [0, 1) (negative: no size floor), got '
                     f'{f.rerank_band}')
  return search_lib.Options(batch=f.batch_candidates, random_samples=f.random_samples,
                            evolution_samples=f.evolution_samples, population=f.population,
                            tournament=f.tournament, recheck=f.recheck, pool=f.rerank_pool,
                            band=None if f.rerank_band < 0 else f.rerank_band,
                            prune_none=f.prune_none)


def weights_from_flags(f):
  """The objective's weights (--proxy_weights, --w_flops, --w_latency, --w_feasible)."""
  from engine import search as search_lib
  return search_lib.Weights(search_lib.parse_weights(f.proxy_weights), f.w_flops, f.w_latency,
                            f.w_feasible)


def accuracies(space, f, archs) -> np.ndarray | None:
  """True test accuracy (%) of each arch, nan where unknown: NB201's benchmark table for
  --dataset, or a space's trained ground truth (search_spaces/ground_truth/); None without."""
  if space.datasets is not None:  # a benchmark indexed by dataset (NB201)
    bench = common.arch_index_table(f.benchmark_file)
    if bench is None:
      return None
    column = bench.columns[common.ACC_COLUMN[f.dataset]]
    return np.asarray(column[bench.ops_to_index(space.to_array(archs))], np.float64)
  from engine.train import ground_truth as gt_lib
  try:
    table = gt_lib.load_ground_truth(space, f.benchmark_file)
  except FileNotFoundError:
    if f.benchmark_file:
      raise
    return None
  first = lambda runs: runs[min(runs)] if runs else np.nan
  return np.array([first(table.get(space.encode(a), {})) for a in archs], np.float64)


def run(f, workdir='search_out', keep=None):
  """The search on any registered space (its defaults, e.g. the proxies, are
  `run.EXPERIMENTS['search']`'s); `keep`: a filter on the candidates (`space_table`)."""
  from engine.proxies import aggregate as agg_lib
  from engine import search as search_lib
  from search_spaces import registry
  space = registry.get(f.search_space)
  search_lib.get(f.searcher)  # fail on a bad name before any work
  seeds = parse_seeds(f.seeds, f.seed)
  constraints = constraints_from_flags(f)
  options = options_from_flags(f)
  weights = weights_from_flags(f)
  plain, _ = agg_lib.split(f.proxies)
  workdir = pathlib.Path(workdir)
  stage = finalist_stage(space, f, workdir)  # no --data_dir: one line before any work
  common.enable_compile_cache()

  start = time.perf_counter()
  table = space_table(space, constraints, f.dataset, f.space_samples, f.seed, keep)
  table_s = time.perf_counter() - start
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  scorer = search_lib.make_scorer(space, plain, f, seeds[0], images)
  problem = search_lib.Problem(table, scorer, f.proxies, weights, f.objective)
  search_lib.check(f.searcher, problem)
  import jax
  device_name = f'{len(jax.local_devices())} {jax.local_devices()[0].platform} device(s)'
  limits = ', '.join(f'{k} <= {v:.4g}' for k, v in table.limits.items())
  where = (f'{space.name}/{f.dataset}' if space.datasets else space.name) + (
      f' (group {table.group})' if table.group != () else '')
  known = 'archs' if space.enumerate is not None else 'sampled archs in the group'
  print(f'search: {f.searcher} on {where} for {constraints.device}/{constraints.runtime} '
        f'({limits}); {int(table.feasible.sum())} of {len(table.archs)} {known} feasible; '
        f'costed in {table_s:.1f} s')
  print(f'inputs: {images.source if images else "N(0, 1) Gaussian noise (no --data_dir given)"};'
        f' objective {f.objective} over {f.proxies}' + ''.join(f'; {n}' for n in
                                                             scorer.networks(table.group))
        + f'; {device_name}')

  acc = accuracies(space, f, table.archs)
  best_feasible, base = None, None
  if acc is not None and np.isfinite(acc[table.feasible]).any():
    base = baselines(space, table, acc)
    best_feasible = base['oracle']['test_acc']
    print('baselines (true test acc, gap to the best feasible): ' + ', '.join(
        f'{name} {b["test_acc"]:.2f} ({b["gap"]:.2f})' for name, b in base.items()))
  total = search_lib.PROGRESS_TOTAL[f.searcher](problem, options) * len(seeds)
  records = []
  with tqdm(total=total, unit='step', disable=not f.progress, file=None) as bar:
    for seed in seeds:
      t0 = time.perf_counter()
      result = search_lib.search(f.searcher, problem, seed, options, bar.update)
      proxy_pick, finalists = result.index, None
      if stage is not None:
        t1 = time.perf_counter()
        result, finalists = choose_finalist(stage, problem, result, bar.write)
        finalists_s = time.perf_counter() - t1
      wall = time.perf_counter() - t0
      records.append(_record(space, f, seed, result, wall, constraints, problem.table, acc,
                             best_feasible, device_name))
      if finalists is not None:
        records[-1]['finalists_s'] = finalists_s  # inside search_s, apart from compile and run
        records[-1]['proxy_pick'] = dict(arch_str=space.encode(table.archs[proxy_pick]),
                                         test_acc=_true_acc(acc, proxy_pick))
        records[-1]['finalists'] = [dict(r, test_acc=_true_acc(acc, i)) for r, i in
                                    zip(finalists, result.ranked)]
      _report(records[-1], result, table.limits, bar)
      _write_results(workdir, records, f, constraints, problem.table, base)
  if len(records) > 1:
    _summary(records)
  if acc is not None and np.isfinite(acc).any():
    try:
      _pareto_plot(workdir / 'pareto.png', problem.table, acc, records, constraints, space)
      print(f'wrote {workdir / "results.json"}, results.csv and pareto.png')
    except ImportError:
      print(f'wrote {workdir / "results.json"} and results.csv (no pareto.png: matplotlib is '
            f'not installed; pip install matplotlib)')
  else:
    try:
      _cost_plot(workdir / 'pareto.png', problem.table, records, constraints, space)
      plot = ('pareto.png shows predicted costs only')
    except ImportError:
      plot = 'no pareto.png: matplotlib is not installed'
    print(f'wrote {workdir / "results.json"} and results.csv (no true accuracy for these archs: '
          f'no baselines, and {plot}; for them pass --benchmark_file: '
          f'{common.accuracy_table_hint(space)})')


def finalist_stage(space, f, workdir):
  """The finalist stage of `--finalists` (None without): trains on --data_dir, NB201 at the
  zero-cost network's size; its runs are kept (and reused) in WORKDIR/finalists/."""
  if not f.finalists:
    return None
  from engine.search import finalists as fin_lib
  settings = fin_lib.Settings(k=f.finalists, epochs=f.finalist_epochs, width=f.zc_width,
                              cells=f.zc_cells, lr=f.finalist_lr, seed=f.seed)
  return fin_lib.Finalists(space.name, f.dataset, f.data_dir, settings,
                           pathlib.Path(workdir) / 'finalists')


def choose_finalist(stage, problem, result, log=print):
  """(the result with the finalist stage's pick, the finalists' records): the best of the
  search's top candidates (`result.ranked`) by validation accuracy after brief training."""
  from engine.train import trainable
  table = problem.table
  # only archs the trainer runs (tinycnn: not its swish archs) can be finalists
  can_train = trainable.int8_exportable(table.space.name)
  ranked = [i for i in result.ranked if can_train is None or can_train(table.archs[i])]
  if not ranked:
    raise ValueError(f'none of the search\'s {len(result.ranked)} final candidates can be '
                     f'trained here (no int8 training path for their ops); run without '
                     f'--finalists')
  if len(ranked) < len(result.ranked):
    log(f'note: finalists: {len(result.ranked) - len(ranked)} of the {len(result.ranked)} final '
        f'candidates have no training path (ops the trainer lacks, e.g. swish) and are left out')
  codes = [table.space.encode(table.archs[i]) for i in ranked]
  if len(codes) < stage.settings.k:  # the pool is the searcher's (rerank: --rerank_pool)
    log(f'note: finalists: training {len(codes)}, not --finalists={stage.settings.k}: the '
        f'search\'s final pool held only {len(codes)} trainable candidate(s) with a finite '
        f'objective (rerank: raise --rerank_pool for more)')
  log(f'finalists: training the {min(len(codes), stage.settings.k)} best by the objective')
  best, records = stage.choose(codes)
  i = ranked[best]
  note = (f'note: finalist stage picked rank {best + 1} of {len(records)} by validation '
          f'accuracy ({100 * records[best]["val_acc"]:.2f}%)')
  return dataclasses.replace(result, index=int(i), arch=table.archs[i],
                             objective=float('nan') if best else result.objective,
                             values={} if best else result.values,
                             ranked=ranked, log=result.log + [note]), records


def _record(space, f, seed, result, wall, constraints, table, acc, best_feasible, device_name):
  i = result.index
  costs = {k: float(table.costs[k][i]) for k in ('sram_bytes', 'flash_bytes', 'latency_ms',
                                                 'energy_mj', 'macs', 'params')}
  bench_index = None
  if space.datasets is not None:
    bench = common.arch_index_table(f.benchmark_file)
    if bench is not None:
      bench_index = int(bench.ops_to_index(space.to_array([result.arch]))[0])
  rec = dict(seed=seed, searcher=f.searcher, arch_str=space.encode(result.arch),
             arch_index=bench_index, feasible=bool(table.feasible[i]), **costs,
             objective=result.objective,
             proxies={k: v for k, v in result.values.items() if k not in costs},
             search_s=wall, compile_s=result.compile_s, run_s=result.run_s,
             scored=result.scored, device=constraints.device, runtime=constraints.runtime,
             compute=device_name, log=result.log,
             # per proxy term over the final pool's feasible candidates: how many were flagged
             # and how many distinct values the rest took (a pick is never made without one term
             # that separates them: engine.search.UninformativeScores)
             proxy_evidence=result.evidence,
             # the candidates that shared the best objective (the largest won), if any
             tied=[space.encode(table.archs[j]) for j in result.tied])
  rec['test_acc'] = _true_acc(acc, i)
  if result.trace:  # the anytime curve: [archs scored, arch, true test acc or None]
    rec['trace'] = [[n, space.encode(table.archs[j]), _true_acc(acc, j)]
                    for n, j in result.trace]
  rec['best_feasible_acc'] = best_feasible
  known = rec['test_acc'] is not None and best_feasible is not None
  rec['gap'] = best_feasible - rec['test_acc'] if known else None
  return rec


def _true_acc(acc, i):
  """The true test accuracy of table entry i, None where unknown (no table, an arch beyond it
  such as evolution's children, or nan)."""
  return float(acc[i]) if acc is not None and i < len(acc) and np.isfinite(acc[i]) else None


def _report(rec, result, limits, bar):
  fits = 'fits' if rec['feasible'] else 'DOES NOT FIT'
  acc = f'; true test acc {rec["test_acc"]:.2f}%' if rec['test_acc'] is not None else ''
  gap = (f' (best feasible {rec["best_feasible_acc"]:.2f}%, gap {rec["gap"]:.2f})'
         if rec['gap'] is not None else '')
  bar.write(f'seed {rec["seed"]}: {rec["arch_str"]}{acc}{gap}\n'
            f'  {fits} {rec["device"]}/{rec["runtime"]}: SRAM {rec["sram_bytes"] / 1024:.1f} KB, '
            f'flash {rec["flash_bytes"] / 1024:.1f} KB, latency {rec["latency_ms"]:.2f} ms, '
            f'energy {rec["energy_mj"]:.2f} mJ, {rec["macs"] / 1e6:.1f} MMACs, '
            f'{rec["params"] / 1e3:.1f} k params (limits: '
            + ', '.join(f'{k} <= {v:.4g}' for k, v in limits.items()) + ')\n'
            f'  search {rec["search_s"]:.1f} s (compile {rec["compile_s"]:.1f} s, run '
            f'{rec["run_s"]:.1f} s'
            + (f', finalist training {rec["finalists_s"]:.1f} s' if 'finalists_s' in rec else '')
            + f'), {rec["scored"]} candidates scored'
            + ''.join(f'\n  {line}' for line in rec['log'] if line.startswith('note: ')))


def _summary(records):
  def stats(key):
    v = np.array([r[key] for r in records if r[key] is not None], float)
    return (v.mean(), v.std()) if len(v) else (float('nan'), float('nan'))
  acc, gap, t, run = stats('test_acc'), stats('gap'), stats('search_s'), stats('run_s')
  print(f'{len(records)} seeds: test acc {acc[0]:.2f} +- {acc[1]:.2f}, gap {gap[0]:.2f} +- '
        f'{gap[1]:.2f}, search {t[0]:.1f} s/seed (run {run[0]:.1f} s, compile in the first)')


def baselines(space, table, acc) -> dict:
  """The simple rules a searcher must beat, under the same constraints and costs, over the
  feasible archs with a known accuracy: `max_macs` and `max_params` (the feasible arch with the
  most MACs / parameters, ties broken by the other, then by order), `random` (the mean true
  accuracy of a uniformly drawn feasible arch, i.e. random search with one sample, in
  expectation) and `oracle` (the best feasible true accuracy). Each: test_acc and gap to the
  oracle; the rules also give their arch and costs."""
  acc = np.asarray(acc, np.float64)
  feasible = np.flatnonzero(table.feasible & np.isfinite(acc[:len(table.feasible)]))
  best = float(acc[feasible].max())
  out = {}
  for name, first, second in (('max_macs', 'macs', 'params'), ('max_params', 'params', 'macs')):
    order = np.lexsort((feasible, -table.costs[second][feasible], -table.costs[first][feasible]))
    i = int(feasible[order[0]])
    out[name] = dict(arch_str=space.encode(table.archs[i]), test_acc=float(acc[i]),
                     gap=best - float(acc[i]),
                     **{k: float(table.costs[k][i]) for k in ('latency_ms', 'macs', 'params')})
  mean = float(acc[feasible].mean())
  out['random'] = dict(test_acc=mean, gap=best - mean)
  out['oracle'] = dict(test_acc=best, gap=0.0)
  return out


def _write_results(workdir, records, f, constraints, table, base=None):
  meta = dict(searcher=f.searcher, search_space=f.search_space, objective=f.objective,
              dataset=f.dataset, device=constraints.device,
              runtime=constraints.runtime, limits=table.limits, proxies=f.proxies,
              data_dir=f.data_dir, stand_in_inputs=None if f.data_dir else f.stand_in_inputs,
              baselines=base, machine=platform.processor() or platform.machine())
  common.write_text_atomic(workdir / 'results.json',
                json.dumps(dict(meta=meta, results=records), indent=1, default=float))
  rows = [[common.format_number(r[c], digits=6) for c in CSV_COLUMNS] for r in records]
  common.write_csv_atomic(workdir / 'results.csv', CSV_COLUMNS, rows)


def _cost_plot(path, table, records, constraints, space):
  """Without accuracies: predicted latency vs params of every costed arch (feasible or not),
  the front of the largest archs at each latency, the limits and the found archs."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lat, params = table.costs['latency_ms'], table.costs['params'] / 1e3
  ok = np.asarray(table.feasible, bool)
  order = np.argsort(np.where(ok, lat, np.inf), kind='stable')[:int(ok.sum())]
  front = order[params[order] >= np.maximum.accumulate(params[order])]
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.scatter(lat[~ok], params[~ok], s=3, c='0.85', label='infeasible')
  ax.scatter(lat[ok], params[ok], s=3, c='0.55', label='feasible')
  ax.step(lat[front], params[front], where='post', c='k', lw=1,
          label='largest feasible at each latency')
  found = np.array([[r['latency_ms'], r['params'] / 1e3] for r in records])
  ax.scatter(found[:, 0], found[:, 1], s=40, c='tab:red', marker='*',
             label=f'found ({records[0]["searcher"]}, {len(records)} seeds)')
  if 'latency_ms' in table.limits:
    ax.axvline(table.limits['latency_ms'], c='tab:blue', ls='--', lw=1, label='latency budget')
  ax.set_xlabel(f'predicted latency on {constraints.device}/{constraints.runtime} (ms)')
  ax.set_ylabel('params (k)')
  ax.set_title(f'{space.name}: predicted costs of {len(lat)} archs (no accuracy known)',
               fontsize=9)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  common.write_atomic(path, lambda fh: fig.savefig(fh, format='png', dpi=120))
  plt.close(fig)


def _pareto_plot(path, table, acc, records, constraints, space):
  """Predicted latency vs true accuracy: every known arch, the oracle front, the found archs."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n = len(table.archs)
  true = np.full(n, np.nan)
  true[:min(n, len(acc))] = acc[:n]
  known = np.isfinite(true)
  lat = table.costs['latency_ms']
  order = np.argsort(np.where(known, lat, np.inf), kind='stable')[:int(known.sum())]
  front = order[true[order] >= np.maximum.accumulate(true[order])]  # best acc at <= latency
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  off = known & ~table.feasible
  on = known & table.feasible
  ax.scatter(lat[off], true[off], s=2, c='0.85', label='infeasible')
  ax.scatter(lat[on], true[on], s=2, c='0.6', label='feasible')
  ax.step(lat[front], true[front], where='post', c='k', lw=1, label='oracle front')
  found = np.array([[r['latency_ms'], r['test_acc']] for r in records
                    if r['test_acc'] is not None])
  if len(found):
    ax.scatter(found[:, 0], found[:, 1], s=30, c='tab:red', marker='*',
               label=f'found ({records[0]["searcher"]}, {len(records)} seeds)')
  unknown = sorted({r['latency_ms'] for r in records if r['test_acc'] is None})
  for i, x in enumerate(unknown):  # a pick outside the trained table: its latency only
    ax.axvline(x, c='tab:red', ls=':', lw=1,
               label=None if i else f'found, accuracy not in the table ({len(unknown)})')
  if 'latency_ms' in table.limits:
    ax.axvline(table.limits['latency_ms'], c='tab:blue', ls='--', lw=1, label='latency budget')
  ax.set_xlabel(f'predicted latency on {constraints.device}/{constraints.runtime} (ms)')
  ax.set_ylabel(f'{space.name} test accuracy (%)')
  ax.set_ylim(max(np.nanmin(true), np.nanmax(true) - 15), np.nanmax(true) + 0.5)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  common.write_atomic(path, lambda fh: fig.savefig(fh, format='png', dpi=120))
  plt.close(fig)

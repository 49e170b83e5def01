"""`--experiment=search` (the default job): hardware-aware zero-shot NAS on NB201 for an MCU.

For each seed: run the chosen searcher, print the winner, its predicted MCU cost and whether it
fits; write `results.json` and `results.csv` (atomically: temp file + rename) into --workdir,
plus `pareto.png` (predicted latency vs true test accuracy, with the oracle front over all
15,625 archs under the same cost model) when the NB201 benchmark table is available.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import time

import numpy as np
from tqdm import tqdm

from experiments import common
from search_spaces import nb201

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
  if not seeds or min(seeds) < 0:
    raise ValueError(f'bad --seeds={spec!r}; seeds are non-negative integers, e.g. 0-9')
  return sorted(set(seeds))


def _space_table(constraints):
  """The space's costs, cached on disk keyed by the cost model's source and the target."""
  from engine import objective as obj
  root = pathlib.Path(__file__).resolve().parents[1]
  digest = hashlib.sha256(repr((constraints.device, constraints.runtime,
                                constraints.dataset)).encode())
  for src in sorted((root / 'hardware').glob('*.py')) + [root / 'search_spaces' /
                                                          'nb201_graph.py']:
    digest.update(src.read_bytes())
  cache = pathlib.Path(os.environ.get('ZERONAS_CACHE', pathlib.Path.home() / '.cache' /
                                      'zeronas-mcu')) / f'nb201_costs_{digest.hexdigest()[:16]}.npz'
  ops = nb201.all_ops()
  costs = None
  if cache.is_file():
    try:
      with np.load(cache) as z:
        costs = {k: z[k] for k in obj.COST_NAMES}
    except (OSError, KeyError, ValueError):
      costs = None
  if costs is None:
    # One padded shape (16 x 1,024), so a single compile.
    masks = nb201.ops_to_mask(np.concatenate([ops, np.repeat(ops[-1:], 16384 - len(ops), 0)]))
    costs = {k: v[:len(ops)] for k, v in obj.cost(masks, constraints).items()}
    try:
      cache.parent.mkdir(parents=True, exist_ok=True)
      common.write_atomic(cache, lambda fh: np.savez(fh, **costs))
    except OSError:
      pass  # a read-only home only costs the recomputation next time
  return obj.table_from_costs(costs, constraints)


def _float_or_none(value):
  return None if value is None or value == 0 else float(value)


def constraints_from_flags(f):
  from engine import objective as obj
  return obj.Constraints(device=f.device, runtime=f.runtime, dataset=f.dataset,
                         sram_reserve_kb=f.sram_reserve_kb, flash_reserve_kb=f.flash_reserve_kb,
                         latency_budget_ms=_float_or_none(f.latency_budget_ms),
                         energy_budget_mj=_float_or_none(f.energy_budget_mj))


def options_from_flags(f):
  from engine import search as search_lib
  for name in ('random_samples', 'evolution_samples', 'population', 'tournament', 'recheck',
               'batch_candidates', 'rerank_pool'):
    if getattr(f, name) < 1:
      raise ValueError(f'--{name} must be at least 1, got {getattr(f, name)}')
  return search_lib.Options(batch=f.batch_candidates, random_samples=f.random_samples,
                            evolution_samples=f.evolution_samples, population=f.population,
                            tournament=f.tournament, recheck=f.recheck, pool=f.rerank_pool,
                            prune_none=f.prune_none)


def run(f, workdir='search_out'):
  """The search on NB201 (its defaults, e.g. the proxies, are `run.EXPERIMENTS['search']`'s)."""
  from engine import objective as obj
  from engine import search as search_lib
  search_lib.get(f.searcher)  # fail on a bad name before any work
  seeds = parse_seeds(f.seeds, f.seed)
  settings = common.settings_from_flags(f)
  constraints = constraints_from_flags(f)
  options = options_from_flags(f)
  weights = obj.Weights(obj.parse_weights(f.proxy_weights), f.w_flops, f.w_latency,
                        f.w_feasible)
  workdir = pathlib.Path(workdir)
  common.enable_compile_cache()

  start = time.perf_counter()
  table = _space_table(constraints)
  obj.check_feasible(table, constraints)
  table_s = time.perf_counter() - start
  bench = common.arch_index_table(f.benchmark_file)
  acc = bench.columns.get(common.ACC_COLUMN[f.dataset]) if bench is not None else None
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  import jax
  device_name = f'{len(jax.local_devices())} {jax.local_devices()[0].platform} device(s)'
  limits = ', '.join(f'{k} <= {v:.4g}' for k, v in table.limits.items())
  print(f'search: {f.searcher} on NB201/{f.dataset} for {constraints.device}/'
        f'{constraints.runtime} ({limits}); {int(table.feasible.sum())} of {nb201.NUM_ARCHS} '
        f'archs feasible; space costed in {table_s:.1f} s')
  problem = search_lib.Problem(f.proxies, settings, constraints, weights, images, seeds[0], table)
  needs = {p.needs for p in problem.network}
  nets = ([f'NTK C={settings.ntk_width} N={settings.ntk_cells} B={settings.ntk_batch} '
           f'x{settings.ntk_repeats}'] if 'ntk' in needs else []) + (
          [f'zero-cost C={settings.zc_width} N={settings.zc_cells} B={settings.zc_batch}']
          if 'zc' in needs else [])
  print(f'inputs: {images.source if images else "N(0, 1) Gaussian noise (no --data_dir given)"};'
        f' objective {f.proxies}' + ''.join(f'; {n}' for n in nets) + f'; {device_name}')

  best_feasible, base = None, None
  if acc is not None:
    base = baselines(table, acc[bench.ops_to_index(table.ops)])
    best_feasible = base['oracle']['test_acc']
    print('baselines (true test acc, gap to the best feasible): ' + ', '.join(
        f'{name} {b["test_acc"]:.2f} ({b["gap"]:.2f})' for name, b in base.items()))
  total = search_lib.PROGRESS_TOTAL[f.searcher](options, table) * len(seeds)
  records = []
  with tqdm(total=total, unit='step', disable=not f.progress, file=None) as bar:
    for seed in seeds:
      t0 = time.perf_counter()
      result = search_lib.search(f.searcher, problem, seed, options, bar.update)
      wall = time.perf_counter() - t0
      records.append(_record(f, seed, result, wall, constraints, table, bench, acc,
                             best_feasible, device_name))
      _report(records[-1], result, table.limits, bar)
      _write_results(workdir, records, f, constraints, table, base)
  if len(records) > 1:
    _summary(records)
  if acc is not None:
    try:
      _pareto_plot(workdir / 'pareto.png', table, bench, acc, records, constraints)
      print(f'wrote {workdir / "results.json"}, results.csv and pareto.png')
    except ImportError:
      print(f'wrote {workdir / "results.json"} and results.csv (no pareto.png: matplotlib is '
            f'not installed; pip install matplotlib)')
  else:
    print(f'wrote {workdir / "results.json"} and results.csv (no benchmark table: no true '
          f'accuracy and no Pareto plot; pass --benchmark_file)')


def _record(f, seed, result, wall, constraints, table, bench, acc, best_feasible, device_name):
  code = int(nb201.ops_to_code(result.ops))
  costs = {k: float(table.costs[k][code]) for k in ('sram_bytes', 'flash_bytes', 'latency_ms',
                                                    'energy_mj', 'macs', 'params')}
  rec = dict(seed=seed, searcher=f.searcher, arch_str=nb201.format_arch_str(result.ops),
             arch_index=int(bench.ops_to_index(result.ops[None])[0]) if bench else None,
             feasible=bool(table.feasible[code]), **costs, objective=result.objective,
             proxies={k: v for k, v in result.values.items() if k not in costs},
             search_s=wall, compile_s=result.compile_s, run_s=result.run_s,
             scored=result.scored, device=constraints.device, runtime=constraints.runtime,
             compute=device_name, log=result.log)
  rec['test_acc'] = float(acc[rec['arch_index']]) if acc is not None else None
  if result.trace:  # the anytime curve: [archs scored, arch index, true test acc or None]
    idx = bench.ops_to_index(nb201.code_to_ops(np.array([c for _, c in result.trace]))) \
        if bench else [None] * len(result.trace)
    rec['trace'] = [[n, None if i is None else int(i),
                     float(acc[i]) if acc is not None and i is not None else None]
                    for (n, _), i in zip(result.trace, idx)]
  rec['best_feasible_acc'] = best_feasible
  rec['gap'] = best_feasible - rec['test_acc'] if acc is not None else None
  return rec


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
            f'{rec["run_s"]:.1f} s), {rec["scored"]} candidates scored')


def _summary(records):
  def stats(key):
    v = np.array([r[key] for r in records if r[key] is not None], float)
    return (v.mean(), v.std()) if len(v) else (float('nan'), float('nan'))
  acc, gap, t = stats('test_acc'), stats('gap'), stats('search_s')
  run = stats('run_s')
  print(f'{len(records)} seeds: test acc {acc[0]:.2f} +- {acc[1]:.2f}, gap {gap[0]:.2f} +- '
        f'{gap[1]:.2f}, search {t[0]:.1f} s/seed (run {run[0]:.1f} s, compile in the first)')


def baselines(table, acc_by_code) -> dict:
  """The simple rules a searcher must beat, under the same constraints and costs:
  `max_macs` and `max_params` (the feasible arch with the most MACs / parameters, ties broken by
  the other, then by code), `random` (the mean true accuracy of a uniformly drawn feasible arch,
  i.e. random search with one sample, in expectation) and `oracle` (the best feasible true
  accuracy). Each: test_acc and gap to the oracle; the rules also give their arch and costs."""
  feasible = np.flatnonzero(table.feasible)
  acc = np.asarray(acc_by_code, np.float64)
  best = float(acc[feasible].max())
  out = {}
  for name, first, second in (('max_macs', 'macs', 'params'), ('max_params', 'params', 'macs')):
    order = np.lexsort((feasible, -table.costs[second][feasible], -table.costs[first][feasible]))
    code = int(feasible[order[0]])
    out[name] = dict(arch_str=nb201.format_arch_str(table.ops[code]), test_acc=float(acc[code]),
                     gap=best - float(acc[code]),
                     **{k: float(table.costs[k][code]) for k in ('latency_ms', 'macs', 'params')})
  mean = float(acc[feasible].mean())
  out['random'] = dict(test_acc=mean, gap=best - mean)
  out['oracle'] = dict(test_acc=best, gap=0.0)
  return out


def _write_results(workdir, records, f, constraints, table, base=None):
  meta = dict(searcher=f.searcher, dataset=f.dataset, device=constraints.device,
              runtime=constraints.runtime, limits=table.limits, proxies=f.proxies,
              data_dir=f.data_dir, stand_in_inputs=None if f.data_dir else f.stand_in_inputs,
              baselines=base, machine=platform.processor() or platform.machine())
  common.write_text_atomic(workdir / 'results.json',
                json.dumps(dict(meta=meta, results=records), indent=1, default=float))
  rows = [[common.format_number(r[c], digits=6) for c in CSV_COLUMNS] for r in records]
  common.write_csv_atomic(workdir / 'results.csv', CSV_COLUMNS, rows)


def _pareto_plot(path, table, bench, acc, records, constraints):
  """Predicted latency vs true accuracy: every arch, the oracle front, the found archs."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lat = table.costs['latency_ms']
  true = acc[bench.ops_to_index(table.ops)]
  order = np.argsort(lat, kind='stable')
  front = order[true[order] >= np.maximum.accumulate(true[order])]  # best acc at <= latency
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.scatter(lat[~table.feasible], true[~table.feasible], s=2, c='0.85', label='infeasible')
  ax.scatter(lat[table.feasible], true[table.feasible], s=2, c='0.6', label='feasible')
  ax.step(lat[front], true[front], where='post', c='k', lw=1, label='oracle front')
  found = np.array([[r['latency_ms'], r['test_acc']] for r in records])
  ax.scatter(found[:, 0], found[:, 1], s=30, c='tab:red', marker='*',
             label=f'found ({records[0]["searcher"]}, {len(records)} seeds)')
  if 'latency_ms' in table.limits:
    ax.axvline(table.limits['latency_ms'], c='tab:blue', ls='--', lw=1, label='latency budget')
  ax.set_xlabel(f'predicted latency on {constraints.device}/{constraints.runtime} (ms)')
  ax.set_ylabel('NB201 test accuracy (%)')
  ax.set_ylim(max(true.min(), 80), true.max() + 0.5)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  common.write_atomic(path, lambda fh: fig.savefig(fh, format='png', dpi=120))
  plt.close(fig)

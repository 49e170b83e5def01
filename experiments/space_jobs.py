"""`score`, `correlate` and `search` on the plug-in search spaces (`search_spaces.space`), e.g.

  python -m experiments.run --experiment=search --search_space=tinycnn
  python -m experiments.run --experiment=correlate --search_space=tinycnn --workdir=tiny_corr

NB201 keeps its own fast path (experiments/score.py, correlate.py, search.py); these jobs use only
the space's interface, so a new space needs no code here.

search: the seed's objective, accuracy proxy / (peak SRAM x average power), 0 when SRAM, flash
or power exceed their limits or an inference does not fit its period (`engine.seed_objective`:
power from the cost model's energy and latency at one inference per second). The accuracy
proxy is the candidate's percentile rank (0, 1] under --proxies among the candidates scored.
Searchers: `random` (the seed's: --random_samples archs drawn, all scored in compiled batches),
`exhaustive` (every arch of a finite space) and `evolution` (regularized evolution with the
space's `mutate`: --population, --tournament, --evolution_samples archs scored in all,
--batch_candidates children per compiled call).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import time

import numpy as np
from scipy import stats
from tqdm import tqdm

import hardware
from engine import aggregate as agg_lib
from engine import data as data_lib
from engine import proxies as proxies_lib
from engine import seed_objective as seed_objective_lib
from engine import space_proxies
from engine import space_scoring
from experiments import common
from search_spaces import space as space_lib

GROUND_TRUTH = pathlib.Path(__file__).resolve().parents[1] / 'search_spaces' / 'ground_truth'
SEARCHERS = ('random', 'exhaustive', 'evolution')
RATE_HZ = 1.0
MIN_GROUP_SAMPLES = 8


def _settings(config) -> space_scoring.SpaceScoreSettings:
  return space_scoring.SpaceScoreSettings(
      zc_batch=config.zc_batch, ntk_batch=config.ntk_batch,
      batch_candidates=config.batch_candidates, candidate_chunk=max(1, config.candidate_chunk))


def _images(config):
  return data_lib.load_cifar(config.data_dir, 'cifar10', 'train') if config.data_dir else None


def _add_aggregates(values, flags, aggregates):
  """Adds each aggregate's column to `values` and `flags` (1 where a component was flagged),
  computed over the archs of the columns."""
  for a in aggregates:
    values[a.name], flagged = agg_lib.compute(a, values, flags)
    flags[a.name] = np.array([1 if f else 0 for f in flagged], np.int32)


def score_columns(space, archs, names, config, progress=True, cache_dir=None, chunk=64):
  """({column: values}, {column: flags}, timing) with aggregates computed over `archs`.

  With `cache_dir`, proxy values are kept per arch in chunk files (written atomically, named by
  the settings that produced them): a rerun, or a run over more archs, scores only the archs
  no chunk holds yet, so a killed sweep resumes without losing or duplicating work."""
  plain, aggregates = agg_lib.split(names)
  unknown = [n for n in plain if n not in space_proxies.PROXIES]
  if unknown:
    raise proxies_lib.ProxyError(f'proxy {unknown[0]!r} has no implementation for search space '
                                 f'{space.name}; choose from {", ".join(space_proxies.PROXIES)}')
  codes = [space.encode(a) for a in archs]
  cached: dict = {}
  if cache_dir is not None:
    settings = json.dumps([space.name, sorted(plain), config.seed, config.zc_batch,
                           config.ntk_batch, str(config.data_dir)])
    cache_dir = pathlib.Path(cache_dir) / hashlib.sha256(settings.encode()).hexdigest()[:12]
    cache_dir.mkdir(parents=True, exist_ok=True)
    common.write_text_atomic(cache_dir / 'settings.json', settings)
    for path in sorted(cache_dir.glob('*.npz')):
      with np.load(path) as z:
        for i, c in enumerate(z['codes']):
          cached[str(c)] = {n: (z[n][i], z[n + '_flag'][i]) for n in plain}
  todo = [(a, c) for a, c in zip(archs, codes) if c not in cached]
  timing = space_scoring.Timing()
  bar = tqdm(total=len(todo), unit='arch') if progress and todo else None
  step = chunk if cache_dir is not None else max(1, len(todo))
  images = _images(config) if todo else None  # read once, not per chunk
  for start in range(0, len(todo), step):
    part = [a for a, _ in todo[start:start + step]]
    part_codes = [c for _, c in todo[start:start + step]]
    values, flags, t = space_scoring.score(space, part, plain, config.seed, images,
                                           _settings(config))
    timing.compile_s += t.compile_s
    timing.run_s += t.run_s
    for i, c in enumerate(part_codes):
      cached[c] = {n: (values[n][i], flags[n][i]) for n in plain}
    if cache_dir is not None:
      name = hashlib.sha256('\n'.join(part_codes).encode()).hexdigest()[:16]
      arrays = {'codes': np.array(part_codes)}
      for n in plain:
        arrays[n], arrays[n + '_flag'] = values[n], flags[n]
      common.write_atomic(cache_dir / f'{name}.npz', lambda fh: np.savez(fh, **arrays),
                          suffix='.npz')
    if bar:
      bar.update(len(part))
  if bar:
    bar.close()
  values = {n: np.array([cached[c][n][0] for c in codes], float) for n in plain}
  flags = {n: np.array([cached[c][n][1] for c in codes], np.int32) for n in plain}
  _add_aggregates(values, flags, aggregates)
  return values, flags, timing


def _write_csv(path, header, rows):
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(header)
  w.writerows(rows)
  common.write_text_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- score

def score(config, workdir=None):
  space = space_lib.get(config.search_space)
  archs = space.parse(config.archs)
  values, flags, timing = score_columns(space, archs, config.proxies, config, config.progress)
  cols = list(values)
  rows = [[space.encode(a)] + [f'{values[c][i]:.6g}' for c in cols] +
          [int(flags[c][i]) for c in cols] for i, a in enumerate(archs)]
  _write_csv(config.output, ['arch'] + cols + [f'{c}_flag' for c in cols], rows)
  print(f'scored {len(archs)} {space.name} archs: compile {timing.compile_s:.1f} s, run '
        f'{timing.run_s:.1f} s = {timing.run_s / max(1, len(archs)):.3f} s/arch -> '
        f'{config.output}')


# ----------------------------------------------------------------------------- ground truth

def load_ground_truth(space, path=None) -> dict:
  """{arch string: [accuracies by seed]} of a space's trained table."""
  path = pathlib.Path(path) if path else GROUND_TRUTH / f'{space.name}.csv'
  if not path.is_file():
    raise FileNotFoundError(f'no trained ground truth for {space.name} at {path}; make one with '
                            f'python -m experiments.ground_truth --search_space={space.name} or '
                            f'pass --benchmark_file')
  table: dict = {}
  with path.open() as fh:
    for row in csv.DictReader(fh):
      acc = float(row['test_acc'])
      if np.isfinite(acc):
        table.setdefault(row['arch'], {})[int(row['seed'])] = acc
  return table


def noise_summary(table: dict) -> dict:
  """Seed-to-seed noise of a ground truth: per-arch std (pp) and seed-vs-seed Spearman."""
  multi = {a: s for a, s in table.items() if len(s) > 1}
  if not multi:
    return {'archs': 0}
  seeds = sorted(set.intersection(*(set(s) for s in multi.values())))
  stds = [np.std(list(s.values()), ddof=1) for s in multi.values()]
  rhos = [stats.spearmanr([multi[a][s1] for a in multi], [multi[a][s2] for a in multi])[0]
          for i, s1 in enumerate(seeds) for s2 in seeds[i + 1:]]
  return {'archs': len(multi), 'seeds': len(seeds), 'mean_std_pp': float(np.mean(stds)),
          'max_std_pp': float(np.max(stds)),
          'seed_vs_seed_spearman': float(np.mean(rhos)) if rhos else float('nan')}


# ----------------------------------------------------------------------------- correlate

def correlate(config, workdir):
  if config.partial:
    raise common.UsageError(f'--partial tabulates NB201 sweeps only; drop it for '
                            f'--search_space={config.search_space} (its sweep resumes by '
                            f'rerunning the same command)')
  space = space_lib.get(config.search_space)
  table = load_ground_truth(space, config.benchmark_file)
  archs = [space.decode(a) for a in sorted(table)]
  acc = np.array([table[space.encode(a)][min(table[space.encode(a)])] for a in archs])
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  values, flags, timing = score_columns(space, archs, config.proxies, config, config.progress,
                                       cache_dir=workdir / 'chunks', chunk=config.chunk_size)
  results = {}
  for name, v in values.items():
    ok = np.isfinite(v) & (flags[name] == 0)
    base = name.split(':')[0] if not agg_lib.is_aggregate(name) else None
    sign = 1.0 if (base is None or proxies_lib.REGISTRY[base].higher_is_better) else -1.0
    if ok.sum() >= 3:
      rho = stats.spearmanr(sign * v[ok], acc[ok])[0]
      tau = stats.kendalltau(sign * v[ok], acc[ok])[0]
    else:
      rho = tau = float('nan')
    results[name] = {'archs': int(ok.sum()), 'flagged': int((~ok).sum()),
                     'spearman': float(rho), 'kendall': float(tau)}
  noise = noise_summary(table)
  gaps = search_gaps(space, archs, acc, values, flags)
  for name, g in gaps['proxies'].items():
    results[name]['search_gap_pp'] = g
  report = {'space': space.name, 'archs': len(archs), 'proxies': results, 'noise': noise,
            'search': {k: v for k, v in gaps.items() if k != 'proxies'},
            'compile_s': timing.compile_s, 'run_s': timing.run_s, 'seed': config.seed,
            'inputs': 'cifar10 train' if config.data_dir else 'Gaussian noise'}
  common.write_text_atomic(workdir / 'correlation.json', json.dumps(report, indent=1))
  lines = ['| proxy | archs (flagged) | Spearman | Kendall | search gap (pp) |',
           '|---|---|---|---|---|']
  lines += [f'| `{n}` | {r["archs"]} ({r["flagged"]}) | {r["spearman"]:.3f} | {r["kendall"]:.3f} '
            f'| {r["search_gap_pp"]:.2f} |' for n, r in results.items()]
  lines += [f'| random feasible pick | | | | {gaps["random_pick_gap_pp"]:.2f} |']
  common.write_text_atomic(workdir / 'correlation.md', '\n'.join(lines) + '\n')
  cols = list(values)
  _write_csv(workdir / 'scores.csv', ['arch', 'test_acc'] + cols + [f'{c}_flag' for c in cols],
             [[space.encode(a), acc[i]] + [f'{values[c][i]:.6g}' for c in cols]
              + [int(flags[c][i]) for c in cols] for i, a in enumerate(archs)])
  _scatter(workdir / 'scatter.png', space.name, acc, values, flags, results)
  print(f'{space.name}: {len(archs)} trained archs, compile {timing.compile_s:.1f} s, run '
        f'{timing.run_s:.1f} s')
  print('\n'.join(lines))
  if noise.get('archs'):
    print(f'ground-truth noise: {noise["archs"]} archs x {noise["seeds"]} seeds, mean std '
          f'{noise["mean_std_pp"]:.2f} pp, seed-vs-seed Spearman {noise["seed_vs_seed_spearman"]:.3f}')
  return report


def _scatter(path, space_name, acc, values, flags, results) -> bool:
  """Each proxy against trained accuracy, one panel per proxy (ranks, flagged archs left out)."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  names = list(values)
  cols = 4
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    ok = np.isfinite(values[name]) & (flags[name] == 0)
    if ok.sum() >= 3:
      ax.scatter(stats.rankdata(values[name][ok]), acc[ok], s=4, alpha=0.6)
    ax.set_title(f'{name[:34]}\nrho {results[name]["spearman"]:.2f}', fontsize=8)
    ax.tick_params(labelsize=6)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  fig.suptitle(f'{space_name}: proxy rank vs trained test accuracy (%)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------- search

GAP_SEEDS, GAP_SAMPLES = 10, 100


def search_gaps(space, archs, acc, values, flags, device='stm32f746', runtime='cmsis-nn',
                seeds=GAP_SEEDS, samples=GAP_SAMPLES) -> dict:
  """The seed's random search on the trained archs, scored by each proxy column: per seed,
  `samples` archs drawn; the search keeps the feasible ones and picks the best seed objective
  with the proxy's percentile (among them) as the accuracy term. Its gap: the trained accuracy
  of the arch the same objective picks with the *trained* accuracy, minus the trained accuracy
  of the searched pick (points; mean over seeds). `random_pick_gap_pp`: the same gap for a
  uniformly random feasible pick (the baseline a proxy must beat)."""
  rows = hardware.cost_rows({space.encode(a): space.lower(a) for a in archs}, device, runtime)
  _, feasible = seed_objective(rows, np.ones(len(archs)), device)
  true_obj, _ = seed_objective(rows, acc / 100.0, device)
  gaps = {n: [] for n in values}
  random_gaps = []
  for seed in range(seeds):
    rng = np.random.default_rng([seed, 0x6a9])
    pool = rng.choice(len(archs), min(samples, len(archs)), replace=False)
    pool = pool[feasible[pool]]
    if not len(pool):
      continue
    best_acc = acc[pool[np.argmax(true_obj[pool])]]
    random_gaps.append(best_acc - np.mean(acc[pool]))
    sub = [rows[i] for i in pool]
    for n in values:
      base = None if agg_lib.is_aggregate(n) else n
      higher = True if base is None else proxies_lib.REGISTRY[base].higher_is_better
      proxy = percentile(values[n][pool], flags[n][pool], higher)
      obj, _ = seed_objective(sub, proxy, device)
      gaps[n].append(best_acc - acc[pool[np.argmax(obj)]])
  return {'device': device, 'runtime': runtime, 'seeds': seeds, 'samples': samples,
          'feasible': int(feasible.sum()),
          'random_pick_gap_pp': float(np.mean(random_gaps)) if random_gaps else float('nan'),
          'proxies': {n: float(np.mean(g)) if g else float('nan') for n, g in gaps.items()}}


def seed_objective(cost_rows, accuracy_proxy, device, rate_hz=RATE_HZ):
  """(objective, feasible) of the seed (`engine.seed_objective`) at --rate."""
  return seed_objective_lib.score_and_feasible(cost_rows, accuracy_proxy, device, rate_hz)


def percentile(values, flags, higher_is_better=True):
  valid = agg_lib.valid_mask(values, flags)
  return agg_lib.oriented_ranks(values, higher_is_better, valid) / len(values)


def choose_group(space, archs, rows, feasible):
  """TinyNAS's space optimisation (MCUNet, Lin et al. 2020) for spaces with several groups
  (width x resolution): the group whose feasible sampled archs have the highest mean MACs (more
  computation that still fits tends to mean more accuracy). One group is then scored: one
  compile instead of one per group."""
  macs: dict = {}
  for a, r, ok in zip(archs, rows, feasible):
    if ok:
      macs.setdefault(space.group(a), []).append(r['macs'])
  # a group with a handful of feasible samples leaves the proxy nothing to choose from
  enough = {g: m for g, m in macs.items() if len(m) >= MIN_GROUP_SAMPLES} or macs
  return max(enough, key=lambda g: np.mean(enough[g]))


def _pool_objective(space, codes, scored, plain, aggregates, column, higher, device):
  """Seed objective of every scored arch, the proxy's percentile taken over all of them."""
  values = {n: np.array([scored[c][2][n] for c in codes]) for n in plain}
  flags = {n: np.array([scored[c][3][n] for c in codes]) for n in plain}
  _add_aggregates(values, flags, aggregates)
  proxy = percentile(values[column], flags[column], higher)
  objective, _ = seed_objective([scored[c][1] for c in codes], proxy, device)
  return objective, proxy


def _evolution(space, config, seed, plain, aggregates, column, higher, archs, rows, keep):
  """Regularized evolution (Real et al. 2019) from the feasible sampled archs `keep`: each
  round, --batch_candidates tournaments of --tournament pick parents, their mutants that fit
  are scored in one compiled call and join the population, the oldest leave."""
  if space.mutate is None:
    raise ValueError(f'{space.name} defines no mutate(); use --searcher=random')
  rng = np.random.default_rng([seed, 0xe70])
  images, settings = _images(config), _settings(config)
  scored = {}  # code -> (arch, cost row, values, flags)
  timing = space_scoring.Timing()

  def add(batch, batch_rows):
    values, flags, t = space_scoring.score(space, batch, plain, config.seed, images, settings)
    timing.compile_s += t.compile_s
    timing.run_s += t.run_s
    for i, (a, r) in enumerate(zip(batch, batch_rows)):
      scored[space.encode(a)] = (a, r, {n: values[n][i] for n in plain},
                                 {n: int(flags[n][i]) for n in plain})

  population = [archs[i] for i in keep[:config.population]]
  add(population, [rows[i] for i in keep[:config.population]])
  population = [space.encode(a) for a in population]
  group = space.group(scored[population[0]][0])
  while len(scored) < config.evolution_samples:
    codes = list(scored)
    objective, _ = _pool_objective(space, codes, scored, plain, aggregates, column, higher,
                                   config.device)
    rank = {c: objective[i] for i, c in enumerate(codes)}
    children, child_rows = [], []
    for _ in range(config.batch_candidates):
      contenders = rng.choice(len(population), min(config.tournament, len(population)),
                              replace=False)
      parent = max((population[i] for i in contenders), key=rank.get)
      for _ in range(20):  # a new neighbour in the group that fits
        child = space.mutate(scored[parent][0], rng)
        code = space.encode(child)
        if code in scored or space.group(child) != group or any(
            space.encode(c) == code for c in children):
          continue
        row = hardware.cost_rows({code: space.lower(child)}, config.device, config.runtime)[0]
        if seed_objective([row], [1.0], config.device)[1][0]:
          children.append(child)
          child_rows.append(row)
          break
    if not children:
      break  # the neighbourhood is exhausted
    add(children, child_rows)
    population = (population + [space.encode(c) for c in children])[-config.population:]
  codes = list(scored)
  objective, proxy = _pool_objective(space, codes, scored, plain, aggregates, column, higher,
                                     config.device)
  return codes, objective, proxy, [scored[c][1] for c in codes], timing


def search(config, workdir):
  space = space_lib.get(config.search_space)
  if config.searcher not in SEARCHERS:
    raise ValueError(f'--searcher={config.searcher} is not available for {space.name}; choose '
                     f'{" or ".join(SEARCHERS)}')
  seeds = [config.seed]
  if config.seeds:
    from experiments.search import parse_seeds
    seeds = parse_seeds(config.seeds, config.seed)
  names = config.proxies
  plain, aggregates = agg_lib.split(names)
  column = aggregates[0].name if aggregates else plain[0]
  higher = True if aggregates else proxies_lib.REGISTRY[column].higher_is_better
  try:
    table = load_ground_truth(space)
  except FileNotFoundError:
    table = {}
  workdir = pathlib.Path(workdir)
  results = []
  for seed in seeds:
    start = time.perf_counter()
    if config.searcher == 'exhaustive':
      archs = space.parse('all')
    else:
      archs = space.sample(np.random.default_rng([seed, 0x5eed]), config.random_samples)
    # hard limits first: only archs that fit are scored
    rows = hardware.cost_rows({space.encode(a): space.lower(a) for a in archs}, config.device,
                              config.runtime)
    _, feasible = seed_objective(rows, np.ones(len(archs)), config.device)
    if not feasible.any():
      raise ValueError(f'no {space.name} arch of the {len(archs)} sampled fits {config.device} '
                       f'({config.runtime}); sample more (--random_samples) or pick a larger '
                       f'device (--list_devices)')
    keep = np.flatnonzero(feasible)
    chosen_group = None
    if len({space.group(archs[i]) for i in keep}) > 1:
      chosen_group = choose_group(space, archs, rows, feasible)
      keep = np.array([i for i in keep if space.group(archs[i]) == chosen_group])
    if config.searcher == 'evolution':
      rng_keep = np.random.default_rng([seed, 0xe71]).permutation(keep)
      pool, objective, proxy, pool_rows, timing = _evolution(
          space, config, seed, plain, aggregates, column, higher, archs, rows, rng_keep)
    else:
      pool = [archs[i] for i in keep]
      values, flags, timing = score_columns(space, pool, names, config, config.progress)
      proxy = percentile(values[column], flags[column], higher)
      pool_rows = [rows[i] for i in keep]
      objective, _ = seed_objective(pool_rows, proxy, config.device)
      pool = [space.encode(a) for a in pool]
    best = int(np.argmax(objective))
    row = pool_rows[best]
    arch = pool[best]
    trained = table.get(arch, {}).get(0)
    results.append({'seed': seed, 'searcher': config.searcher, 'arch': arch,
                    'objective': float(objective[best]), 'proxy_percentile': float(proxy[best]),
                    'sram_bytes': row['sram_bytes'], 'flash_bytes': row['flash_bytes'],
                    'latency_ms': row['latency_ms'], 'energy_mj': row['energy_mj'],
                    'macs': row['macs'], 'trained_acc': trained, 'sampled': len(archs),
                    'feasible': int(feasible.sum()), 'scored': len(pool),
                    'group': None if chosen_group is None else list(chosen_group),
                    'device': config.device, 'runtime': config.runtime,
                    'compile_s': timing.compile_s, 'search_s': time.perf_counter() - start})
    print(f'seed {seed}: {arch} objective {objective[best]:.4g}, SRAM '
          f'{row["sram_bytes"] / 1024:.1f} KB, flash {row["flash_bytes"] / 1024:.0f} KB, '
          f'{row["latency_ms"]:.2f} ms on {config.device} ({len(pool)} of {len(archs)} sampled '
          f'scored, {time.perf_counter() - start:.0f} s)'
          + (f', trained acc {trained:.2f}%' if trained is not None else ''))
  workdir.mkdir(parents=True, exist_ok=True)
  common.write_text_atomic(workdir / 'results.json', json.dumps(results, indent=1))
  return results


def run(experiment: str, config, workdir):
  if experiment == 'score':
    return score(config)
  if experiment == 'correlate':
    return correlate(config, workdir)
  if experiment == 'search':
    return search(config, workdir)
  raise ValueError(f'--experiment={experiment} does not support --search_space='
                   f'{config.search_space}')

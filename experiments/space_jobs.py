"""`correlate` on the plug-in search spaces (`search_spaces.interface`), e.g.

  python -m experiments.run --experiment=correlate --search_space=tinycnn --workdir=tiny_corr

NB201 keeps its own sweep (experiments/correlate.py); this job uses only the
space's interface, so a new space needs no code here. Search runs on every space through one
path (experiments/search.py, engine/search/), and so does score (experiments/score.py).

correlate also reports each proxy's search gap: the seed's random search on the trained archs
under the seed objective (`engine.search.objective.seed`), the proxy's percentile rank as the
accuracy term.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib

import numpy as np
from scipy import stats
from tqdm import tqdm

from engine import aggregate as agg_lib
from engine import data as data_lib
from engine import ground_truth as gt_lib
from engine import proxies as proxies_lib
from engine import search as search_lib
from engine.search import objective as obj
from engine.search.problem import Term
from engine import space_proxies
from engine import space_scoring
from experiments import common
from search_spaces import interface as space_lib
from search_spaces import registry



def _settings(config) -> space_scoring.SpaceScoreSettings:
  return space_scoring.SpaceScoreSettings(
      zc_batch=config.zc_batch, ntk_batch=config.ntk_batch,
      batch_candidates=config.batch_candidates, candidate_chunk=max(1, config.candidate_chunk))


def _images(config):
  """CIFAR-10 training images, or without --data_dir the --stand_in_inputs."""
  return common.load_images(config.data_dir, 'cifar10', config.stand_in_inputs)


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


# ----------------------------------------------------------------------------- correlate

def correlate(config, workdir):
  space = registry.get(config.search_space)
  table = gt_lib.load_ground_truth(space, config.benchmark_file)
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
  noise = gt_lib.noise_summary(table)
  gaps = search_gaps(space, archs, acc, values, flags)
  for name, g in gaps['proxies'].items():
    results[name]['search_gap_pp'] = g
  report = {'space': space.name, 'archs': len(archs), 'proxies': results, 'noise': noise,
            'search': {k: v for k, v in gaps.items() if k != 'proxies'},
            'compile_s': timing.compile_s, 'run_s': timing.run_s, 'seed': config.seed,
            'inputs': 'cifar10 train' if config.data_dir else
                      f'{config.stand_in_inputs} (--stand_in_inputs, no --data_dir)'}
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
  costs = search_lib.space_costs(space, (), archs, space.input_shape, space.num_classes, device,
                                 runtime)
  feasible = obj.within_limits(costs, obj.Constraints(device, runtime).limits())
  seed_objective = lambda pool, proxy: obj.seed(
      {'p': proxy}, [Term('p', True)], {k: v[pool] for k, v in costs.items()},
      feasible[pool], obj.Weights(), device)
  true_obj = seed_objective(np.arange(len(archs)), acc / 100.0)
  feasible &= np.isfinite(true_obj)
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
    for n in values:
      base = None if agg_lib.is_aggregate(n) else n
      higher = True if base is None else proxies_lib.REGISTRY[base].higher_is_better
      proxy = percentile(values[n][pool], flags[n][pool], higher)
      gaps[n].append(best_acc - acc[pool[np.argmax(seed_objective(pool, proxy))]])
  return {'device': device, 'runtime': runtime, 'seeds': seeds, 'samples': samples,
          'feasible': int(feasible.sum()),
          'random_pick_gap_pp': float(np.mean(random_gaps)) if random_gaps else float('nan'),
          'proxies': {n: float(np.mean(g)) if g else float('nan') for n, g in gaps.items()}}


def percentile(values, flags, higher_is_better=True):
  valid = agg_lib.valid_mask(values, flags)
  return agg_lib.oriented_ranks(values, higher_is_better, valid) / len(values)

"""`--experiment=correlate`: how well proxies and aggregates rank a space's archs, resumably.

  python -m experiments.run --experiment=correlate --dataset=cifar10 --archs=random:1000 \
      --proxies=nwot,synflow,tenas,agg:nwot+synflow+flops:logrank \
      --data_dir=../shared/data/cifar10 --workdir=corr_out \
      [--reference_file=../shared/data/nb201/nb201_zc_proxies_subset_naslib.csv]

Any registered space (`--search_space`): NB201 against its benchmark table for --dataset (its
archs chosen by --archs), a plug-in space against its trained ground truth
(search_spaces/ground_truth/, or --benchmark_file; --archs picks among the trained archs: all,
random:N or a list). Scores the archs with the space's scorer (the one the searchers use) in
chunks of --chunk_size archs in WORKDIR/chunks/, resumable after a crash or a kill against
WORKDIR/manifest.json (docs/correlation.md, "Resume contract"). Chunking cannot change a score:
a chunk is always cut the same way, so every arch is scored in the same batch position with the
same batch-mates whichever process scores it.

Then, over the whole pool: aggregates (`engine.proxies.aggregate`), `scores.csv` and `scores.parquet`,
`correlation.md` / `.json` (Spearman, Kendall, Pearson and top-5%/10% precision against the
dataset's NB201 test accuracy), `scatter.png` and `ranks.png`, and with --reference_file
`agreement.md` / `.json` (Spearman between our values and NASLib's per proxy). Against a trained
ground truth with several seeds per arch it also reports the seed-to-seed noise, and each
column's search gap: the seed's random search (`engine.search.objective.seed`) on the trained
archs with the column as its accuracy term, against the same search with the trained accuracy.
With --partial,
nothing is scored: the same outputs over the chunks finished so far go to WORKDIR/partial/. See
docs/correlation.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import warnings
import zipfile
from typing import Callable

import numpy as np
from scipy import stats

from engine.proxies import aggregate
from engine.train import data as data_lib
from engine.train import ground_truth as gt_lib
from engine.proxies import ntk as ntk_lib
from engine import proxies as proxies_lib
from engine import search as search_lib
from engine import sweep as sweep_lib
from experiments import common
from experiments import score as score_lib
from search_spaces import interface as space_lib
from search_spaces import nb201, registry

# Our proxy name -> NASLib's column in nb201_zc_proxies_subset_naslib.csv.
REFERENCE_NAMES = {'jacob_cov': 'jacov', 'nwot': 'nwot', 'synflow': 'synflow', 'snip': 'snip',
                   'grad_norm': 'grad_norm', 'fisher': 'fisher', 'grasp': 'grasp',
                   'params': 'params', 'flops': 'flops'}
TOP_FRACTIONS = (0.05, 0.10)
# 2: one scorer for every space (per-candidate keys from the arch row's content; lr_segments)
MANIFEST_VERSION = 2
# Test hook (engine.sweep): end the process (as a crash would) after it wrote this many chunks.
CRASH_ENV = sweep_lib.CRASH_ENV
SimulatedCrash = sweep_lib.SimulatedCrash


class ResumeError(ValueError):
  """The workdir holds another run; the message names the fix."""


@dataclasses.dataclass
class Column:
  """One proxy or aggregate over the pool, oriented so that higher predicts better."""
  name: str
  kind: str               # 'proxy' or 'aggregate'
  values: np.ndarray      # as computed (not oriented), float64
  oriented: np.ndarray    # values * +-1
  valid: np.ndarray       # used in the statistics
  flag_text: list         # per arch: '' or why it is flagged
  flagged: int            # archs flagged (proxy: excluded; aggregate: a component put last)


@dataclasses.dataclass
class Truth:
  """The archs a correlate run scores and what they are compared with."""
  archs: list
  acc: np.ndarray              # test accuracy (%) per arch
  acc_name: str                # its column in scores.csv
  source: str                  # for the report
  indices: np.ndarray | None = None  # NB201 benchmark indices (benchmark spaces)
  reference: dict | None = None      # NASLib reference values (--reference_file)
  trained: dict | None = None        # {arch string: {seed: acc}} of a trained ground truth


def ground_truth(space, f) -> Truth:
  """The benchmark table for --dataset (spaces defined per dataset: NB201) or the space's
  trained ground truth; --archs picks the archs among those with an accuracy."""
  if space.datasets is not None:
    table = common.arch_index_table(f.benchmark_file, required=True)
    reference = load_reference(f.reference_file, f.dataset) if f.reference_file else None
    if f.archs.strip().startswith('reference'):
      ops = table.index_to_ops[reference_archs(f.archs, reference, f.seed)]
    else:
      ops = common.select_archs(f.archs, f.seed, f.benchmark_file)
    indices = table.ops_to_index(ops)
    return Truth(space.relax.from_rows((), ops),
                 table.columns[common.ACC_COLUMN[f.dataset]][indices],
                 common.ACC_COLUMN[f.dataset],
                 f'`{common.ACC_COLUMN[f.dataset]}` (200-epoch test accuracy)', indices,
                 reference)
  trained = gt_lib.load_ground_truth(space, f.benchmark_file)
  codes = sorted(trained)
  spec = f.archs.strip()
  count = space_lib.random_count(spec)
  if count is not None:
    if count > len(codes):
      print(f'note: --archs={spec} asks for more archs than the ground truth holds; using all '
            f'{len(codes)}')
    pick = np.random.default_rng(f.seed).choice(len(codes), min(count, len(codes)),
                                                replace=False)
    codes = [codes[i] for i in sorted(pick)]
  elif spec != 'all':
    wanted = [space.encode(a) for a in space.parse(spec)]
    missing = [c for c in wanted if c not in trained]
    if missing:
      raise ValueError(f'{missing[0]} has no trained accuracy in the ground truth; pick archs '
                       f'it holds (--archs=all or random:N)')
    codes = wanted
  first = lambda runs: runs[min(runs)]
  return Truth([space.decode(c) for c in codes], np.array([first(trained[c]) for c in codes]),
               'test_acc', f'trained test accuracy (the lowest seed of each arch, '
               f'{f.benchmark_file or "search_spaces/ground_truth/" + space.name + ".csv"})',
               trained=trained)


def run(f, workdir='correlate_out'):
  space = registry.get(f.search_space)
  proxy_names, aggregates = aggregate.split(f.proxies)
  if f.chunk_size < 1:
    raise ValueError(f'--chunk_size must be at least 1, got {f.chunk_size}')
  if f.partial and f.num_processes > 1:
    raise ValueError('--partial tabulates in one process; drop --num_processes')
  # before anything touches a JAX backend: jax.distributed must start first
  share = sweep_lib.connect(f.coordinator_address, f.num_processes, f.process_id)
  truth = ground_truth(space, f)
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  scorer = search_lib.make_scorer(space, proxy_names, f, f.seed, images)
  runs, expand = per_network(space, scorer, truth.archs)
  ops = space.to_array(runs)  # the arch rows chunks are keyed by: one per network
  workdir = pathlib.Path(workdir)
  common.enable_compile_cache()  # a resumed run reuses the interrupted one's compiled program
  import jax
  devices = jax.local_devices()
  config = run_config(proxy_names, scorer.settings, f, images, ops, len(devices),
                      devices[0].platform)
  check_shared_manifest(workdir, config, share, create=not f.partial)
  print(f'inputs: {input_source(images)}')
  print(f'correlate: {len(truth.archs)} {space.name} archs'
        + (f' = {len(runs)} networks (archs that differ only in ops that carry nothing to the '
           f'output score alike: one of each runs)' if len(runs) < len(truth.archs) else '')
        + f', proxies {", ".join(proxy_names)}'
        + (f', aggregates {", ".join(a.name for a in aggregates)}' if aggregates else '')
        + f'; chunks of {f.chunk_size} in {workdir / "chunks"}')

  def score_chunk(start, stop, progress):
    return score_lib.score_by_group(space, scorer, runs[start:stop], f.batch_candidates,
                                    progress)

  setting = describe_setting(f, space, truth, scorer, proxy_names, images, len(truth.archs))
  if len(runs) < len(truth.archs):
    setting.append(f'{len(runs)} networks scored: archs that differ only in ops that carry '
                   f'nothing to the output share their network proxies\' values (params and '
                   f'flops are each arch\'s own)')
  archs, acc, indices = truth.archs, truth.acc, truth.indices
  if f.partial:
    done, scores = expand(*finished_scores(ops, f.chunk_size, workdir / 'chunks')[::-1])
    setting.append(f'**partial**: the {int(done.sum())} of {len(done)} archs whose chunks '
                   f'were finished when it was tabulated (`--partial`); not the final table')
    print(f'partial: {int(done.sum())} of {len(done)} archs scored so far; nothing is scored')
    archs, acc = [a for a, d in zip(archs, done) if d], acc[done]
    indices = indices[done] if indices is not None else None
    workdir = workdir / 'partial'
    workdir.mkdir(exist_ok=True)
  else:
    scores = sweep(ops, f.chunk_size, workdir / 'chunks', score_chunk, scorer, f.progress,
                   share)
    if not share.writes_outputs:
      print(f'{share}: every chunk is on disk; process 0 writes the outputs to {workdir}')
      return
    scores = expand(scores)[1]
  columns = build_columns(scores, proxy_names, aggregates, scorer.higher_is_better)
  write_scores(workdir, [space.encode(a) for a in archs], indices, columns, truth.acc_name, acc)
  rows = [correlation_row(c, acc) for c in columns]
  extra = {}
  if truth.trained is not None:
    extra['noise'] = gt_lib.noise_summary(truth.trained)
    extra['search'] = search_gaps(space, archs, acc, columns)
    for r in rows:
      r['search_gap_pp'] = extra['search']['columns'][r['name']]
  title = f'{space.name} {f.dataset}' if space.datasets is not None else space.name
  write_correlation(workdir, rows, setting, title, len(archs), extra)
  plotted = write_plots(workdir, columns, acc, title)
  if truth.reference is not None:
    write_agreement(workdir, agreement_rows(columns, indices, truth.reference), f.dataset,
                    f.reference_file)
  for r in rows:
    print(f'{r["name"]}: Spearman {_num(r["spearman"])}, Kendall {_num(r["kendall"])} '
          f'({r["used"]} archs, {r["flagged"]} flagged)'
          + (f', search gap {_num(r["search_gap_pp"])} pp' if 'search_gap_pp' in r else ''))
  if extra:
    noise = extra['noise']
    print(f'random feasible pick: search gap {_num(extra["search"]["random_pick_gap_pp"])} pp'
          + (f'; ground-truth noise: {noise["archs"]} archs x {noise["seeds"]} seeds, mean std '
             f'{noise["mean_std_pp"]:.2f} pp, seed-vs-seed Spearman '
             f'{noise["seed_vs_seed_spearman"]:.3f}' if noise.get('archs') else ''))
  print(f'wrote {workdir}/scores.csv, correlation.md/json'
        + (', scatter.png, ranks.png' if plotted else ' (no plots: matplotlib not installed)')
        + (', agreement.md/json' if truth.reference is not None else ''))


GAP_SEEDS, GAP_SAMPLES = 10, 100


def search_gaps(space, archs, acc, columns, device='stm32f746', runtime='cmsis-nn',
                seeds=GAP_SEEDS, samples=GAP_SAMPLES) -> dict:
  """The seed's random search on the trained archs, scored by each column: per seed, `samples`
  archs drawn; the search keeps the feasible ones and picks the best seed objective with the
  column's percentile (among them) as the accuracy term. Its gap: the trained accuracy of the
  arch the same objective picks with the *trained* accuracy, minus the trained accuracy of the
  searched pick (points; mean over seeds). `random_pick_gap_pp`: the same gap for a uniformly
  random feasible pick (the baseline a proxy must beat)."""
  from engine.search import objective as obj
  from engine.search.problem import Term
  costs = search_lib.grouped_costs(space, archs, space.input_shape, space.num_classes, device,
                                   runtime)
  feasible = obj.within_limits(costs, obj.Constraints(device, runtime).limits())
  seed_objective = lambda pool, proxy: obj.seed(
      {'p': proxy}, [Term('p', True)], {k: v[pool] for k, v in costs.items()},
      feasible[pool], obj.Weights(), device)
  acc = np.asarray(acc, np.float64)
  true_obj = seed_objective(np.arange(len(archs)), acc / 100.0)
  feasible &= np.isfinite(true_obj)
  gaps = {c.name: [] for c in columns}
  random_gaps = []
  for seed in range(seeds):
    rng = np.random.default_rng([seed, 0x6a9])
    pool = rng.choice(len(archs), min(samples, len(archs)), replace=False)
    pool = pool[feasible[pool]]
    if not len(pool):
      continue
    best_acc = acc[pool[np.argmax(true_obj[pool])]]
    random_gaps.append(best_acc - np.mean(acc[pool]))
    for c in columns:
      proxy = aggregate.oriented_ranks(c.oriented[pool], True, c.valid[pool]) / len(pool)
      gaps[c.name].append(best_acc - acc[pool[np.argmax(seed_objective(pool, proxy))]])
  return {'device': device, 'runtime': runtime, 'seeds': seeds, 'samples': samples,
          'feasible': int(feasible.sum()),
          'random_pick_gap_pp': float(np.mean(random_gaps)) if random_gaps else float('nan'),
          'columns': {n: float(np.mean(g)) if g else float('nan') for n, g in gaps.items()}}


def reference_archs(spec: str, reference, seed: int) -> np.ndarray:
  """--archs=reference | reference+random:N -> NB201 indices: the reference file's archs for the
  dataset (ascending), then seeded random other archs up to N in all, so that a sample run also
  measures agreement on every reference arch."""
  spec = spec.strip()
  if reference is None:
    raise ValueError(f'--archs={spec} needs --reference_file (the NASLib zero-cost CSV)')
  base = np.unique(reference['arch_index'])
  if spec == 'reference':
    return base
  head, _, count = spec.partition(':')
  if head != 'reference+random' or not count.isdecimal():
    raise ValueError(f'bad --archs={spec!r}; use reference or reference+random:N')
  total = int(count)
  if total < len(base) or total > nb201.NUM_ARCHS:
    raise ValueError(f'--archs={spec}: N must be between the {len(base)} reference archs and '
                     f'{nb201.NUM_ARCHS}')
  others = np.setdiff1d(np.arange(nb201.NUM_ARCHS), base)
  extra = np.random.default_rng(seed).choice(others, total - len(base), replace=False)
  return np.concatenate([base, np.sort(extra)])


# -- the resumable sweep


def archs_digest(ops) -> str:
  return hashlib.sha256(np.ascontiguousarray(ops, np.int64).tobytes()).hexdigest()


def input_source(images) -> str:
  return images.source if images else 'N(0, 1) Gaussian noise (no --data_dir given)'


def run_config(proxy_names, settings, f, images, ops, n_dev, platform, job='correlate') -> dict:
  """Everything that changes a chunk's numbers, and the job (correlate and score write other
  tables into the workdir); a resume must match it exactly. Passed through JSON so it compares
  equal to the manifest read back (tuples become lists)."""
  settings = dataclasses.asdict(settings)
  if settings['matmul_precision'] == 'highest':  # what every sweep before the field ran
    del settings['matmul_precision']
  config = {'version': MANIFEST_VERSION, 'dataset': f.dataset, 'proxies': list(proxy_names),
            'seed': f.seed, 'settings': settings,
            'inputs': input_source(images), 'archs': len(ops), 'archs_sha256': archs_digest(ops),
            'chunk_size': f.chunk_size, 'batch_candidates': f.batch_candidates,
            'candidate_chunk': f.candidate_chunk, 'devices': f'{n_dev} {platform}'}
  if job != 'correlate':  # correlate's manifests (committed sweeps too) predate the field
    config['job'] = job
  return json.loads(json.dumps(config))


def check_shared_manifest(workdir: pathlib.Path, config: dict, share: sweep_lib.Share,
                          create: bool = True):
  """`check_manifest` by process 0; the other processes wait for its manifest and check
  theirs against it."""
  if share.writes_outputs:
    check_manifest(workdir, config, create)
  else:
    wait_for(workdir / 'manifest.json', f'{share}: waiting for process 0 to write')
    check_manifest(workdir, config, create=False)


def check_manifest(workdir: pathlib.Path, config: dict, create: bool = True):
  """Writes the manifest of a new run (if `create`), or checks that a resumed one has the same
  config."""
  path = workdir / 'manifest.json'
  if not create and not path.is_file():
    raise ResumeError(f'{workdir} holds no correlate run to tabulate (no manifest.json); start '
                      f'the sweep without --partial first')
  if path.is_file():
    try:
      old = json.loads(path.read_text())
    except (OSError, ValueError):
      old = {}
    old = old if isinstance(old, dict) else {}
    job, ours = old.get('job', 'correlate'), config.get('job', 'correlate')
    if old and job != ours:
      raise ResumeError(f'{workdir} holds a {job} run, whose tables a {ours} run would '
                        f'overwrite; pass another --workdir')
    # a proxy's values do not depend on the others' order (each has its own key)
    theirs, mine = ({**d, 'proxies': sorted(d.get('proxies') or [])} for d in (old, config))
    if theirs != mine:
      keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
      raise ResumeError(f'{workdir} holds a {ours} run with other settings (differs in '
                        f'{", ".join(keys)}); pass a new --workdir or delete {workdir} to '
                        f'start over')
    return
  if (workdir / 'chunks').is_dir() and any((workdir / 'chunks').iterdir()):
    raise ResumeError(f'{workdir}/chunks has files but no manifest.json; pass a new --workdir '
                      f'or delete {workdir} to start over')
  common.write_text_atomic(path, json.dumps(config, indent=1, sort_keys=True) + '\n')


def peak_device_memory() -> int | None:
  """The most bytes any local device's allocator held so far (GPU, TPU), or None (CPU)."""
  import jax
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats() or {}
    except (AttributeError, NotImplementedError, RuntimeError):
      stats = {}
    if 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def wait_for(path: pathlib.Path, message: str, timeout_s: float = sweep_lib.CONNECT_TIMEOUT_S):
  """Polls until `path` exists (another process writes it); a ResumeError after timeout_s."""
  import time
  start = time.monotonic()
  if not path.is_file():
    print(f'{message} {path}')
  while not path.is_file():
    if time.monotonic() - start > timeout_s:
      raise ResumeError(f'{path} did not appear within {timeout_s:.0f} s; start process 0 with '
                        f'the same flags')
    time.sleep(sweep_lib.POLL_S)


def chunk_path(chunk_dir: pathlib.Path, i: int) -> pathlib.Path:
  return sweep_lib.chunk_path(chunk_dir, i).with_suffix('.npz')


def write_chunk(path: pathlib.Path, ops, scores: dict):
  """The chunk's archs and every score array, all-or-nothing (`common.write_atomic`)."""
  common.write_atomic(path, lambda fh: np.savez(fh, __ops__=np.asarray(ops, np.int64), **scores))


def read_chunk(path: pathlib.Path, ops) -> dict | None:
  """A finished chunk's scores, or None when the file is missing, unreadable or for other
  archs."""
  try:
    with np.load(path) as z:
      if not np.array_equal(z['__ops__'], ops):
        return None
      return {k: z[k] for k in z.files if k != '__ops__'}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: rescore it
    return None


def _chunk_io(ops):
  """(save, load) of `sweep_lib.run` for score chunks of the arch rows `ops`."""
  save = lambda path, start, stop, scores: write_chunk(path.with_suffix('.npz'), ops[start:stop],
                                                       scores)
  load = lambda path, start, stop: read_chunk(path.with_suffix('.npz'), ops[start:stop])
  return save, load


def finished_scores(ops, chunk_size: int, chunk_dir: pathlib.Path):
  """(done [M] bool, {column: [done.sum()]}): the archs whose chunks are on disk, in order."""
  parts = sweep_lib.finished(len(ops), chunk_size, chunk_dir, _chunk_io(ops)[1])
  done = np.concatenate([np.full(len(ops[s:s + chunk_size]), p is not None)
                         for s, p in zip(range(0, len(ops), chunk_size), parts)])
  finished = [p for p in parts if p is not None]
  if not finished:
    raise ResumeError(f'no finished chunk in {chunk_dir} yet; nothing to tabulate')
  return done, {k: np.concatenate([p[k] for p in finished]) for k in finished[0]}


def per_network(space, scorer, archs) -> tuple[list, Callable]:
  """(runs, expand): the archs a sweep scores, one per network (`Scorer.one_per_network`;
  NB201's 15,625 archs are 9,445 networks), and expand(scores, done=None) -> (done over
  `archs`, scores of those archs) from the scores of the `done` runs (all by default): network
  proxies copied from the arch's network, analytic ones (params, flops) each arch's own."""
  first, inverse = scorer.one_per_network(archs)
  if first is None:
    return list(archs), lambda scores, done=None: (
        np.ones(len(archs), bool) if done is None else done, scores)
  runs = [archs[i] for i in first]

  def expand(scores, done=None):
    done = np.ones(len(runs), bool) if done is None else np.asarray(done, bool)
    position = np.cumsum(done) - 1  # a done run's row in `scores`
    arch_done = done[inverse]
    take = position[inverse[arch_done]]
    out = {k: np.asarray(v)[take] for k, v in scores.items()}
    out.update(scorer.analytic_values(space.group(archs[0]),
                                      [a for a, d in zip(archs, arch_done) if d]))
    return arch_done, out
  return runs, expand


def sweep(ops, chunk_size: int, chunk_dir: pathlib.Path, score_chunk, scorer,
          progress=True, share: sweep_lib.Share = sweep_lib.Share()) -> dict:
  """Scores arch rows [M, ...] chunk by chunk (`score_chunk(start, stop, progress)`), skipping
  chunks already on disk, this process's share of them (`engine.sweep`); {column: [M]}. The
  scorer compiles only if a chunk is left."""
  save, load = _chunk_io(ops)
  timed = {'archs': 0}

  def work(start, stop, advance):
    timed['archs'] += stop - start
    return score_chunk(start, stop, advance)

  parts = sweep_lib.run(len(ops), chunk_size, chunk_dir, work, save, load, share, progress,
                        unit='arch')
  if timed['archs']:
    peak = peak_device_memory()
    print(f'scored {timed["archs"]} archs: compile {scorer.compile_s:.1f} s, run '
          f'{scorer.run_s:.1f} s = {scorer.run_s / timed["archs"]:.3f} s/arch'
          + (f' ({timed["archs"] / max(scorer.run_s, 1e-9):.1f} archs/s; peak device memory '
             f'{peak / 2**30:.2f} GiB)' if peak is not None else ''))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- columns and statistics


def build_columns(scores: dict, proxy_names, aggregates, higher_is_better=None) -> list[Column]:
  """Each proxy (flagged or non-finite values excluded) then each aggregate over the pool."""
  flags = {n: scores[n + '_flag'] for n in proxy_names if n + '_flag' in scores}
  columns = []
  for name in proxy_names:
    values = np.asarray(scores[name], np.float64)
    valid = aggregate.valid_mask(values, flags.get(name))
    higher = (higher_is_better or {}).get(name, None)
    higher = proxies_lib.REGISTRY[name].higher_is_better if higher is None else higher
    text = ([ntk_lib.FLAG_NAMES.get(int(v), str(int(v))) for v in flags[name]] if name in flags
            else [''] * len(values))
    text = [t or ('' if ok else 'nonfinite') for t, ok in zip(text, valid)]
    columns.append(Column(name, 'proxy', values, (1.0 if higher else -1.0) * values, valid, text,
                          int((~valid).sum())))
  for agg in aggregates:
    values, flagged = aggregate.compute(agg, scores, flags)
    text = ['+'.join(names) for names in flagged]
    columns.append(Column(agg.name, 'aggregate', values, values, np.ones(len(values), bool),
                          text, sum(bool(t) for t in text)))
  return columns


def top_precision(score, acc, fraction: float) -> float:
  """Share of the proxy's top `fraction` (at least one arch) that is in the true top fraction.
  Ties at the cut go by arch-list order (a stable sort)."""
  k = max(1, math.ceil(fraction * len(score)))
  ours = np.argsort(-np.asarray(score), kind='stable')[:k]
  true = np.argsort(-np.asarray(acc), kind='stable')[:k]
  return len(np.intersect1d(ours, true)) / k


def correlation_row(column: Column, acc) -> dict:
  """Rank and linear correlation of the oriented score with accuracy over the valid archs."""
  score, truth = column.oriented[column.valid], np.asarray(acc)[column.valid]
  row = {'name': column.name, 'kind': column.kind, 'archs': len(column.values),
         'used': int(column.valid.sum()), 'flagged': column.flagged}
  told = len(score) >= 3 and np.ptp(score) > 0  # else nothing to rank: every figure is n/a
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for key, fn in (('spearman', stats.spearmanr), ('kendall', stats.kendalltau),
                    ('pearson', stats.pearsonr)):
      row[key] = float(fn(score, truth).statistic) if told else float('nan')
  for fraction in TOP_FRACTIONS:
    # on tied values the top set would be the arch list's order, not the proxy's
    row[f'top{round(fraction * 100)}_precision'] = (top_precision(score, truth, fraction)
                                                    if told else float('nan'))
  return row


# -- reference agreement


def load_reference(path, dataset: str) -> dict:
  """{'arch_index': [R] int, column: [R] float} of the reference file's rows for `dataset`."""
  import csv
  path = pathlib.Path(path)
  if not path.is_file():
    raise data_lib.DataError(f'--reference_file={path} not found; pass the NASLib zero-cost CSV '
                             f'(nb201_zc_proxies_subset_naslib.csv)')
  with path.open(newline='') as fh:
    rows = list(csv.DictReader(fh))
  if not rows or not {'dataset', 'arch_index'} <= set(rows[0]):
    raise data_lib.DataError(f'{path} lacks dataset/arch_index columns; pass the NASLib '
                             f'zero-cost CSV')
  rows = [r for r in rows if r['dataset'] == dataset]
  out = {'arch_index': np.array([int(r['arch_index']) for r in rows], np.int64)}
  for column in set(REFERENCE_NAMES.values()) & set(rows[0] if rows else ()):
    out[column] = np.array([_float(r[column]) for r in rows])
  return out


def _float(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return float('nan')


def agreement_rows(columns, indices, reference: dict) -> list[dict]:
  """Spearman between our value and the reference's, per proxy in both, on the shared archs."""
  first = {}
  for row, index in enumerate(indices):
    first.setdefault(int(index), row)  # a repeated arch counts once
  rows = []
  for c in columns:
    ref_name = REFERENCE_NAMES.get(c.name)
    if c.kind != 'proxy' or ref_name not in reference:
      continue
    pairs = [(first[int(i)], v) for i, v in zip(reference['arch_index'], reference[ref_name])
             if int(i) in first]
    used = [(c.values[r], v) for r, v in pairs if c.valid[r] and np.isfinite(v)]
    rho = float('nan')
    if len(used) >= 3:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rho = float(stats.spearmanr(*zip(*used)).statistic)
    rows.append({'name': c.name, 'reference_column': ref_name,
                 'reference_archs': int(len(reference['arch_index'])), 'matched': len(pairs),
                 'used': len(used), 'spearman': rho})
  return rows


# -- outputs


def write_scores(workdir, strs, indices, columns, acc_name, acc):
  """scores.csv (and .parquet): arch_index (benchmark spaces), arch_str, each column and its
  flag, the accuracy."""
  header = ((['arch_index'] if indices is not None else []) + ['arch_str']
            + [n for c in columns for n in (c.name, c.name + '_flag')] + [acc_name])
  rows = [([int(indices[i])] if indices is not None else []) + [strs[i]]
          + [x for c in columns for x in (common.format_number(float(c.values[i])),
                                          c.flag_text[i])]
          + [common.format_number(float(acc[i]))] for i in range(len(strs))]
  common.write_csv_atomic(workdir / 'scores.csv', header, rows)
  try:
    import pyarrow as pa
    import pyarrow.parquet as pq
  except ImportError:
    print('note: no scores.parquet: pyarrow is not installed (pip install pyarrow)')
    return
  data = {'arch_index': pa.array(np.asarray(indices, np.int64))} if indices is not None else {}
  data['arch_str'] = pa.array(strs)
  for c in columns:
    data[c.name] = pa.array(c.values)
    data[c.name + '_flag'] = pa.array(c.flag_text, pa.string())
  data[acc_name] = pa.array(np.asarray(acc, np.float64))
  common.write_atomic(workdir / 'scores.parquet', lambda fh: pq.write_table(pa.table(data), fh))


def describe_setting(f, space, truth, scorer, proxy_names, images, num_archs) -> list[str]:
  """Markdown bullet lines: what the numbers were computed on."""
  s = scorer.settings
  where = f'{space.name} {f.dataset}' if space.datasets is not None else space.name
  lines = [f'{where}: {num_archs} archs (`--archs={f.archs}`, seed {f.seed}), ground truth '
           f'{truth.source}', f'inputs: {input_source(images)}']
  kinds = {proxies_lib.REGISTRY[n].needs for n in proxy_names}
  if space.datasets is not None:
    ds_size, ds_classes = space.datasets[f.dataset][0][0], space.datasets[f.dataset][1]
    if images is not None and f.dataset != 'cifar10' and images.source.startswith('cifar10 '):
      # The report spells out what the stand-in means for the proxies (resizing, label space).
      resized = f'box-downsampled to {ds_size}x{ds_size}, ' if ds_size != 32 else ''
      lines.append(f'{f.dataset} images are not used: CIFAR-10 training images stand in, '
                   f'{resized}into a {ds_classes}-class head; proxies that use labels see '
                   f'CIFAR-10 labels (10 of the {ds_classes} classes)')
  nets = scorer.nets(space.group(truth.archs[0]) if len(truth.archs) else ())
  network = lambda n: f'proxy network {n.label}' if n.label else f"{space.name}'s own network"
  pixels = lambda n: f'{n.input_shape[0]}x{n.input_shape[1]}'
  if 'ntk' in kinds:
    n = nets['ntk']
    lines.append(f'NTK: {network(n)}, batch {s.ntk_batch}, {s.ntk_repeats} repeat(s), '
                 f'{pixels(n)} inputs, init {s.init}')
  if 'lr' in kinds:
    n = nets['lr']
    if n.regions == 'patterns':
      lines.append(f'linear regions: {s.lr_repeats} x {s.lr_batches} x {s.lr_batch_size} crops '
                   f'of {pixels(n)} px, {network(n)}: distinct activation patterns')
    else:
      lines.append(f'linear regions: {s.lr_repeats} x {s.lr_segments} segments between input '
                   f'pairs, {network(n)}: pieces along each segment')
  if 'zc' in kinds:
    n = nets['zc']
    lines.append(f'zero-cost proxies: {network(n)}, batch {s.zc_batch} with labels, '
                 f'{pixels(n)} inputs, {n.num_classes} classes, one init')
  if None in kinds:
    lines.append(f'params/flops (multiply-accumulates): the space\'s own count of the full '
                 f'network ({s.flops_convention} convention)' if space.size is not None else
                 'params/flops (multiply-accumulates): the lowered graph')
  return lines


def write_correlation(workdir, rows, setting, title, num_archs, extra=None):
  gap = bool(extra)
  header = ('| proxy | kind | archs used | flagged | Spearman rho | Kendall tau | Pearson r | '
            'top-5% precision | top-10% precision |' + (' search gap (pp) |' if gap else ''))
  table = [header, '|' + '---|' * (10 if gap else 9)]
  for r in rows:
    table.append(f'| {r["name"]} | {r["kind"]} | {r["used"]} | {r["flagged"]} | '
                 f'{_num(r["spearman"])} | {_num(r["kendall"])} | {_num(r["pearson"])} | '
                 f'{_num(r["top5_precision"])} | {_num(r["top10_precision"])} |'
                 + (f' {_num(r["search_gap_pp"])} |' if gap else ''))
  if gap:
    table.append('| random feasible pick |' + ' |' * 8
                 + f' {_num(extra["search"]["random_pick_gap_pp"])} |')
  text = '\n'.join([
      f'# Proxy correlation with {title} test accuracy', '',
      '## Setting', '', *[f'* {line}' for line in setting], '',
      '## Correlation', '', *table, '',
      'Statistics use each score oriented so that higher predicts better (scipy.stats). A proxy '
      'row leaves out its flagged or non-finite archs (counted under "flagged"). An aggregate '
      'keeps every arch and ranks a flagged component value last; "flagged" counts the archs '
      'where that happened. Top-p% precision: the share of the score\'s top p% of the archs '
      'used that is also in their true top p%.', ''])
  common.write_text_atomic(workdir / 'correlation.md', text)
  payload = {'dataset': title, 'archs': num_archs, 'setting': setting,
             'rows': [{k: _json(v) for k, v in r.items()} for r in rows],
             **{k: json.loads(json.dumps(v, default=_json)) for k, v in (extra or {}).items()}}
  common.write_text_atomic(workdir / 'correlation.json', json.dumps(payload, indent=1) + '\n')


def write_agreement(workdir, rows, dataset, reference_file):
  lines = [f'# Agreement with the reference values ({dataset})', '',
           f'Reference: `{reference_file}`, rows with dataset == {dataset}. Spearman rho '
           f'(scipy.stats) between our value and the reference column on the archs both have '
           f'(ours flagged or non-finite left out).', '',
           '| proxy | reference column | reference archs | scored here | used | Spearman rho |',
           '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["name"]} | {r["reference_column"]} | {r["reference_archs"]} | '
                 f'{r["matched"]} | {r["used"]} | {_num(r["spearman"])} |')
  if not rows:
    lines.append('\nNo scored proxy has a reference column (reference names: '
                 + ', '.join(f'{k} = {v}' for k, v in REFERENCE_NAMES.items()) + ').')
  elif not any(r['matched'] for r in rows):
    lines.append('\nNone of the reference archs was scored: pass --archs=FILE listing their '
                 'arch_index.')
  common.write_text_atomic(workdir / 'agreement.md', '\n'.join(lines) + '\n')
  payload = {'dataset': dataset, 'reference_file': str(reference_file),
             'rows': [{k: _json(v) for k, v in r.items()} for r in rows]}
  common.write_text_atomic(workdir / 'agreement.json', json.dumps(payload, indent=1) + '\n')


def write_plots(workdir, columns, acc, title) -> bool:
  """scatter.png (score vs accuracy) and ranks.png (rank vs rank), one panel per column."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  acc = np.asarray(acc)
  cols = min(3, len(columns))
  rows = -(-len(columns) // cols)
  for name, ranked in (('scatter.png', False), ('ranks.png', True)):
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(columns):]:
      ax.axis('off')
    for ax, c in zip(axes.flat, columns):
      x, y = c.values[c.valid], acc[c.valid]
      if ranked:
        x, y = stats.rankdata(c.oriented[c.valid]), stats.rankdata(y)
        ax.set_xlabel(f'rank by {c.name} (higher = better)', fontsize=8)
        ax.set_ylabel('rank by test accuracy', fontsize=8)
      else:
        if len(x) and x.min() > 0 and x.max() > 1e3 * x.min():
          ax.set_xscale('log')
        ax.set_xlabel(c.name, fontsize=8)
        ax.set_ylabel(f'{title} test accuracy (%)', fontsize=8)
      ax.scatter(x, y, s=3, alpha=0.5)
      ax.set_title(f'{c.name} ({len(x)} archs)', fontsize=9)
      ax.tick_params(labelsize=7)
    fig.tight_layout()
    common.write_atomic(workdir / name, lambda fh: fig.savefig(fh, format='png', dpi=110))
    plt.close(fig)
  return True


def _num(value) -> str:
  return 'n/a' if value is None or not np.isfinite(value) else f'{value:.3f}'


def _json(value):
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value

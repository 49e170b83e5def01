"""A trained ground truth for a search space that has none: every chosen arch trained with one
short, fixed budget, as a resumable sweep.

Recipe (the same for every arch; `GroundTruthConfig`): the arch's own network (`train_net`),
PyTorch-default init from the seed, Adam with a cosine-decayed rate, cross-entropy, batches drawn
in a seeded order from the training images (no augmentation), then top-1 on all test images.
The archs are ordered by `stratified_order`, so any prefix of the sweep is stratified over the
space's strata; the first `noise_archs` of them are also trained with `noise_seeds` extra seeds to
measure the seed-to-seed noise.

The sweep (`engine.sweep`) writes one CSV per chunk of runs (atomically), so a killed sweep
resumes at the missing chunks without losing or duplicating rows, and several processes share
it; `collect` joins them.

Every row carries a `flag`: '' for an accuracy, 'nonfinite' for a run whose loss diverged
(test_acc nan), 'at_chance' for a run whose test accuracy is not above chance (`engine.chance`;
its measured test_acc is kept for inspection). Flagged rows are not accuracies: `load_ground_truth`
skips them and counts them (`Table.flagged`, and a note on stderr). Tables written before the
column existed are flagged on reading by the same rule, assuming the sweep's whole CIFAR-10 test
split (`SWEEP_TEST_IMAGES`, balanced).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from engine import chance as chance_lib
from engine.train import data as data_lib
from engine import sweep as sweep_lib
from engine.files import write_text_atomic

COLUMNS = ('arch', 'stratum', 'seed', 'test_acc', 'train_loss', 'params', 'epochs', 'train_s',
           'flag')
FLAGS = ('nonfinite', 'at_chance')  # a row's `flag` when it is not an accuracy ('' when it is)
SWEEP_TEST_IMAGES = 10000  # CIFAR-10's test split: what a table without `flag` was tested on
SWEEP_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class GroundTruthConfig:
  epochs: int = 2
  batch_size: int = 128
  learning_rate: float = 3e-3
  weight_decay: float = 0.0


def stratified_order(space, seed: int = 0) -> list:
  """All archs of a finite space, shuffled within each stratum and dealt round-robin over the
  strata, so every prefix holds the strata in equal numbers (until the small ones run out)."""
  archs = space.enumerate()
  rng = np.random.default_rng([seed, 0x57a7])
  strata: dict = {}
  for a in archs:
    strata.setdefault(space.stratum(a), []).append(a)
  queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(strata.items())]
  order = []
  while any(queues):
    for q in queues:
      if q:
        order.append(q.pop(0))
  return order


def train_one(train_net, arch, images, test, cfg: GroundTruthConfig, seed: int) -> dict:
  """Train one arch once; returns its row (test accuracy in percent, and its `flag`)."""
  init, apply = train_net(arch)
  x = data_lib.normalize(images.images)
  y = np.asarray(images.labels, np.int32)
  steps_per_epoch = len(x) // cfg.batch_size
  total = steps_per_epoch * cfg.epochs
  tx = optax.adamw(optax.cosine_decay_schedule(cfg.learning_rate, total), weight_decay=cfg.weight_decay)
  key = jax.random.PRNGKey(seed)
  params = init(key)
  opt_state = tx.init(params)

  def loss_fn(p, xb, yb):
    logits = apply(p, xb)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

  @jax.jit
  def epoch(p, s, xs, ys):
    def step(carry, batch):
      p, s = carry
      loss, g = jax.value_and_grad(loss_fn)(p, *batch)
      updates, s = tx.update(g, s, p)
      return (optax.apply_updates(p, updates), s), loss
    (p, s), losses = jax.lax.scan(step, (p, s), (xs, ys))
    return p, s, jnp.mean(losses)

  rng = np.random.default_rng([seed, 0xda7a])
  start = time.perf_counter()
  loss = float('nan')
  for _ in range(cfg.epochs):
    order = rng.permutation(len(x))[:steps_per_epoch * cfg.batch_size]
    xs = jnp.asarray(x[order].reshape(steps_per_epoch, cfg.batch_size, *x.shape[1:]))
    ys = jnp.asarray(y[order].reshape(steps_per_epoch, cfg.batch_size))
    params, opt_state, loss = epoch(params, opt_state, xs, ys)
    loss = float(loss)
  predict = jax.jit(lambda p, xb: jnp.argmax(apply(p, xb), -1))
  tx_, ty = data_lib.normalize(test.images), np.asarray(test.labels)
  correct = 0
  for i in range(0, len(tx_), 1000):
    correct += int(np.sum(np.asarray(predict(params, jnp.asarray(tx_[i:i + 1000]))) == ty[i:i + 1000]))
  if not math.isfinite(loss):
    acc, flag = float('nan'), 'nonfinite'  # a diverged run is recorded as such
  else:
    acc = 100.0 * correct / len(ty)
    verdict = chance_lib.judge(correct / len(ty), ty, max(SWEEP_CLASSES, int(ty.max()) + 1))
    flag = 'at_chance' if verdict.at_chance else ''
  return {'test_acc': acc, 'flag': flag, 'train_loss': loss,
          'params': int(sum(v.size for v in jax.tree.leaves(params))),
          'epochs': cfg.epochs, 'train_s': time.perf_counter() - start}


def jobs(space, num_archs: int, noise_archs: int, noise_seeds: int, seed: int = 0):
  """(arch, seed) pairs in sweep order: the first num_archs of `stratified_order` with seed 0,
  then seeds 1..noise_seeds for the first noise_archs of them (so an early stop still leaves a
  complete seed-0 table)."""
  order = stratified_order(space, seed)[:num_archs]
  return [(a, 0) for a in order] + [(a, s) for s in range(1, noise_seeds + 1)
                                    for a in order[:noise_archs]]


def run_sweep(space, workdir, data_dir, num_archs=300, noise_archs=30, noise_seeds=2,
              chunk=12, cfg: GroundTruthConfig = GroundTruthConfig(), progress: bool = False,
              max_images: int = 0, share: sweep_lib.Share = sweep_lib.Share()):
  """Train the jobs chunk by chunk into workdir/chunks/chunk_NNNNN.csv (`engine.sweep`: finished
  chunks are skipped; with several processes, this one trains its `share`); every row, from
  `collect`. `max_images` > 0 keeps that many train and test images (tests)."""
  train = data_lib.load_cifar(data_dir, 'cifar10', 'train')
  test = data_lib.load_cifar(data_dir, 'cifar10', 'test')
  if max_images:
    train = data_lib.ImageSet(train.images[:max_images], train.labels[:max_images], train.source)
    test = data_lib.ImageSet(test.images[:max_images], test.labels[:max_images], test.source)
  todo = jobs(space, num_archs, noise_archs, noise_seeds)

  def work(start, stop, advance):
    rows = []
    for arch, s in todo[start:stop]:
      row = train_one(space.train_net, arch, train, test, cfg, s)
      rows.append({'arch': space.encode(arch), 'stratum': space.stratum(arch), 'seed': s, **row})
      advance(1)
    return rows

  def save(path, start, stop, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path.with_suffix('.csv'), buf.getvalue())

  def load(path, start, stop):
    # a chunk of other jobs (another --num_archs) or of another training length is not this
    # one's: trained again
    rows = _read_rows(path.with_suffix('.csv'))
    want = [(space.encode(a), str(s), str(cfg.epochs)) for a, s in todo[start:stop]]
    have = [(r['arch'], r['seed'], r.get('epochs')) for r in rows] if rows is not None else None
    return rows if have == want else None

  sweep_lib.run(len(todo), chunk, pathlib.Path(workdir) / 'chunks', work, save, load, share,
                progress, unit='run')
  # this job's chunks only: a larger earlier job's further chunks stay on disk, unread
  return (collect(workdir, len(sweep_lib.chunk_starts(len(todo), chunk)))
          if share.writes_outputs else [])


def _read_rows(path: pathlib.Path) -> list[dict] | None:
  try:
    with path.open(newline='') as fh:
      return list(csv.DictReader(fh))
  except OSError:
    return None


def row_flag(row: dict) -> str:
  """A row's flag: its `flag` column, or for a row written before that column existed, the same
  rule applied to its test_acc (assuming the whole CIFAR-10 test split)."""
  acc = float(row['test_acc'])
  if not math.isfinite(acc):
    return 'nonfinite'  # whatever the column says: nan is never an accuracy
  if row.get('flag') is not None:  # '' included: the sweep judged it an accuracy
    return row['flag']
  verdict = chance_lib.judge_balanced(acc / 100.0, SWEEP_TEST_IMAGES, SWEEP_CLASSES)
  return 'at_chance' if verdict.at_chance else ''


def collect(workdir, chunks: int | None = None) -> list[dict]:
  """The rows of every chunk (of the first `chunks`), each with its `flag` (filled in for
  chunks written without one)."""
  rows = []
  chunk_dir = pathlib.Path(workdir) / 'chunks'
  paths = (sorted(chunk_dir.glob('*.csv')) if chunks is None else
           [p for p in (sweep_lib.chunk_path(chunk_dir, i).with_suffix('.csv')
                        for i in range(chunks)) if p.is_file()])
  for path in paths:
    with path.open() as fh:
      try:
        rows += [{**row, 'flag': row_flag(row)} for row in csv.DictReader(fh)]
      except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f'{path} is damaged ({type(err).__name__}: {err}); delete it to train '
                         f'its chunk again') from None
  return rows


class Table(dict):
  """{arch string: {seed: accuracy}} of the unflagged rows; `flagged` counts the rows skipped
  by flag ('nonfinite', 'at_chance')."""

  def __init__(self, *args, flagged=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.flagged = collections.Counter(flagged or {})


GROUND_TRUTH = pathlib.Path(__file__).resolve().parents[2] / 'search_spaces' / 'ground_truth'


def load_ground_truth(space, path=None, log=None) -> Table:
  """{arch string: {seed: accuracy}} of a space's trained table. Flagged rows (diverged, at
  chance) are skipped, counted in `.flagged`, and named in one note (`log`, default stderr)."""
  path = pathlib.Path(path) if path else GROUND_TRUTH / f'{space.name}.csv'
  if not path.is_file():
    raise FileNotFoundError(f'no trained ground truth for {space.name} at {path}; make one with '
                            f'python -m experiments.ground_truth --search_space={space.name} or '
                            f'pass --benchmark_file')
  table = Table()
  with path.open() as fh:
    for row in csv.DictReader(fh):
      flag = row_flag(row)
      if flag:
        table.flagged[flag] += 1
        continue
      table.setdefault(row['arch'], {})[int(row['seed'])] = float(row['test_acc'])
  if table.flagged:
    counts = ', '.join(f'{n} {f}' for f, n in sorted(table.flagged.items()))
    (log or (lambda m: print(m, file=sys.stderr)))(
        f'note: {sum(table.flagged.values())} runs of {path} are flagged ({counts}) and are not '
        f'used as accuracies')
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

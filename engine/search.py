"""Hardware-aware zero-shot searchers over NB201 op masks, chosen by name from `SEARCHERS`.

Every searcher scores candidates in fixed-size batches (one compiled call per batch; Python
loops only over pruning rounds or generations) and returns a feasible arch: candidates outside
the constraints never win (see `engine.objective`). Five searchers:

* `prune` (TE-NAS): start from the supernet with every op on every edge (`none` included, so
  the archs that drop an edge, which tight latency budgets favour, stay reachable;
  `prune_none`, by default when the limits rule out most archs without `none`).
  Each round, every single-op removal of the current supernet is scored in one batch (repeats
  averaged inside the proxy); the removals are ranked by the objective plus a feasible-share
  term, and on each edge the op whose removal leaves the best supernet goes. When two ops per
  edge are left, the <= 2**6 feasible connected single-path archs are scored exactly and the
  best wins (rounds of 30, 24, 18 removals, then those). An op is only removed if the remaining
  supernet still contains a feasible arch, so the result is feasible by construction.
* `grad_prune`: the same rounds (and the same `none` rule), but an op's importance is the
  gradient of a differentiable objective (each differentiable proxy's relative change, predicted
  latency / MACs, and a hinge penalty on the limits through the differentiable cost model) with
  respect to its soft weight: one gradient of the supernet per round instead of one proxy
  evaluation per removal; removals are ranked by it plus `prune`'s feasible-share term. Before
  the last round the `recheck` best single-path archs left (by the first-order estimate) are
  scored exactly and the best by the objective wins.
* `random`: feasible archs sampled uniformly, scored in batches, best by the objective.
* `rerank` (the default): the feasible archs ordered by size (parameters, then MACs); the
  largest `pool` of them are scored and the best by the objective wins. Size alone (the
  `max_params` / `max_macs` baselines) is a strong prior on NB201; the proxies then choose among
  the archs the hardware can still afford, which is where size stops telling them apart.
* `evolution`: regularized evolution (Real et al., 2019) with tournament selection; each
  generation's children are scored as one batch; fitness is the hybrid rank over every arch
  scored so far, so it is comparable across generations.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from engine import aggregate as agg_lib
from engine import objective as obj
from engine import proxies as proxies_lib
from engine import scoring
from search_spaces import nb201

NOT_DIFFERENTIABLE = ('linear_regions',)  # counts: zero gradient almost everywhere


class SearchError(ValueError):
  """Bad searcher name or option; one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Budgets of the searchers (small, pure data, so runs are reproducible from flags)."""
  batch: int = 8               # K of random/evolution/recheck calls
  # ~35-50 s per search at the default objective's measured speed on 2 cores (docs/search.md)
  random_samples: int = 512
  evolution_samples: int = 512  # archs scored in total, population included
  population: int = 16
  tournament: int = 4
  recheck: int = 8             # grad_prune: single-path archs re-scored exactly at the end
  pool: int = 256              # rerank: largest feasible archs scored
  prune_none: str = 'auto'     # (grad_)prune: 'yes' | 'no' | 'auto': `none` at the start?


@dataclasses.dataclass
class Result:
  ops: np.ndarray               # [6] op indices of the winner
  objective: float
  values: dict                  # proxy name -> value of the winner
  scored: int                   # candidates (or gradient passes) evaluated
  compile_s: float
  run_s: float
  log: list                     # one line per round / generation, for the report
  # (archs scored, code of the best so far by the objective): the anytime curve of the
  # searchers that score single archs one after another (random, evolution, rerank)
  trace: list = dataclasses.field(default_factory=list)


class Problem:
  """What a searcher needs: proxies, settings, inputs, constraints, the space's costs.

  `proxy_names` are proxies and aggregates (`engine.aggregate`, e.g.
  `agg:params+synflow+2*jacob_cov:logrank`): each named one is a term of the objective; an
  aggregate's components are scored but only the aggregate counts.

  Compiled functions are kept per batch size and reused across seeds (`reseed`), so a
  multi-seed run compiles once."""

  def __init__(self, proxy_names, settings: proxies_lib.ScoreSettings,
               constraints: obj.Constraints, weights: obj.Weights, images=None, seed: int = 0,
               table: obj.SpaceTable | None = None):
    names, self.aggregates = agg_lib.split(proxy_names)
    self.proxies = proxies_lib.get(names)
    requested = proxy_names.split(',') if isinstance(proxy_names, str) else list(proxy_names)
    requested = {n.strip() for n in requested}
    # the objective's terms: proxies named directly, then the aggregates
    self.terms = [p for p in self.proxies if p.name in requested] + self.aggregates
    self.network = [p for p in self.proxies if p.kind == 'network']
    self.settings = settings
    self.constraints = constraints
    self.weights = weights
    self.images = images
    self.table = table if table is not None else obj.space_table(constraints)
    obj.check_feasible(self.table, constraints)
    self.refs = self.table.refs()
    self._scorers: dict[int, scoring.Scorer] = {}
    self._grad_fn = None
    self.compile_s = 0.0
    self.run_s = 0.0
    self.reseed(seed)

  def reseed(self, seed: int):
    """New inputs and inits for `seed`; compiled functions are kept."""
    self.seed = seed
    self.inputs = {k: jnp.asarray(v) for k, v in proxies_lib.make_inputs(
        self.network, self.settings, seed, self.images).items()}
    for s in self._scorers.values():
      s.seed, s.inputs = seed, self.inputs

  def _scorer(self, k: int) -> scoring.Scorer:
    if k not in self._scorers:
      s = scoring.Scorer([p.name for p in self.network], self.settings, self.seed,
                         self.images, batch_candidates=k)
      s.inputs = self.inputs
      self._scorers[k] = s
    return self._scorers[k]

  def score(self, masks, k: int | None = None) -> dict[str, np.ndarray]:
    """Proxy values and costs of masks [M, 6, 5], `k` per compiled call (default M)."""
    masks = np.asarray(masks, np.float32)
    m = len(masks)
    out: dict[str, list] = {}
    if self.network:
      # Reuse a compiled batch shape when none is asked for (the final scoring of a winner).
      scorer = self._scorer(k or (max(self._scorers) if self._scorers else m))
      k = scorer.batch_candidates
      keys = mask_keys(self.seed, masks)
      before = scorer.timing.compile_s, scorer.timing.run_s
      for start in range(0, m, k):
        n = min(k, m - start)
        pad = np.r_[np.arange(start, start + n), np.full(k - n, start + n - 1)]
        part = scorer.score_masks(masks[pad], keys[pad])
        for p in self.network:
          out.setdefault(p.name, []).append(np.asarray(part[p.name], np.float64)[:n])
          out.setdefault(p.name + '_flag', []).append(np.asarray(part[p.name + '_flag'])[:n])
      self.compile_s += scorer.timing.compile_s - before[0]
      self.run_s += scorer.timing.run_s - before[1]
    values = {name: np.concatenate(parts) for name, parts in out.items()}
    for p in self.proxies:
      if p.kind == 'analytic':
        values[p.name] = np.asarray(p.fn(masks, self.settings), np.float64)
    start = time.perf_counter()
    values.update(obj.cost(masks, self.constraints))
    self.run_s += time.perf_counter() - start
    return values

  def objective(self, values: dict, ok) -> np.ndarray:
    """The hybrid objective over the pool `values` (aggregates ranked within the pool)."""
    columns = dict(values)
    for a in self.aggregates:
      flags = {c: values[c + '_flag'] for c in a.components if c + '_flag' in values}
      columns[a.name] = agg_lib.compute(a, values, flags)[0]
    return obj.hybrid(columns, self.terms, values, ok, self.weights, self.refs)

  def feasible_ops(self, ops) -> np.ndarray:
    return self.table.feasible[nb201.ops_to_code(ops)]

  # -- gradients (grad_prune)

  def grad(self, mask) -> tuple[np.ndarray, float]:
    """(dJ/dmask [6, 5], J) of the differentiable objective at one supernet mask.

    Reverse mode (one pass) where it compiles. The gradient proxies (synflow, jacob_cov, ...)
    are gradients themselves, and reverse-over-reverse needs the transpose of the conv
    weight-gradient's custom batching rule, which JAX does not provide; there J is linearised
    once and pushed forward along the 30 basis directions of the mask in one vmapped call
    (forward-over-reverse works; about 30 forward passes of work instead of ~3)."""
    if self._grad_fn is None:
      args = jnp.asarray(mask, jnp.float32), self.inputs
      start = time.perf_counter()
      try:
        self._grad_fn = jax.jit(jax.value_and_grad(self._differentiable_objective)).lower(
            *args).compile()
      except NotImplementedError:
        self._grad_fn = jax.jit(self._value_and_forward_grad).lower(*args).compile()
      self.compile_s += time.perf_counter() - start
    start = time.perf_counter()
    value, g = jax.device_get(self._grad_fn(jnp.asarray(mask, jnp.float32), self.inputs))
    self.run_s += time.perf_counter() - start
    return np.asarray(g, np.float64), float(value)

  def _value_and_forward_grad(self, mask, inputs):
    value, linear = jax.linearize(lambda m: self._differentiable_objective(m, inputs), mask)
    basis = jnp.eye(mask.size, dtype=mask.dtype).reshape((mask.size,) + mask.shape)
    return value, jax.vmap(linear)(basis).reshape(mask.shape)

  def _differentiable_objective(self, mask, inputs):
    """J (lower is better): each differentiable proxy's relative change, oriented, plus the
    weighted cost terms and a hinge penalty on the limits (relative overshoot)."""
    key = jax.random.PRNGKey(0)  # shared inits live in `inputs`; the key is unused then
    total = 0.0
    for p in self.network:
      if p.name in NOT_DIFFERENTIABLE or self.weights.proxy(p.name) == 0:
        continue
      value, _ = p.fn(proxies_lib.proxy_key(key, p.name), mask, inputs, self.settings)
      value = value / jax.lax.stop_gradient(jnp.abs(value) + 1e-12)
      total += self.weights.proxy(p.name) * (-value if p.higher_is_better else value)
    costs = obj.soft_cost(mask[None], self.constraints)
    total += self.weights.flops * costs['macs'][0] / self.refs['macs']
    total += self.weights.latency * costs['latency_ms'][0] / self.refs['latency_ms']
    total += obj.soft_penalty({k: v[0] for k, v in costs.items()}, self.table.limits)
    return total


def mask_keys(seed: int, masks) -> jax.Array:
  """Per-candidate keys from the seed and the mask's active-op bit pattern (reproducible)."""
  bits = (np.asarray(masks) != 0).reshape(len(masks), -1)
  codes = jnp.asarray((bits * (1 << np.arange(bits.shape[1]))).sum(-1), jnp.uint32)
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, c))(codes)


def _start_mask(with_none: bool = False) -> np.ndarray:
  """The supernet pruning starts from: every op on every edge, `none` only if `with_none`.

  Without `none` pruning cannot reach the archs a latency budget favours: every one of the 10
  most accurate archs under the 25th/50th/75th-percentile budgets drops an edge, and the best
  arch without a `none` edge is 3.3 / 2.1 / 0.2 points below the best feasible one
  (docs/search.md)."""
  mask = np.ones((nb201.NUM_EDGES, nb201.NUM_OPS), np.float32)
  if not with_none:
    mask[:, nb201.NONE] = 0
  return mask


def prune_with_none(table: obj.SpaceTable, setting: str) -> bool:
  """Whether `prune` and `grad_prune` start with `none` on every edge: 'yes', 'no', or 'auto' =
  when the limits rule out more than half of the archs without a `none` edge (then the best
  feasible archs drop edges; with SRAM/flash alone or a loose budget `none` only adds a way to
  go wrong)."""
  if setting not in ('auto', 'yes', 'no'):
    raise SearchError(f'bad --prune_none={setting!r}; use auto, yes or no')
  if setting != 'auto':
    return setting == 'yes'
  return bool(table.feasible_share(_start_mask(False)[None])[0] < 0.5)


def _removals(mask) -> tuple[np.ndarray, np.ndarray]:
  """All single-op removals of a supernet: masks [R, 6, 5] and their (edge, op) [R, 2]."""
  where = np.argwhere(mask != 0)
  where = where[(mask != 0).sum(-1)[where[:, 0]] > 1]  # keep at least one op per edge
  out = np.repeat(mask[None], len(where), 0)
  out[np.arange(len(where)), where[:, 0], where[:, 1]] = 0
  return out, where


def _prune_edges(problem: Problem, mask, where, goodness) -> np.ndarray:
  """Removes on each edge the op with the best `goodness` whose removal keeps a feasible arch
  reachable; edges are visited most-confident first (largest goodness)."""
  mask = mask.copy()
  order = np.argsort(-goodness, kind='stable')
  done = set()
  for i in order:
    e, o = where[i]
    if e in done or mask[e].sum() <= 1:
      continue
    trial = mask.copy()
    trial[e, o] = 0
    if problem.table.reachable(trial[None])[0]:
      mask = trial
      done.add(e)
  return mask


def _single_paths(problem: Problem, mask) -> np.ndarray:
  """The feasible, connected single-path archs [M, 6] of a supernet mask (at most 2**6 when
  pruned to two ops per edge; a cell whose output the input cannot reach is never wanted)."""
  choices = [np.flatnonzero(row) for row in mask]
  ops = np.stack(np.meshgrid(*choices, indexing='ij'), -1).reshape(-1, nb201.NUM_EDGES)
  return ops[problem.feasible_ops(ops) & nb201.is_connected(ops)]


def _round_k(n: int) -> int:
  devices = len(jax.local_devices())
  return -(-n // devices) * devices


def _feasible_term(problem: Problem, mask, masks) -> np.ndarray:
  """Hardware-aware term of a removal's goodness: keep the archs left feasible. Its weight
  grows with the share of the current supernet's archs the limits rule out (squared: ~0 when
  only a few are, as with SRAM/flash alone, ~1 under a tight latency budget)."""
  binding = (1 - problem.table.feasible_share(mask[None])[0]) ** 2
  return problem.weights.feasible * binding * obj.percentile_rank(
      problem.table.feasible_share(masks), True)


def prune(problem: Problem, rng: np.random.Generator, options: Options, progress=None) -> Result:
  """TE-NAS prune-by-importance; see the module docstring."""
  mask = _start_mask(prune_with_none(problem.table, options.prune_none))
  k = _round_k(len(_removals(mask)[0]))  # round 1 is the largest: one compiled shape
  log, scored = [], 0
  while (mask.sum(-1) > 1).any():
    if (mask.sum(-1) <= 2).all():
      # Last round: the <= 2**6 feasible single-path archs left are scored exactly (a few
      # calls of the compiled shape) instead of one more greedy per-edge removal, which under a
      # tight budget strands the cheap ops together.
      ops = _single_paths(problem, mask)
      if len(ops):
        log.append(f'round {len(log) + 1}: {len(ops)} feasible single-path archs scored')
        if progress:
          progress(1)
        return _finish(problem, ops, scored, log, k)
    masks, where = _removals(mask)
    values = problem.score(masks, k)
    ok = problem.table.reachable(masks)
    goodness = problem.objective(values, ok) + _feasible_term(problem, mask, masks)
    mask = _prune_edges(problem, mask, where, goodness)
    scored += len(masks)
    log.append(f'round {len(log) + 1}: {len(masks)} removals scored, '
               f'{int(mask.sum())} ops left')
    if progress:
      progress(1)
  return _finish(problem, mask.argmax(-1)[None], scored, log)


def grad_prune(problem: Problem, rng: np.random.Generator, options: Options,
               progress=None) -> Result:
  """Gradient-guided pruning with an exact re-check at the end; see the module docstring."""
  mask = _start_mask(prune_with_none(problem.table, options.prune_none))
  log, passes = [], 0
  while (mask.sum(-1) > 2).any() or (options.recheck <= 1 and (mask.sum(-1) > 1).any()):
    g, value = problem.grad(mask)
    passes += 1
    masks, where = _removals(mask)
    # Removing op o changes J by about -g[o]: the largest gradient is the best removal; ranked,
    # plus `prune`'s feasible-share term (without it a tight budget strands the search with a
    # single all-pooling arch: 50.78% on 2 of 5 seeds at 83.54 ms).
    goodness = obj.percentile_rank(g[where[:, 0], where[:, 1]], True)
    mask = _prune_edges(problem, mask, where, goodness + _feasible_term(problem, mask, masks))
    log.append(f'round {len(log) + 1}: J={value:.4g}, {int(mask.sum())} ops left')
    if progress:
      progress(1)
  if (mask.sum(-1) == 1).all():
    return _finish(problem, mask.argmax(-1)[None], passes, log)
  # Last round: every single-path arch left (<= 2**6), first-order estimate, exact re-check.
  g, _ = problem.grad(mask)
  passes += 1
  ops = _single_paths(problem, mask)
  # J(arch) - J(supernet) ~ -sum of the gradients of the ops the arch drops.
  kept = g[np.arange(nb201.NUM_EDGES), ops].sum(-1)
  top = ops[np.argsort(kept, kind='stable')[:max(1, options.recheck)]]
  log.append(f'recheck: {len(top)} of {len(ops)} feasible single-path archs scored exactly')
  if progress:
    progress(1)
  return _finish(problem, top, passes, log, k=_round_k(min(options.batch, len(top))))


def random_search(problem: Problem, rng: np.random.Generator, options: Options,
                  progress=None) -> Result:
  """Uniform samples from the feasible archs, scored in batches; best by the objective."""
  pool = np.flatnonzero(problem.table.feasible)
  n = min(options.random_samples, len(pool))
  if n < 1:
    raise SearchError('--random_samples must be at least 1')
  ops = problem.table.ops[rng.choice(pool, n, replace=False)]
  return _finish(problem, ops, 0, [f'{n} feasible archs sampled'],
                 k=_round_k(options.batch), progress=progress, anytime=True)


def size_order(table: obj.SpaceTable) -> np.ndarray:
  """Codes of the feasible archs, largest first (parameters, then MACs, then code)."""
  pool = np.flatnonzero(table.feasible)
  return pool[np.lexsort((pool, -table.costs['macs'][pool], -table.costs['params'][pool]))]


def rerank(problem: Problem, rng: np.random.Generator, options: Options,
           progress=None) -> Result:
  """Scores the `options.pool` largest feasible archs; the best by the objective wins."""
  if options.pool < 1:
    raise SearchError('--rerank_pool must be at least 1')
  codes = size_order(problem.table)[:options.pool]
  return _finish(problem, problem.table.ops[codes], 0,
                 [f'{len(codes)} largest feasible archs (of {int(problem.table.feasible.sum())})'
                  f' scored'], k=_round_k(options.batch), progress=progress, anytime=True)


def evolution(problem: Problem, rng: np.random.Generator, options: Options,
              progress=None) -> Result:
  """Regularized evolution with batched children; see the module docstring."""
  if options.population < 2 or options.tournament < 1 or options.evolution_samples < 1:
    raise SearchError('evolution needs --population >= 2, --tournament >= 1 and '
                      '--evolution_samples >= 1')
  k = _round_k(options.batch)
  pool = np.flatnonzero(problem.table.feasible)
  archive = _Archive(problem, k)
  population = problem.table.ops[rng.choice(pool, min(options.population, len(pool)),
                                            replace=False)]
  archive.add(population)
  pop_codes = list(nb201.ops_to_code(population))
  log = [f'initial population of {len(population)} scored']
  if progress:
    progress(len(population))
  stalled = 0
  while archive.size < options.evolution_samples and stalled < 8:
    fitness = archive.fitness()
    codes = np.asarray(pop_codes)
    picks = rng.integers(0, len(codes), (k, min(options.tournament, len(codes))))
    parents = codes[picks[np.arange(k), fitness[codes[picks]].argmax(-1)]]
    children = _mutate(problem, nb201.code_to_ops(parents), rng)
    n_new = archive.add(children)
    pop_codes = (pop_codes + list(nb201.ops_to_code(children)))[-len(population):]  # oldest out
    log.append(f'generation {len(log)}: {len(children)} children, {n_new} new archs')
    if progress:
      progress(len(children))
    stalled = stalled + 1 if n_new == 0 else 0  # converged: only old archs come back
  best = archive.best()
  return Result(best[0], best[1], best[2], archive.size, 0.0, 0.0, log,
                trace(problem, archive.codes, archive.values))


def _mutate(problem: Problem, parents, rng: np.random.Generator) -> np.ndarray:
  """One random op change per parent, redrawn (vectorised, a few tries) until feasible; a
  parent with no feasible mutation found is copied."""
  children = parents.copy()
  todo = np.ones(len(parents), bool)
  for _ in range(16):
    edge = rng.integers(0, nb201.NUM_EDGES, len(parents))
    shift = rng.integers(1, nb201.NUM_OPS, len(parents))
    trial = parents.copy()
    rows = np.arange(len(parents))
    trial[rows, edge] = (trial[rows, edge] + shift) % nb201.NUM_OPS
    take = todo & problem.feasible_ops(trial)
    children[take] = trial[take]
    todo &= ~take
    if not todo.any():
      break
  return children


class _Archive:
  """Every arch scored so far (by code), so repeats are not rescored and fitness is a rank over
  one growing pool."""

  def __init__(self, problem: Problem, k: int):
    self.problem, self.k = problem, k
    self.codes = np.zeros(0, np.int64)
    self.values: dict[str, np.ndarray] = {}

  @property
  def size(self) -> int:
    return len(self.codes)

  def add(self, ops) -> int:
    codes = np.unique(nb201.ops_to_code(ops))
    new = codes[~np.isin(codes, self.codes)]
    if len(new):
      values = self.problem.score(nb201.ops_to_mask(nb201.code_to_ops(new)), self.k)
      self.codes = np.r_[self.codes, new]
      self.values = {n: np.r_[self.values.get(n, np.zeros(0)), v] for n, v in values.items()}
    return len(new)

  def fitness(self) -> np.ndarray:
    """Objective of every arch in the space: the hybrid rank over the archive, -inf if unseen."""
    out = np.full(nb201.NUM_ARCHS, -np.inf)
    ok = self.problem.table.feasible[self.codes]
    out[self.codes] = self.problem.objective(self.values, ok)
    return out

  def best(self):
    fit = self.fitness()[self.codes]
    i = int(np.argmax(fit))
    return (nb201.code_to_ops(self.codes[i]), float(fit[i]),
            {n: float(v[i]) for n, v in self.values.items()})


def trace(problem: Problem, codes, values: dict) -> list[tuple[int, int]]:
  """The best arch by the objective among the first n scored, for n = 8, 16, 32, ... and
  all: what the search would have returned with a budget of n archs (the objective ranks
  within the pool, so each prefix is ranked on its own)."""
  codes = np.asarray(codes)
  steps = [n for n in 2 ** np.arange(3, 31) if n < len(codes)] + [len(codes)]
  out = []
  for n in steps:
    fit = problem.objective({k: v[:n] for k, v in values.items()},
                            problem.table.feasible[codes[:n]])
    out.append((int(n), int(codes[:n][int(np.argmax(fit))])))
  return out


def _finish(problem: Problem, ops, scored: int, log, k: int | None = None,
            progress=None, anytime: bool = False) -> Result:
  """Scores the final candidates (one or a few single-path archs) and returns the best;
  `anytime`: with the `trace` of the best after each prefix of `ops`."""
  ops = np.asarray(ops).reshape(-1, nb201.NUM_EDGES)
  k = k or (max(problem._scorers) if problem._scorers else _round_k(len(ops)))
  values = {}
  for start in range(0, len(ops), k):
    part = problem.score(nb201.ops_to_mask(ops[start:start + k]), k)
    values = {n: np.r_[values.get(n, np.zeros(0)), v] for n, v in part.items()}
    if progress:
      progress(len(part['latency_ms']))
  fit = problem.objective(values, problem.feasible_ops(ops))
  i = int(np.argmax(fit))
  if not np.isfinite(fit[i]):
    raise obj.InfeasibleError('the search found no feasible arch; raise the budgets')
  return Result(ops[i], float(fit[i]), {n: float(v[i]) for n, v in values.items()},
                scored + len(ops), 0.0, 0.0, log,
                trace(problem, nb201.ops_to_code(ops), values) if anytime else [])


SEARCHERS: dict[str, Callable] = {'rerank': rerank, 'prune': prune, 'grad_prune': grad_prune,
                                  'random': random_search, 'evolution': evolution}
def _pruning_steps(options: Options, table: obj.SpaceTable) -> int:
  """Progress steps of `prune` / `grad_prune`: one per removal round down to two ops per edge,
  then the last round (start ops per edge - 1)."""
  return 4 if prune_with_none(table, options.prune_none) else 3


PROGRESS_TOTAL = {  # progress-bar units per searcher (rounds or archs), from options and table
    'rerank': lambda o, t: o.pool, 'prune': _pruning_steps, 'grad_prune': _pruning_steps,
    'random': lambda o, t: o.random_samples, 'evolution': lambda o, t: o.evolution_samples}


def get(name: str) -> Callable:
  if name not in SEARCHERS:
    raise SearchError(f'unknown --searcher={name!r}; choose one of {", ".join(SEARCHERS)}')
  return SEARCHERS[name]


def search(name: str, problem: Problem, seed: int, options: Options = Options(),
           progress=None) -> Result:
  """Runs searcher `name` for `seed`; compile and run time of this search filled in."""
  fn = get(name)
  problem.reseed(seed)
  compile0, run0 = problem.compile_s, problem.run_s
  result = fn(problem, np.random.default_rng([seed, 0x5ea7c4]), options, progress)
  result.compile_s = problem.compile_s - compile0
  result.run_s = problem.run_s - run0
  return result

"""Hardware-aware zero-shot searchers over any search space, chosen by name from `SEARCHERS`.

Every searcher scores candidates in fixed-size batches (one compiled call per batch; Python
loops only over pruning rounds or generations) and returns a feasible arch: candidates outside
the limits never win (`engine.search.objective`). What each needs of a space:

* `rerank` (the default) and `random`: the table of archs (`problem.SpaceTable`: every arch of
  an enumerable space, else a sample).
  - `rerank`: the feasible archs ordered by size (parameters, then MACs); the largest `pool` of
    them are scored and the best by the objective wins. Size alone (the `max_params` /
    `max_macs` baselines) is a strong prior; the proxies then choose among the archs the
    hardware can still afford, which is where size stops telling them apart.
  - `random`: feasible archs sampled uniformly, scored in batches, best by the objective.
* `evolution`: regularized evolution (Real et al., 2019) with tournament selection; each
  generation's children are scored as one batch; fitness is the objective's rank over every arch
  scored so far, so it is comparable across generations. Children come from one changed choice
  (spaces with `relax`) or the space's `mutate`, redrawn until feasible.
* `prune` and `grad_prune` need the space's relaxation (`interface.Relaxation`): its archs as
  choices and a supernet over them.
  - `prune` (TE-NAS): start from the supernet with every option in every slot (the optional
    option, NB201's `none`, only with `prune_none`, by default when the limits rule out most
    archs without it). Each round every single-option removal is scored in one batch; the
    removals are ranked by the objective plus a feasible-share term, and in each slot the
    option whose removal leaves the best supernet goes. When two options per slot are left, the
    feasible archs left are scored exactly and the best wins. An option is only removed if the
    supernet still holds a feasible arch, so the result is feasible by construction.
  - `grad_prune`: one gradient instead of rounds of scored removals. The candidates are the
    feasible archs (with the optional option as `prune` decides); the relaxed arch is their
    centroid (each option's soft weight the share of them that use it);
    the gradient of a differentiable objective there (each proxy's relative change through the
    relaxed network, parameters / MACs / latency and a hinge penalty on the limits through the
    space's differentiable cost model) gives a first-order estimate of the objective of every
    feasible arch (the sum of its options' gradients), and the `recheck` best estimates and
    the `recheck` largest candidates (by parameters, then MACs) are scored exactly; the best by
    the objective wins. One reverse-over-reverse pass of the supernet plus up to 2 x `recheck`
    archs, against `prune`'s hundreds of supernet and arch scorings.

No pick without evidence. Over the feasible candidates a pick is made from (the final pool, the
evolution archive, a pruning round's removals) the search stops with `UninformativeScores` (a
SearchError: one line and exit 2) when every proxy term is flagged on all of them (nothing was
measured), or when no proxy term separates them and neither does the objective (no cost term
weighted): argmax would return the first candidate in table order, which is not a choice. When
the proxies tie but weighted cost terms decide, or some candidates are flagged, the result says
so (`Result.evidence`, and `note:` lines in its log).

Ties at the top. Where several candidates share the best objective, the largest of them
(parameters, then MACs: `size_order`) wins, and the result lists them (`Result.tied`, a `note:`
line). This includes a rank aggregate tied because its components disagree (two candidates,
`params + synflow + 2*jacob_cov` with jacob_cov against the other two: their ranks cancel).
That is conflicting evidence, not absent evidence, so it does not stop the search; size is the
prior the default search already uses (docs/search.md, "Ties at the top").
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from engine.search import objective as obj
from engine.search.problem import Problem, column_evidence


class SearchError(ValueError):
  """Bad searcher name or option, or a searcher the space cannot serve; one line."""


class UninformativeScores(SearchError):
  """Every proxy term is tied or flagged over the candidates of a pick; one line."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Budgets of the searchers (small, pure data, so runs are reproducible from flags)."""
  batch: int = 8               # K of random/evolution/recheck calls
  random_samples: int = 512
  evolution_samples: int = 512  # archs scored in total, population included
  population: int = 16
  tournament: int = 4
  recheck: int = 8             # grad_prune: best first-order estimates scored exactly
  pool: int = 256              # rerank: largest feasible archs scored
  # rerank: only archs with at least (1 - band) x the largest feasible arch's parameters (None:
  # no size floor); 0 keeps the largest size tier alone (NB201: its archs of equal size)
  band: float | None = None
  prune_none: str = 'auto'     # (grad_)prune: 'yes' | 'no' | 'auto': the optional option?


@dataclasses.dataclass
class Result:
  index: int                    # the winner's index in the problem's table
  arch: object                  # the winner
  objective: float
  values: dict                  # proxy name -> value of the winner
  scored: int                   # candidates (or gradient passes) evaluated
  compile_s: float
  run_s: float
  log: list                     # one line per round / generation, for the report
  # (archs scored, table index of the best so far by the objective): the anytime curve of the
  # searchers that score single archs one after another (random, evolution, rerank)
  trace: list = dataclasses.field(default_factory=list)
  # per objective term, over the final pool's feasible candidates: candidates, flagged (flag
  # or non-finite) and distinct unflagged values (`Problem.evidence`)
  evidence: dict = dataclasses.field(default_factory=dict)
  # table indices of the final candidates with a finite objective, best first: what a
  # finalist stage (`engine.search.finalists`) trains
  ranked: list = dataclasses.field(default_factory=list)
  # table indices of the candidates that share the best objective when more than one does
  # (largest first; the first is the pick), else []
  tied: list = dataclasses.field(default_factory=list)


def _cancelling(problem: Problem, name: str, values: dict, ok) -> list[str]:
  """The components of aggregate term `name` whose unflagged values differ over the `ok`
  candidates (their ranks cancel out in the aggregate); [] for a plain term or where every
  component is tied too."""
  term = next((t for t in problem.aggregates if t.name == name), None)
  if term is None:
    return []
  return [c for c in term.components
          if c in values and column_evidence(values, c, ok)['distinct'] > 1]


def check_evidence(problem: Problem, values: dict, ok, where: str, log=None,
                   idx=None) -> dict:
  """UninformativeScores when the `ok` candidates of `values` (2 or more) are all flagged by
  every proxy term, or tied by every proxy term and by the objective, unless they are one
  network written several ways (table indices `idx`, `SpaceTable.one_network`: then the tie is
  the right answer and any is the pick); otherwise the evidence, with a note in `log` for each
  term that is flagged on some candidates or tied on all."""
  evidence = problem.evidence(values, ok)
  ok = np.asarray(ok, bool)
  n = int(ok.sum())
  if n < 2 or not evidence:
    return evidence
  # per term tied on its unflagged candidates: the aggregate's components that differ there
  cancelling = {name: _cancelling(problem, name, values, ok) for name, e in evidence.items()
                if e['distinct'] < 2 and e['flagged'] < e['candidates']}
  def state(name, e):
    if e['flagged'] == e['candidates']:
      return f'{name} flagged on all {n}'
    if e['distinct'] < 2:
      differ = cancelling[name]
      return (f'{name} equal on all {n}' if not e['flagged'] else
              f'{name} flagged on {e["flagged"]} and equal on the other {n - e["flagged"]}'
              ) + (f', though its components {", ".join(differ)} differ (their ranks cancel '
                   f'out)' if differ else '')
    return None
  dead = {name: state(name, e) for name, e in evidence.items()}
  all_flagged = all(e['flagged'] == e['candidates'] for e in evidence.values())
  # an aggregate tied because its components disagree is conflicting evidence, not none: the
  # tie at the top goes to the largest candidate (`best_position`)
  conflicting = any(cancelling.values())
  if all(dead.values()) and not conflicting:
    fit = problem.objective(values, ok)[ok]
    tied = len(np.unique(fit[np.isfinite(fit)])) < 2
    if tied and not all_flagged and idx is not None and problem.table.one_network(
        np.asarray(idx)[ok]):
      if log is not None:
        log.append(f'note: the {n} candidates of {where} are one network (they differ only in '
                   f'choices that cannot change it), so the tie is expected: the first is taken')
      return evidence
    if all_flagged or tied:
      raise UninformativeScores(
          f'no proxy tells the {n} feasible candidates of {where} apart '
          f'({"; ".join(dead.values())})' + (': a pick would be the first candidate in table '
                                             'order, not a choice' if tied else
                                             ': nothing was measured, so the costs alone would '
                                             'pick') +
          '; use other --proxies or check the proxy inputs (--data_dir, --init)')
  if log is not None:
    for name, e in evidence.items():
      if dead[name]:
        others = 'the weighted cost terms' if all(dead.values()) else 'the other terms'
        log.append(f'note: {dead[name]} candidates of {where}; {others} decide')
      elif e['flagged']:
        log.append(f'note: {name} flagged on {e["flagged"]} of {n} candidates of {where} '
                   f'({e["flagged"] / n:.1%}; they rank last by it)')
      for part, k in e.get('components_flagged', {}).items():
        log.append(f'note: {part} (in {name}) flagged on {k} of {n} candidates of {where} '
                   f'({k / n:.1%}; they rank last by it within the aggregate)')
  return evidence


def _relaxation(problem: Problem, searcher: str):
  if problem.table.rows is None:
    raise SearchError(f'--searcher={searcher} needs a relaxed {problem.space.name} (its archs '
                      f'as choices and a supernet over them), which it does not define; use '
                      f'rerank, random or evolution')
  return problem.space.relax


def start_mask(problem: Problem, with_optional: bool = False) -> np.ndarray:
  """The supernet pruning starts from: every option of every slot, the space's optional option
  (NB201's `none`) only if `with_optional`.

  Without `none` NB201 pruning cannot reach the archs a latency budget favours: every one of the
  10 most accurate archs under the 25th/50th/75th-percentile budgets drops an edge
  (docs/search.md)."""
  slots = problem.table.slots
  mask = (np.arange(max(slots))[None] < np.asarray(slots)[:, None]).astype(np.float32)
  optional = problem.space.relax.optional
  if optional is not None and not with_optional:
    mask[:, optional] = 0
  return mask


def prune_with_optional(problem: Problem, setting: str) -> bool:
  """Whether `prune` and `grad_prune` start with the optional option in every slot: 'yes',
  'no', or 'auto' = when the limits rule out more than half of the archs without it (then the
  best feasible archs use it; with SRAM/flash alone or a loose budget it only adds a way to go
  wrong)."""
  if setting not in ('auto', 'yes', 'no'):
    raise SearchError(f'bad --prune_none={setting!r}; use auto, yes or no')
  if problem.space.relax.optional is None:
    return False
  if setting != 'auto':
    return setting == 'yes'
  return bool(problem.table.feasible_share(start_mask(problem, False)[None])[0] < 0.5)


def _removals(mask) -> tuple[np.ndarray, np.ndarray]:
  """All single-option removals of a supernet: masks [R, S, O] and their (slot, option) [R, 2]."""
  where = np.argwhere(mask != 0)
  where = where[(mask != 0).sum(-1)[where[:, 0]] > 1]  # keep at least one option per slot
  out = np.repeat(mask[None], len(where), 0)
  out[np.arange(len(where)), where[:, 0], where[:, 1]] = 0
  return out, where


def _prune_slots(problem: Problem, mask, where, goodness) -> np.ndarray:
  """Removes in each slot the option with the best `goodness` whose removal keeps a feasible
  arch reachable; slots are visited most-confident first (largest goodness)."""
  mask = mask.copy()
  order = np.argsort(-goodness, kind='stable')
  done = set()
  for i in order:
    s, o = where[i]
    if s in done or mask[s].sum() <= 1:
      continue
    trial = mask.copy()
    trial[s, o] = 0
    if problem.table.reachable(trial[None])[0]:
      mask = trial
      done.add(s)
  return mask


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
  _relaxation(problem, 'prune')
  mask = start_mask(problem, prune_with_optional(problem, options.prune_none))
  k = _round_k(len(_removals(mask)[0]))  # round 1 is the largest: one compiled shape
  log, scored = [], 0
  while (mask.sum(-1) > 1).any():
    if (mask.sum(-1) <= 2).all():
      # Last round: the feasible archs left are scored exactly (a few calls of the compiled
      # shape) instead of one more greedy per-slot removal, which under a tight budget strands
      # the cheap options together.
      idx = problem.table.inside(mask)
      if len(idx):
        log.append(f'round {len(log) + 1}: {len(idx)} feasible archs left scored')
        if progress:
          progress(1)
        return _finish(problem, idx, scored, log, k)
    masks, where = _removals(mask)
    values = problem.score_supernets(masks, k)
    ok = problem.table.reachable(masks)
    check_evidence(problem, values, ok, f'pruning round {len(log) + 1}')
    goodness = problem.objective(values, ok) + _feasible_term(problem, mask, masks)
    mask = _prune_slots(problem, mask, where, goodness)
    scored += len(masks)
    log.append(f'round {len(log) + 1}: {len(masks)} removals scored, '
               f'{int(mask.sum())} options left')
    if progress:
      progress(1)
  return _finish(problem, problem.table.inside(mask), scored, log)


def grad_prune(problem: Problem, rng: np.random.Generator, options: Options,
               progress=None) -> Result:
  """Gradient-guided pruning in one pass; see the module docstring."""
  _relaxation(problem, 'grad_prune')
  idx = problem.table.inside(start_mask(problem,
                                        prune_with_optional(problem, options.prune_none)))
  if not len(idx):
    raise obj.InfeasibleError('the search found no feasible arch; raise the budgets')
  # The relaxed arch the gradient is taken at: each option weighted by the share of the
  # feasible archs that use it. At the full supernet instead (every option at weight 1) a
  # latency budget's hinge penalty is far over its limit and its gradient drowns the proxies':
  # the estimate then favours the smallest archs (86.55% at 83.54 ms, docs/search.md).
  centroid = problem.table.one_hot(idx).mean(0)
  g, value = problem.grad(centroid)
  # J(arch) ~ J(centroid) + <g, one_hot(arch) - centroid>: rank by the sum of the arch's
  # options' gradients (lower J is better).
  rows = problem.table.rows[idx]
  estimate = g[np.arange(rows.shape[1]), rows].sum(-1)
  n = max(1, options.recheck)
  best = idx[np.argsort(estimate, kind='stable')[:n]]
  # ... and the `recheck` largest candidates: at a loose budget many large archs have close
  # first-order estimates and the gradient's few can all be smaller than the best of them
  # (docs/search.md, "`grad_prune` rechecks the largest candidates too")
  largest = size_order(problem.table, idx)[:n]
  top = np.array(list(dict.fromkeys([*best.tolist(), *largest.tolist()])), np.int64)
  log = [f'gradient at the centroid of {len(idx)} feasible archs: J={value:.4g}',
         f'recheck: {len(top)} of {len(idx)} feasible archs scored exactly (the {len(best)} '
         f'best first-order estimates and the {len(largest)} largest)']
  if progress:
    progress(1)
  return _finish(problem, top, 1, log, k=_round_k(min(options.batch, len(top))))


def random_search(problem: Problem, rng: np.random.Generator, options: Options,
                  progress=None) -> Result:
  """Uniform samples from the feasible archs, scored in batches; best by the objective."""
  pool = np.flatnonzero(problem.table.feasible)
  n = min(options.random_samples, len(pool))
  if n < 1:
    raise SearchError('--random_samples must be at least 1')
  idx = rng.choice(pool, n, replace=False)
  return _finish(problem, idx, 0, [f'{n} feasible archs sampled'], k=_round_k(options.batch),
                 progress=progress, anytime=True)


def size_order(table, pool=None) -> np.ndarray:
  """Table indices of the feasible archs (or of `pool`), largest first (parameters, then MACs,
  then order)."""
  pool = np.flatnonzero(table.feasible) if pool is None else np.asarray(pool, np.int64)
  return pool[np.lexsort((pool, -table.costs['macs'][pool], -table.costs['params'][pool]))]


def rerank_pool(table, options: Options) -> np.ndarray:
  """Table indices rerank scores: the largest feasible archs (within `options.band` of the
  largest's parameters, if set), at most `options.pool` of them, largest first."""
  if options.pool < 1:
    raise SearchError('--rerank_pool must be at least 1')
  idx = size_order(table)
  if options.band is not None:
    if not 0 <= options.band < 1:
      raise SearchError(f'--rerank_band must be in [0, 1), got {options.band}')
    params = table.costs['params'][idx]
    idx = idx[params >= (1.0 - options.band) * params[0]]
  return idx[:options.pool]


def rerank(problem: Problem, rng: np.random.Generator, options: Options,
           progress=None) -> Result:
  """Scores the `options.pool` largest feasible archs; the best by the objective wins."""
  idx = rerank_pool(problem.table, options)
  feasible = int(problem.table.feasible.sum())
  log = [f'{len(idx)} largest feasible archs (of {feasible}) scored']
  if options.band is not None and len(idx) == 1 < feasible:
    # spaces whose sizes do not come in tiers (mbv2) may have one arch in a narrow band
    log.append(f'note: --rerank_band={options.band:g} leaves one arch, the largest feasible '
               f'one, so the proxies chose nothing; a wider band (e.g. 0.2) gives them a choice')
  return _finish(problem, idx, 0, log, k=_round_k(options.batch), progress=progress,
                 anytime=True)


def evolution(problem: Problem, rng: np.random.Generator, options: Options,
              progress=None) -> Result:
  """Regularized evolution with batched children; see the module docstring."""
  if options.population < 2 or options.tournament < 1 or options.evolution_samples < 1:
    raise SearchError('evolution needs --population >= 2, --tournament >= 1 and '
                      '--evolution_samples >= 1')
  check('evolution', problem)
  k = _round_k(options.batch)
  pool = np.flatnonzero(problem.table.feasible)
  archive = _Archive(problem, k)
  population = rng.choice(pool, min(options.population, len(pool)), replace=False)
  archive.add(population)
  members = list(population)
  log = [f'initial population of {len(population)} scored']
  if progress:
    progress(len(population))
  stalled = 0
  while archive.size < options.evolution_samples and stalled < 8:
    fitness = archive.fitness()
    current = np.asarray(members)
    picks = rng.integers(0, len(current), (k, min(options.tournament, len(current))))
    parents = current[picks[np.arange(k), fitness[current[picks]].argmax(-1)]]
    children = _mutate(problem, parents, rng)
    n_new = archive.add(children)
    members = (members + list(children))[-len(population):]  # the oldest leave
    log.append(f'generation {len(log)}: {len(children)} children, {n_new} new archs')
    if progress:
      progress(len(children))
    stalled = stalled + 1 if n_new == 0 else 0  # converged: only old archs come back
  i, fit = archive.best(log)
  return Result(int(i), problem.table.archs[i], fit,
                {n: float(v[list(archive.indices).index(i)]) for n, v in archive.values.items()},
                archive.size, 0.0, 0.0, log, trace(problem, archive.indices, archive.values),
                archive.evidence,
                ranked(problem, archive.indices, archive.fitness()[archive.indices]), archive.tied)


def _mutate(problem: Problem, parents, rng: np.random.Generator) -> np.ndarray:
  """One random change per parent (one choice, or the space's `mutate`), redrawn a few times
  until feasible; a parent with no feasible mutation found is copied. Returns table indices."""
  table = problem.table
  children = np.asarray(parents).copy()
  todo = np.ones(len(parents), bool)
  for _ in range(16):
    if table.rows is not None:  # vectorised over the parents' choice rows
      slots = np.asarray(table.slots)
      trial = table.rows[parents].copy()
      slot = rng.integers(0, trial.shape[1], len(parents))
      shift = rng.integers(1, slots[slot])
      n = np.arange(len(parents))
      trial[n, slot] = (trial[n, slot] + shift) % slots[slot]
      archs = problem.space.relax.from_rows(table.group, trial)
    else:
      archs = [problem.space.mutate(table.archs[p], rng) for p in parents]
      archs = [a if problem.space.group(a) == table.group else table.archs[p]
               for a, p in zip(archs, parents)]
    idx = table.index_of(archs)
    take = todo & table.feasible[idx]
    children[take] = idx[take]
    todo &= ~take
    if not todo.any():
      break
  return children


class _Archive:
  """Every arch scored so far (table indices), so repeats are not rescored and fitness is a
  rank over one growing pool."""

  def __init__(self, problem: Problem, k: int):
    self.problem, self.k = problem, k
    self.indices = np.zeros(0, np.int64)
    self.values: dict[str, np.ndarray] = {}
    self.evidence: dict = {}  # set by best()
    self.tied: list = []

  @property
  def size(self) -> int:
    return len(self.indices)

  def add(self, idx) -> int:
    idx = np.unique(np.asarray(idx, np.int64))
    new = idx[~np.isin(idx, self.indices)]
    if len(new):
      values = self.problem.score(new, self.k)
      self.indices = np.r_[self.indices, new]
      self.values = {n: np.r_[self.values.get(n, np.zeros(0)), v] for n, v in values.items()}
    return len(new)

  def fitness(self) -> np.ndarray:
    """Objective of every arch in the table: the rank over the archive, -inf if unseen."""
    out = np.full(len(self.problem.table.archs), -np.inf)
    ok = self.problem.table.feasible[self.indices]
    out[self.indices] = self.problem.objective(self.values, ok)
    return out

  def best(self, log=None):
    self.evidence = check_evidence(self.problem, self.values,
                                   self.problem.table.feasible[self.indices], 'the archive', log)
    fit = self.fitness()[self.indices]
    i, self.tied = best_position(self.problem, self.indices, fit)
    _note_tie(log, self.tied, 'the archive')
    return self.indices[i], float(fit[i])


def trace(problem: Problem, idx, values: dict) -> list[tuple[int, int]]:
  """The best arch by the objective among the first n scored, for n = 8, 16, 32, ... and
  all: what the search would have returned with a budget of n archs (the objective ranks
  within the pool, so each prefix is ranked on its own)."""
  idx = np.asarray(idx)
  steps = [n for n in 2 ** np.arange(3, 31) if n < len(idx)] + [len(idx)]
  out = []
  for n in steps:
    fit = problem.objective({k: v[:n] for k, v in values.items()},
                            problem.table.feasible[idx[:n]])
    out.append((int(n), int(idx[:n][best_position(problem, idx[:n], fit)[0]])))
  return out


def _order(problem: Problem, idx, fit) -> np.ndarray:
  """Positions in `idx` by the objective `fit`, best first; ties go to the larger arch
  (parameters, then MACs), then to `idx` order."""
  idx = np.asarray(idx, np.int64)
  costs = problem.table.costs
  fit = np.where(np.isfinite(fit), fit, -np.inf)
  return np.lexsort((np.arange(len(idx)), -costs['macs'][idx], -costs['params'][idx], -fit))


def best_position(problem: Problem, idx, fit) -> tuple[int, list[int]]:
  """(position in `idx` of the best by the objective `fit`, the table indices tied with it
  when more than one candidate shares the best finite value, largest first; else [])."""
  fit = np.asarray(fit, np.float64)
  order = _order(problem, idx, fit)
  top = fit[order[0]]
  tied = [int(idx[j]) for j in order if fit[j] == top] if np.isfinite(top) else []
  return int(order[0]), tied if len(tied) > 1 else []


def _note_tie(log, tied, where: str):
  if tied and log is not None:
    log.append(f'note: {len(tied)} candidates of {where} share the best objective; the largest '
               f'(parameters, then MACs) is taken')


def ranked(problem: Problem, idx, fit) -> list[int]:
  """The table indices `idx` with a finite objective `fit`, best first (ties: the larger
  first, as `best_position`)."""
  return [int(idx[j]) for j in _order(problem, idx, fit) if np.isfinite(fit[j])]


def _finish(problem: Problem, idx, scored: int, log, k: int | None = None,
            progress=None, anytime: bool = False) -> Result:
  """Scores the final candidates (table indices) and returns the best; `anytime`: with the
  `trace` of the best after each prefix of `idx`."""
  idx = np.asarray(idx, np.int64).reshape(-1)
  if not len(idx):
    raise obj.InfeasibleError('the search found no feasible arch; raise the budgets')
  k = k or problem.scorer.default_k(len(idx))
  values = {}
  for start in range(0, len(idx), k):
    part = problem.score(idx[start:start + k], k)
    values = {n: np.r_[values.get(n, np.zeros(0)), v] for n, v in part.items()}
    if progress:
      progress(len(part['latency_ms']))
  ok = problem.table.feasible[idx]
  evidence = check_evidence(problem, values, ok, 'the final pool', log, idx)
  fit = problem.objective(values, ok)
  i, tied = best_position(problem, idx, fit)
  if not np.isfinite(fit[i]):
    raise obj.InfeasibleError('the search found no feasible arch; raise the budgets')
  _note_tie(log, tied, 'the final pool')
  return Result(int(idx[i]), problem.table.archs[idx[i]], float(fit[i]),
                {n: float(v[i]) for n, v in values.items()}, scored + len(idx), 0.0, 0.0, log,
                trace(problem, idx, values) if anytime else [], evidence,
                ranked(problem, idx, fit), tied)


SEARCHERS: dict[str, Callable] = {'rerank': rerank, 'prune': prune, 'grad_prune': grad_prune,
                                  'random': random_search, 'evolution': evolution}
NEEDS_RELAXATION = ('prune', 'grad_prune')


def _pruning_steps(problem: Problem, options: Options) -> int:
  """Progress steps of `prune`: one per removal round down to two options per slot, then the
  last round."""
  mask = start_mask(problem, prune_with_optional(problem, options.prune_none))
  return int(mask.sum(-1).max()) - 1


PROGRESS_TOTAL = {  # progress-bar units per searcher (rounds or archs), from problem and options
    'rerank': lambda p, o: min(o.pool, int(p.table.feasible.sum())),
    'prune': _pruning_steps, 'grad_prune': lambda p, o: 1,
    'random': lambda p, o: min(o.random_samples, int(p.table.feasible.sum())),
    'evolution': lambda p, o: o.evolution_samples}


def get(name: str) -> Callable:
  if name not in SEARCHERS:
    raise SearchError(f'unknown --searcher={name!r}; choose one of {", ".join(SEARCHERS)}')
  return SEARCHERS[name]


def check(name: str, problem: Problem):
  """A one-line SearchError when the space cannot serve the searcher (before any work)."""
  get(name)
  if name in NEEDS_RELAXATION:
    _relaxation(problem, name)
  if name == 'evolution' and problem.table.rows is None and problem.space.mutate is None:
    raise SearchError(f'--searcher=evolution needs {problem.space.name} to define mutate() or '
                      f'a relaxation; use rerank or random')


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

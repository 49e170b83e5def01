"""What a searcher searches: the candidates a space offers with their costs (`SpaceTable`), and
the proxies, objective and limits that judge them (`Problem`). Nothing here names a space.

The table holds the archs the search knows, each with its predicted MCU cost and feasibility:
every arch of a space that can enumerate itself (NB201's 15,625, tinycnn's 1,032), or a sample
of a larger space's archs (mbv2), restricted to one group (archs sharing tensor shapes: one
compile). Archs a searcher reaches beyond it (evolution's children) are costed and added.

Costs come from the space's relaxed cost model (one batched, compiled call for many archs;
`interface.Relaxation.cost`) when it has one, else from lowering each arch to the hardware graph.
A space whose archs are choices (`relax`) also gives each arch a choice row [S]; `prune` and
`grad_prune` work on masks [S, O] over those choices.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.proxies import aggregate as agg_lib
from engine.scoring import one_hot_rows
from engine.search import objective as obj
from search_spaces import kernels

COST_CHUNK = 4096  # archs per compiled relaxed-cost call (one padded shape)


@dataclasses.dataclass
class SpaceTable:
  """The archs a search knows (one group), with predicted cost and feasibility."""
  space: object
  group: object
  archs: list                  # [U] arch objects
  costs: dict                  # cost name -> [U]
  valid: np.ndarray            # [U] output depends on the input
  feasible: np.ndarray         # [U] valid and within limits
  limits: dict
  input_shape: tuple
  num_classes: int
  device: str
  runtime: str
  rows: np.ndarray | None = None   # [U, S] choice rows (spaces with `relax`)

  def __post_init__(self):
    self._index = {self.space.encode(a): i for i, a in enumerate(self.archs)}

  @property
  def slots(self) -> tuple:
    return tuple(self.space.relax.slots(self.group))

  def codes(self) -> list[str]:
    return [self.space.encode(a) for a in self.archs]

  def refs(self) -> dict[str, float]:
    """Normalisers of the cost terms: the budget if one is set, else the largest known."""
    return {'latency_ms': self.limits.get('latency_ms', float(self.costs['latency_ms'].max())),
            'macs': float(self.costs['macs'].max())}

  def index_of(self, archs) -> np.ndarray:
    """Table indices of `archs`, costing and adding the ones not there yet."""
    new = [a for a in dict.fromkeys(archs, None) if self.space.encode(a) not in self._index]
    new = list({self.space.encode(a): a for a in new}.values())
    if new:
      costs = space_costs(self.space, self.group, new, self.input_shape, self.num_classes,
                          self.device, self.runtime)
      valid = _valid(self.space, self.group, new)
      start = len(self.archs)
      self.archs = self.archs + new
      self.costs = {k: np.r_[self.costs[k], costs[k]] for k in self.costs}
      self.valid = np.r_[self.valid, valid]
      self.feasible = np.r_[self.feasible, valid & obj.within_limits(costs, self.limits)]
      if self.rows is not None:
        self.rows = np.concatenate([self.rows, self.space.relax.to_rows(new)])
      for i, a in enumerate(new):
        self._index[self.space.encode(a)] = start + i
    return np.array([self._index[self.space.encode(a)] for a in archs], np.int64)

  # -- supernets (masks [K, S, O] over the choice rows)

  def _allowed(self, supermasks) -> np.ndarray:
    """[K, U]: every slot of arch u uses an option left in supernet k."""
    supermasks = np.asarray(supermasks) != 0
    return supermasks[:, np.arange(self.rows.shape[1]), self.rows].all(-1)

  def reachable(self, supermasks) -> np.ndarray:
    """Whether each supernet [K, S, O] (0/1) still contains a known feasible arch: [K] bool."""
    return (self._allowed(supermasks) & self.feasible).any(-1)

  def feasible_share(self, supermasks) -> np.ndarray:
    """Share of the valid known archs in each supernet [K, S, O] that are feasible: [K].

    Pruning rewards removals that keep this high, so the options a tight budget cannot afford
    go early instead of stranding the search with a single feasible arch at the end."""
    allowed = self._allowed(supermasks)
    return (allowed & self.feasible).sum(-1) / np.maximum((allowed & self.valid).sum(-1), 1)

  def inside(self, mask) -> np.ndarray:
    """Indices of the feasible known archs inside one supernet mask [S, O], in table order."""
    return np.flatnonzero(self._allowed(mask[None])[0] & self.feasible)

  def one_network(self, idx) -> bool:
    """Whether the archs `idx` (2 or more) are one network written several ways (the space's
    `same_network` maps their rows to one), so any of them is the same pick."""
    same = self.space.relax.same_network if self.space.relax is not None else None
    if same is None or len(idx) < 2:
      return False
    rows = same(self.rows[np.asarray(idx)])
    return bool((rows == rows[0]).all())

  def one_hot(self, idx) -> np.ndarray:
    """Masks [K, S, O] of table entries."""
    return one_hot_rows(self.space, self.group, self.rows[np.asarray(idx)])


def _valid(space, group, archs) -> np.ndarray:
  if space.relax is not None and space.relax.valid is not None:
    return np.asarray(space.relax.valid(space.relax.to_rows(archs)), bool)
  return np.ones(len(archs), bool)


def space_costs(space, group, archs, input_shape, num_classes, device, runtime) -> dict:
  """{cost name: [N]} of archs of one group: the relaxed cost model on one-hot masks in batched
  calls of one padded shape, or the lowered graphs one by one."""
  if space.relax is not None and space.relax.cost is not None:
    masks = one_hot_rows(space, group, space.relax.to_rows(archs))
    chunk = min(COST_CHUNK, -(-len(masks) // 1024) * 1024)
    parts = []
    for start in range(0, len(masks), chunk):
      part = masks[start:start + chunk]
      pad = np.repeat(part[-1:], chunk - len(part), 0)
      out = space.relax.cost(group, jnp.asarray(np.concatenate([part, pad])), device, runtime,
                             input_shape=input_shape, num_classes=num_classes)
      parts.append({k: np.asarray(out[k], np.float64)[:len(part)] for k in obj.COST_NAMES})
    return {k: np.concatenate([p[k] for p in parts]) for k in obj.COST_NAMES}
  import hardware
  rows = hardware.cost_rows({space.encode(a): space.lower(a, input_shape, num_classes)
                             for a in archs}, device, runtime)
  return {k: np.array([r[k] for r in rows], np.float64) for k in obj.COST_NAMES}


def group_positions(space, archs) -> dict:
  """{group: [positions in `archs`]}, groups in order of first appearance."""
  out: dict = {}
  for i, a in enumerate(archs):
    out.setdefault(space.group(a), []).append(i)
  return out


def grouped_costs(space, archs, input_shape, num_classes, device, runtime) -> dict:
  """{cost name: [N]} of archs of any groups (`space_costs` per group)."""
  costs = {k: np.zeros(len(archs)) for k in obj.COST_NAMES}
  for g, idx in group_positions(space, archs).items():
    part = space_costs(space, g, [archs[i] for i in idx], input_shape, num_classes, device,
                       runtime)
    for k in obj.COST_NAMES:
      costs[k][idx] = part[k]
  return costs


def choose_group(space, archs, costs, feasible, min_samples: int = 8):
  """TinyNAS's space optimisation (MCUNet, Lin et al. 2020) for spaces with several groups
  (e.g. width x resolution): the group whose feasible archs have the highest mean MACs (more
  computation that still fits tends to mean more accuracy). One group is then searched: one
  compile instead of one per group. Groups with fewer than `min_samples` feasible archs leave
  the proxies nothing to choose from and lose unless no group has that many."""
  macs: dict = {}
  for a, m, ok in zip(archs, costs['macs'], feasible):
    if ok:
      macs.setdefault(space.group(a), []).append(m)
  enough = {g: m for g, m in macs.items() if len(m) >= min_samples} or macs
  return max(enough, key=lambda g: np.mean(enough[g]))


def build_table(space, constraints: obj.Constraints, archs, input_shape, num_classes,
                costs: dict | None = None) -> SpaceTable:
  """The table of `archs` (any groups) under the constraints, restricted to one group (the
  only one, or `choose_group`'s); InfeasibleError naming the binding limit if none fits."""
  limits = constraints.limits()
  by_group = group_positions(space, archs)
  if costs is None:
    costs = grouped_costs(space, archs, input_shape, num_classes, constraints.device,
                          constraints.runtime)
  valid = np.zeros(len(archs), bool)
  for g, idx in by_group.items():
    valid[idx] = _valid(space, g, [archs[i] for i in idx])
  feasible = valid & obj.within_limits(costs, limits)
  if not feasible.any():
    raise obj.InfeasibleError(
        f'no {space.name} arch of the {len(archs)} considered fits {constraints.device}/'
        f'{constraints.runtime} (smallest {obj.binding_limits(costs, limits, valid)}); raise the '
        f'budgets or lower the reserves')
  group = next(iter(by_group))
  if len(by_group) > 1:
    group = choose_group(space, archs, costs, feasible)
  keep = np.asarray(by_group[group])
  kept = [archs[i] for i in keep]
  rows = space.relax.to_rows(kept) if space.relax is not None else None
  return SpaceTable(space, group, kept, {k: v[keep] for k, v in costs.items()}, valid[keep],
                    feasible[keep], limits, tuple(input_shape), num_classes,
                    constraints.device, constraints.runtime, rows)


@dataclasses.dataclass(frozen=True)
class Term:
  """An objective term: a proxy or an aggregate, with its orientation."""
  name: str
  higher_is_better: bool


NOT_DIFFERENTIABLE = ('linear_regions', 'params', 'flops')  # counts: zero gradient a.e.
# (params and flops enter grad_prune's objective through the relaxed cost model instead)


class Problem:
  """What a searcher needs: the table, a scorer over its space, the objective and limits.

  `proxy_names` are proxies and aggregates (`engine.proxies.aggregate`, e.g.
  `agg:params+synflow+2*jacob_cov:logrank`): each named one is a term of the objective; an
  aggregate's components are scored but only the aggregate counts. The scorer
  (`engine.scoring.Scorer` over the space's `Net`) keeps compiled functions per batch size
  across seeds (`reseed`), so a multi-seed run compiles once."""

  def __init__(self, table: SpaceTable, scorer, proxy_names, weights: obj.Weights,
               objective: str = 'hybrid'):
    if objective not in obj.OBJECTIVES:
      raise ValueError(f'unknown --objective={objective!r}; choose {" or ".join(obj.OBJECTIVES)}')
    self.table, self.scorer, self.weights, self.objective_name = table, scorer, weights, objective
    _, self.aggregates = agg_lib.split(proxy_names)
    requested = proxy_names.split(',') if isinstance(proxy_names, str) else list(proxy_names)
    requested = [n.strip() for n in requested if n.strip()]
    self.terms = [Term(n, scorer.higher_is_better[n]) for n in dict.fromkeys(requested)
                  if not agg_lib.is_aggregate(n)] + self.aggregates
    names = [t.name for t in self.terms]
    unknown = [n for n, _ in weights.proxies if n not in names]
    if unknown:  # a weight on nothing searched would be dropped without a word
      raise ValueError(f'--proxy_weights names {unknown[0]!r}, which is not a term of the '
                       f'objective; weight one of --proxies: {", ".join(names)}')
    self.refs = table.refs()
    self._grad_fn = None
    self.compile_s = 0.0
    self.run_s = 0.0

  @property
  def space(self):
    return self.table.space

  def reseed(self, seed: int):
    """New inputs and inits for `seed`; compiled functions are kept."""
    self.scorer.reseed(seed)

  def _timed(self, fn, *args):
    before = self.scorer.compile_s, self.scorer.run_s
    out = fn(*args)
    self.compile_s += self.scorer.compile_s - before[0]
    self.run_s += self.scorer.run_s - before[1]
    return out

  def score(self, idx, k: int | None = None) -> dict[str, np.ndarray]:
    """Proxy values and costs of the table's archs `idx`, `k` per compiled call."""
    idx = np.asarray(idx, np.int64)
    if self.table.rows is not None:
      values = self._timed(self.scorer.score_masks, self.table.group, self.table.one_hot(idx), k)
    else:
      values = self._timed(self.scorer.score_archs, self.table.group,
                           [self.table.archs[i] for i in idx], k)
    values.update({c: self.table.costs[c][idx] for c in obj.COST_NAMES})
    return values

  def score_supernets(self, masks, k: int | None = None) -> dict[str, np.ndarray]:
    """Proxy values and relaxed costs of supernet masks [M, S, O] (pruning)."""
    values = self._timed(self.scorer.score_masks, self.table.group, np.asarray(masks,
                                                                                np.float32), k)
    start = time.perf_counter()
    costs = self.table.space.relax.cost(self.table.group, jnp.asarray(masks, jnp.float32),
                                        self.table.device, self.table.runtime,
                                        input_shape=self.table.input_shape,
                                        num_classes=self.table.num_classes)
    values.update({c: np.asarray(costs[c], np.float64) for c in obj.COST_NAMES})
    self.run_s += time.perf_counter() - start
    return values

  def term_columns(self, values: dict) -> dict:
    """`values` with each aggregate term's column computed from its components."""
    columns = dict(values)
    for a in self.aggregates:
      flags = {c: values[c + '_flag'] for c in a.components if c + '_flag' in values}
      columns[a.name] = agg_lib.compute(a, values, flags)[0]
    return columns

  def evidence(self, values: dict, ok) -> dict:
    """Per objective term, over the `ok` candidates of a pool: how many are flagged (a flag or a
    non-finite value: it ranks last, as no measurement) and how many distinct values the rest
    take. A term with fewer than 2 distinct unflagged values cannot tell the candidates apart.
    An aggregate's entry also counts its flagged components (`components_flagged`: {name:
    count}, the nonzero ones); they rank last in that component."""
    columns = self.term_columns(values)
    out = {term.name: column_evidence(values, term.name, ok, columns[term.name])
           for term in self.terms}
    for a in self.aggregates:  # a rank sum is never flagged itself: count its components'
      flagged = {c: column_evidence(values, c, ok)['flagged'] for c in a.components
                 if c in values}
      out[a.name]['components_flagged'] = {c: k for c, k in flagged.items() if k}
    return out

  def objective(self, values: dict, ok) -> np.ndarray:
    """The objective over the pool `values` (ranks within the pool); -inf where not `ok`."""
    columns = self.term_columns(values)
    if self.objective_name == 'seed':
      return obj.seed(columns, self.terms, values, ok, self.weights, self.table.device)
    return obj.hybrid(columns, self.terms, values, ok, self.weights, self.refs)

  # -- gradients (grad_prune)

  def grad(self, mask) -> tuple[np.ndarray, float]:
    """(dJ/dmask [S, O], J) of the differentiable objective at one supernet mask.

    Reverse mode (one pass; for gradient proxies such as synflow and jacob_cov, themselves
    gradients, reverse-over-reverse, which the shared conv kernel supports). Where a proxy's
    code has no transpose rule, J is linearised once and pushed forward along the basis
    directions of the mask in one vmapped call (forward-over-reverse: about one pass per mask
    entry)."""
    # the limits and normalisers are arguments, not constants: problems that differ only in
    # them (the budgets of one space and dataset) share one program through the XLA cache
    args = (jnp.asarray(mask, jnp.float32), self.scorer.inputs_for(self.table.group),
            self._bounds())
    if self._grad_fn is None:
      start = time.perf_counter()
      try:
        with kernels.transposable_tangents():
          self._grad_fn = jax.jit(jax.value_and_grad(self._differentiable_objective)).lower(
              *args).compile()
      except NotImplementedError:
        self._grad_fn = jax.jit(self._value_and_forward_grad).lower(*args).compile()
      self.compile_s += time.perf_counter() - start
    start = time.perf_counter()
    value, g = jax.device_get(self._grad_fn(*args))
    self.run_s += time.perf_counter() - start
    return np.asarray(g, np.float64), float(value)

  def _value_and_forward_grad(self, mask, inputs, bounds=None):
    value, linear = jax.linearize(lambda m: self._differentiable_objective(m, inputs, bounds),
                                  mask)
    basis = jnp.eye(mask.size, dtype=mask.dtype).reshape((mask.size,) + mask.shape)
    return value, jax.vmap(linear)(basis).reshape(mask.shape)

  def gradient_weights(self) -> dict[str, float]:
    """Weight of each scored proxy in the differentiable objective: the objective's weight of
    a plain term, times the component's weight inside an aggregate (summed where a proxy is in
    several terms)."""
    out: dict[str, float] = {}
    for term in self.terms:
      parts = ([(c, term.weight(i)) for i, c in enumerate(term.components)]
               if isinstance(term, agg_lib.Aggregate) else [(term.name, 1.0)])
      for name, w in parts:
        out[name] = out.get(name, 0.0) + self.weights.proxy(term.name) * w
    return {n: w for n, w in out.items() if w != 0}

  def _bounds(self) -> dict:
    """The table's limits (every limitable cost; inf where unset) and the cost normalisers, as
    float32 arrays."""
    limits = {c: self.table.limits.get(c, np.inf) for c in obj.LIMITABLE}
    return jax.tree_util.tree_map(jnp.float32, {'limits': limits, 'refs': dict(self.refs)})

  def _differentiable_objective(self, mask, inputs, bounds=None):
    """J (lower is better): each proxy's sign(v) log|v| (gradient: its relative change),
    oriented and weighted as in the objective, plus the weighted cost terms and a hinge penalty
    on the limits (relative overshoot). `params` and `flops` come from the space's relaxed cost
    model (differentiable in the mask); counts without one (linear_regions) have no gradient."""
    weights = self.gradient_weights()
    values = self.scorer.traced(self.table.group, mask, inputs,
                                [n for n in weights if n not in NOT_DIFFERENTIABLE])
    costs = self.table.space.relax.cost(self.table.group, mask[None], self.table.device,
                                        self.table.runtime, input_shape=self.table.input_shape,
                                        num_classes=self.table.num_classes)
    costs = {k: v[0] for k, v in costs.items()}
    values.update({n: costs[c] for n, c in (('params', 'params'), ('flops', 'macs'))
                   if n in weights})
    total = 0.0
    for name, value in values.items():
      # sign(v) log|v|: its gradient is the relative change dv / |v|, and its value moves with
      # it (so finite differences of J check the gradient)
      value = jnp.sign(jax.lax.stop_gradient(value)) * jnp.log(jnp.abs(value) + 1e-12)
      total += weights[name] * (-value if self.scorer.higher_is_better[name] else value)
    bounds = self._bounds() if bounds is None else bounds
    refs = bounds['refs']
    total += self.weights.flops * costs['macs'] / refs['macs']
    total += self.weights.latency * costs['latency_ms'] / refs['latency_ms']
    total += obj.soft_penalty(costs, bounds['limits'])
    return total


def column_evidence(values: dict, name: str, ok, column=None) -> dict:
  """Over the `ok` candidates: how many of column `name` (`values[name]` unless given) are
  flagged (its `_flag` or a non-finite value) and how many distinct values the rest take."""
  ok = np.asarray(ok, bool)
  v = np.asarray(values[name] if column is None else column, np.float64)[ok]
  flagged = ~np.isfinite(v)
  if name + '_flag' in values:
    flagged |= np.asarray(values[name + '_flag'])[ok] != 0
  return {'candidates': int(ok.sum()), 'flagged': int(flagged.sum()),
          'distinct': int(len(np.unique(v[~flagged])))}


def make_scorer(space, proxy_names, config, seed: int, images):
  """The engine's scorer (`engine.scoring.Scorer`) of `space` for the searchers and jobs.
  `proxy_names` are plain proxies (aggregates split off)."""
  from engine import proxies, scoring
  return scoring.Scorer(space, proxy_names, proxies.ScoreSettings.from_config(config), seed,
                        images, config.batch_candidates, config.candidate_chunk)

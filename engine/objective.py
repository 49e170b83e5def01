"""The hardware-aware search objective: a MicroNAS-style hybrid under hard MCU constraints.

Score (higher is better) of a pool of candidates scored together:

  sum_p w_p * rank_p  -  w_flops * MACs / MACs_ref  -  w_latency * latency / latency_ref

rank_p is the candidate's percentile rank in [0, 1] by proxy p (oriented so that better is
higher: a low NTK condition number and many linear regions rank high). Ranks, not raw values,
because TE-NAS showed that NTK kappa and region counts live on unrelated scales and combine best
as ranks; a rank is also robust to the inf/nan a singular NTK produces (those rank last).
MACs and latency come from the hardware model (`search_spaces.nb201_graph.cost`), normalised by
the budget (or the largest value in the space), so their weights are comparable to one rank.

Hard constraints (never traded off): peak SRAM <= device SRAM - reserve, flash <= device flash -
reserve, latency <= budget, energy <= budget. An infeasible candidate scores -inf, so it can
never win; if no arch of the space is feasible the search fails before it starts
(`InfeasibleError`, a ValueError: one line and exit 2 on the command line). Disconnected archs
(no path from input to output through non-`none` ops) are treated as infeasible too: their
output ignores the input.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from search_spaces import nb201

COST_NAMES = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params')


class InfeasibleError(ValueError):
  """No architecture satisfies the constraints; the message names the binding limit."""


@dataclasses.dataclass(frozen=True)
class Constraints:
  """Where the network must run and the limits it must meet (None: no budget)."""
  device: str = 'stm32f746'
  runtime: str = 'cmsis-nn'
  dataset: str = 'cifar10'
  sram_reserve_kb: float = 0.0
  flash_reserve_kb: float = 0.0
  latency_budget_ms: float | None = None
  energy_budget_mj: float | None = None

  def limits(self) -> dict[str, float]:
    """Cost name -> largest allowed value."""
    import hardware
    dev = hardware.get_device(self.device)
    hardware.get_runtime(self.runtime)  # ValueError naming the valid runtimes
    for name in ('sram_reserve_kb', 'flash_reserve_kb'):
      if getattr(self, name) < 0:
        raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
    for name in ('latency_budget_ms', 'energy_budget_mj'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f'--{name} must be > 0 (or unset for no budget), got {value}')
    out = {'sram_bytes': (dev.sram_kb - self.sram_reserve_kb) * 1024,
           'flash_bytes': (dev.flash_kb - self.flash_reserve_kb) * 1024}
    if self.latency_budget_ms is not None:
      out['latency_ms'] = self.latency_budget_ms
    if self.energy_budget_mj is not None:
      out['energy_mj'] = self.energy_budget_mj
    return out

  def net_config(self) -> nb201.NB201Config:
    """The deployed network (NB201's C=16, N=5): what the costs are about."""
    return nb201.NB201Config.for_dataset(self.dataset)


@dataclasses.dataclass(frozen=True)
class Weights:
  """Objective weights: per proxy (default 1 for every proxy searched with), MACs, latency."""
  proxies: tuple[tuple[str, float], ...] = ()
  flops: float = 0.0
  latency: float = 0.0
  feasible: float = 1.0  # pruning: share of the archs left in a supernet that are feasible

  def proxy(self, name: str) -> float:
    return dict(self.proxies).get(name, 1.0)


def parse_weights(spec: str) -> tuple[tuple[str, float], ...]:
  """'ntk_cond=1,linear_regions=0.5' -> (('ntk_cond', 1.0), ('linear_regions', 0.5))."""
  out = []
  for item in (s.strip() for s in (spec or '').split(',')):
    if not item:
      continue
    name, sep, value = item.partition('=')
    try:
      out.append((name.strip(), float(value)))
    except ValueError:
      sep = ''
    if not sep:
      raise ValueError(f'bad --proxy_weights item {item!r}; use name=number, e.g. '
                       f'ntk_cond=1,linear_regions=0.5')
  return tuple(out)


def cost(masks, constraints: Constraints) -> dict[str, np.ndarray]:
  """Predicted MCU cost of masks [K, 6, 5] (one-hot or multi-hot) as numpy [K] arrays."""
  from search_spaces import nb201_graph
  out = nb201_graph.cost(np.asarray(masks, np.float32), constraints.net_config(),
                         constraints.device, constraints.runtime)
  return {k: np.asarray(out[k], np.float64) for k in COST_NAMES}


def within_limits(costs: dict, limits: dict) -> np.ndarray:
  ok = np.ones(np.shape(costs['latency_ms']), bool)
  for name, limit in limits.items():
    ok &= np.asarray(costs[name]) <= limit
  return ok


@dataclasses.dataclass
class SpaceTable:
  """Every arch of the space with its predicted cost and feasibility (canonical-code order)."""
  ops: np.ndarray            # [15625, 6]
  costs: dict                # name -> [15625]
  feasible: np.ndarray       # [15625] bool: within limits and connected
  limits: dict

  def refs(self) -> dict[str, float]:
    """Normalisers of the cost terms: the budget if one is set, else the space's maximum."""
    return {'latency_ms': self.limits.get('latency_ms', float(self.costs['latency_ms'].max())),
            'macs': float(self.costs['macs'].max())}

  def reachable(self, supermasks) -> np.ndarray:
    """Whether each supernet [K, 6, 5] (0/1) still contains a feasible arch: [K] bool."""
    supermasks = np.asarray(supermasks) != 0
    # allowed[k, a] = every edge e of arch a uses an op left in supernet k.
    allowed = supermasks[:, np.arange(nb201.NUM_EDGES), self.ops].all(-1)
    return (allowed & self.feasible).any(-1)

  def feasible_share(self, supermasks) -> np.ndarray:
    """Share of the connected archs in each supernet [K, 6, 5] that are feasible: [K].

    Pruning rewards removals that keep this high, so the ops a tight budget cannot afford go
    early instead of stranding the search with a single feasible arch at the end."""
    supermasks = np.asarray(supermasks) != 0
    allowed = supermasks[:, np.arange(nb201.NUM_EDGES), self.ops].all(-1)
    connected = allowed & nb201.is_connected(self.ops)
    return (allowed & self.feasible).sum(-1) / np.maximum(connected.sum(-1), 1)


@functools.lru_cache(maxsize=16)
def space_table(constraints: Constraints) -> SpaceTable:
  """Costs all 15,625 archs in batched calls (about a second once compiled) and checks them."""
  ops = nb201.all_ops()
  return table_from_costs(cost(nb201.ops_to_mask(ops), constraints), constraints)


def table_from_costs(costs: dict, constraints: Constraints) -> SpaceTable:
  """The space table of precomputed costs (canonical-code order), e.g. from a disk cache."""
  ops = nb201.all_ops()
  limits = constraints.limits()
  feasible = within_limits(costs, limits) & nb201.is_connected(ops)
  return SpaceTable(ops, costs, feasible, limits)


def check_feasible(table: SpaceTable, constraints: Constraints):
  """Raises InfeasibleError naming the limit that rules everything out."""
  if table.feasible.any():
    return
  connected = nb201.is_connected(table.ops)
  parts = []
  for name, limit in table.limits.items():
    best = float(table.costs[name][connected].min())
    if best > limit:
      parts.append(f'{name} {best:.4g} > limit {limit:.4g}')
  why = '; '.join(parts) or 'no single arch meets all limits at once'
  raise InfeasibleError(
      f'no NB201 arch fits {constraints.device}/{constraints.runtime} under the constraints '
      f'(smallest {why}); raise the budgets or lower the reserves')


def percentile_rank(values, higher_is_better: bool) -> np.ndarray:
  """Rank in (0, 1] (1 = best; ties share their mean rank); nan counts as the worst."""
  v = np.asarray(values, np.float64)
  v = np.where(np.isnan(v), -np.inf if higher_is_better else np.inf, v)
  goodness = v if higher_is_better else -v
  return scipy.stats.rankdata(goodness) / len(v)


def hybrid(values: dict, proxies, costs: dict, ok, weights: Weights, refs: dict) -> np.ndarray:
  """The objective over a pool (higher is better); -inf where `ok` is False."""
  ok = np.asarray(ok, bool)
  total = np.zeros(len(ok))
  for p in proxies:
    total += weights.proxy(p.name) * percentile_rank(values[p.name], p.higher_is_better)
  total -= weights.flops * np.asarray(costs['macs']) / refs['macs']
  total -= weights.latency * np.asarray(costs['latency_ms']) / refs['latency_ms']
  return np.where(ok, total, -np.inf)


def soft_penalty(costs: dict, limits: dict):
  """Sum of relative overshoots over the limits (jnp, differentiable): guides gradients."""
  return sum(jax.nn.relu(costs[name] / limit - 1.0) for name, limit in limits.items())


def soft_cost(masks, constraints: Constraints) -> dict:
  """Differentiable cost of soft masks [K, 6, 5] (jnp in, jnp out)."""
  from search_spaces import nb201_graph
  return nb201_graph.cost(jnp.asarray(masks, jnp.float32), constraints.net_config(),
                          constraints.device, constraints.runtime)

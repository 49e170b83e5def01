"""The search objective and its hard limits, the same for every search space and searcher.

Hard limits (never traded off): peak SRAM <= device SRAM - reserve, flash <= device flash -
reserve, predicted latency <= budget, predicted energy <= budget (`Constraints.limits`). An
infeasible candidate scores -inf, so it never wins; when no candidate of the space is feasible
the search fails before it starts, naming the binding limit (`InfeasibleError`, a ValueError:
one line and exit 2 on the command line).

Objectives, chosen by name (`OBJECTIVES`, `--objective`):
* `hybrid` (the default), MicroNAS-style:
    sum_p w_p * rank_p  -  w_flops * MACs / MACs_ref  -  w_latency * latency / latency_ref
  rank_p is the candidate's percentile rank in (0, 1] by proxy p among the candidates scored
  together (oriented so that higher is better). Ranks, not raw values, because TE-NAS showed that
  proxies live on unrelated scales and combine best as ranks; a rank is also robust to the
  inf/nan a flagged proxy produces (those rank last). MACs and latency are normalised by the
  budget (or the largest value among the candidates the search knows), so their weights are
  comparable to one rank.
* `seed`: the seed project's accuracy / (memory x power): the proxy terms' summed rank, as a
  percentile, over peak SRAM (KB) times the average power (mW) at one inference per second
  (energy per inference plus sleep power for the rest of the second); an inference must also fit
  its period and the power the device's active power.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import scipy.stats

COST_NAMES = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params')
LIMITABLE = COST_NAMES[:4]  # the costs `Constraints.limits` may bound
OBJECTIVES = ('hybrid', 'seed')
SEED_RATE_HZ = 1.0  # the seed objective's inference rate


class InfeasibleError(ValueError):
  """No architecture satisfies the constraints; the message names the binding limit."""


@dataclasses.dataclass(frozen=True)
class Constraints:
  """Where the network must run and the limits it must meet (None: no budget)."""
  device: str = 'stm32f746'
  runtime: str = 'cmsis-nn'
  sram_reserve_kb: float = 0.0
  flash_reserve_kb: float = 0.0
  latency_budget_ms: float | None = None
  energy_budget_mj: float | None = None

  def limits(self) -> dict[str, float]:
    """Cost name -> largest allowed value."""
    import hardware
    dev = hardware.get_device(self.device)
    hardware.get_runtime(self.runtime)  # ValueError naming the valid runtimes
    for name, memory, size in (('sram_reserve_kb', 'SRAM', dev.sram_kb),
                               ('flash_reserve_kb', 'flash', dev.flash_kb)):
      if getattr(self, name) < 0:
        raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
      if getattr(self, name) >= size:
        raise ValueError(f'--{name}={getattr(self, name):g} leaves no {memory} on {dev.name} '
                         f'({size:g} KB); reserve less than {size:g} KB')
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


def within_limits(costs: dict, limits: dict) -> np.ndarray:
  ok = np.ones(np.shape(costs['latency_ms']), bool)
  for name, limit in limits.items():
    ok &= np.asarray(costs[name]) <= limit
  return ok


def binding_limits(costs: dict, limits: dict, valid=None) -> str:
  """Why nothing fits: each limit that even the cheapest (valid) candidate exceeds."""
  keep = np.ones(np.shape(costs['latency_ms']), bool) if valid is None else np.asarray(valid)
  parts = []
  for name, limit in limits.items():
    best = float(np.min(np.asarray(costs[name])[keep])) if keep.any() else float('inf')
    if best > limit:
      parts.append(f'{name} {best:.4g} > limit {limit:.4g}')
  return '; '.join(parts) or 'no single arch meets all limits at once'


def percentile_rank(values, higher_is_better: bool) -> np.ndarray:
  """Rank in (0, 1] (1 = best; ties share their mean rank); nan counts as the worst."""
  v = np.asarray(values, np.float64)
  v = np.where(np.isnan(v), -np.inf if higher_is_better else np.inf, v)
  goodness = v if higher_is_better else -v
  return scipy.stats.rankdata(goodness) / len(v)


def proxy_terms(values: dict, terms, weights: Weights) -> np.ndarray:
  """sum_p w_p * rank_p over the pool (terms: objects with name and higher_is_better)."""
  n = len(np.asarray(values[terms[0].name]))
  total = np.zeros(n)
  for p in terms:
    total += weights.proxy(p.name) * percentile_rank(values[p.name], p.higher_is_better)
  return total


def hybrid(values: dict, terms, costs: dict, ok, weights: Weights, refs: dict) -> np.ndarray:
  """The hybrid objective over a pool (higher is better); -inf where `ok` is False."""
  ok = np.asarray(ok, bool)
  total = proxy_terms(values, terms, weights)
  total -= weights.flops * np.asarray(costs['macs']) / refs['macs']
  total -= weights.latency * np.asarray(costs['latency_ms']) / refs['latency_ms']
  return np.where(ok, total, -np.inf)


def average_power_mw(energy_mj, latency_ms, rate_hz, sleep_power_mw):
  """Mean power when running one inference every 1/rate_hz seconds and sleeping otherwise."""
  busy = np.clip(np.asarray(latency_ms) * rate_hz / 1e3, 0.0, 1.0)
  return np.asarray(energy_mj) * rate_hz + sleep_power_mw * (1.0 - busy)


def seed_feasible(costs: dict, device: str, rate_hz: float = SEED_RATE_HZ) -> np.ndarray:
  """The seed objective's own limits: an inference fits its period, the average power the
  device's active power."""
  import hardware
  dev = hardware.get_device(device)
  power = average_power_mw(costs['energy_mj'], costs['latency_ms'], rate_hz, dev.sleep_power_mw)
  return (np.asarray(costs['latency_ms']) <= 1e3 / rate_hz) & (power <= dev.active_power_mw)


def seed(values: dict, terms, costs: dict, ok, weights: Weights, device: str,
         rate_hz: float = SEED_RATE_HZ) -> np.ndarray:
  """The seed objective over a pool (higher is better); -inf where infeasible."""
  import hardware
  dev = hardware.get_device(device)
  accuracy = percentile_rank(proxy_terms(values, terms, weights), True)
  power = average_power_mw(costs['energy_mj'], costs['latency_ms'], rate_hz, dev.sleep_power_mw)
  value = accuracy / (np.asarray(costs['sram_bytes'], np.float64) / 1024.0 * power)
  return np.where(np.asarray(ok, bool) & seed_feasible(costs, device, rate_hz), value, -np.inf)


def soft_penalty(costs: dict, limits: dict):
  """Sum of relative overshoots over the limits (jnp, differentiable): guides gradients."""
  return sum(jax.nn.relu(costs[name] / limit - 1.0) for name, limit in limits.items())

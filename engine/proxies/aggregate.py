"""Proxy aggregates: several proxies' ranks over a pool of archs combined into one score.

Usable wherever a proxy name is (`--proxies=nwot,tenas,agg:nwot+synflow+flops:logrank`):

* `tenas`: TE-NAS's combination, the sum of the ranks of `ntk_cond` and `linear_regions`
  (Chen et al., ICLR 2021). Write `agg:ntk_cond_independent+linear_regions` for the variant that
  is practical on CPU.
* `az_nas`: AZ-NAS's score (Lee & Ham, CVPR 2024), the same as
  `agg:az_expressivity+az_progressivity+az_trainability+flops:logrank` (`engine.proxies.az_nas`;
  the authors sum log(rank / n) of the four terms over the pool, ranks ascending).
* `agg:A+B+...` or `agg:A+B+...:rank`: sum of the components' ranks (1 = worst, n = best).
* `agg:A+B+...:logrank`: sum of the logs of the components' percentile ranks (rank / n), as
  AZ-NAS (Lee & Ham, CVPR 2024) combines its proxies; the product of percentile ranks, so an arch
  that is poor on any one component is pulled down harder than by the plain rank sum.
* Weights: `W*A` inside either form multiplies that component's term by W > 0
  (`agg:params+synflow+2*jacob_cov:logrank`). Fit weights only on part of the archs and judge
  them on the rest (`experiments.select_aggregate --fit_weights`).

Every rank is over the archs scored together (the pool), with each component oriented so that
higher is better (a low NTK condition number ranks high) and ties sharing their mean rank
(scipy.stats.rankdata). Ranks, because the components live on unrelated scales.

A flagged or non-finite component value (a singular NTK, a synflow with no path to the output)
carries no information about the arch, so it takes the worst rank: every such arch ties below all
valid ones. The arch stays in the aggregate, and the components that were put last are reported
per arch (`flagged_components`) so a table can count them.

Aggregates are computed from the component columns after scoring: `split` expands the requested
names so the scorer computes each component once, however many aggregates use it.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import stats

from engine import proxies as proxies_lib

PREFIX = 'agg:'
METHODS = ('rank', 'logrank')
NAMED = {'tenas': (('ntk_cond', 'linear_regions'), 'rank'),
         'az_nas': (('az_expressivity', 'az_progressivity', 'az_trainability', 'flops'),
                    'logrank')}


class AggregateError(proxies_lib.ProxyError):
  """Malformed aggregate name; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Aggregate:
  name: str                  # the column name: 'tenas' or the normalised 'agg:...' spelling
  components: tuple[str, ...]
  method: str                # 'rank' or 'logrank'
  higher_is_better: bool = True
  weights: tuple[float, ...] = ()  # one per component; empty = all 1

  def weight(self, i: int) -> float:
    return self.weights[i] if self.weights else 1.0


def is_aggregate(name: str) -> bool:
  return name in NAMED or name.startswith(PREFIX)


def parse(name: str) -> Aggregate:
  """'tenas' | 'agg:A+B[+...][:rank|:logrank]' -> Aggregate, components checked in the registry."""
  name = name.strip()
  if name in NAMED:
    components, method = NAMED[name]
    return Aggregate(name, components, method)
  if not name.startswith(PREFIX):
    raise AggregateError(f'{name!r} is not an aggregate; use tenas or agg:A+B[:logrank]')
  body, _, method = name[len(PREFIX):].partition(':')
  method = method or 'rank'
  if method not in METHODS:
    raise AggregateError(f'unknown aggregate method {method!r} in {name!r}; use '
                         f'{" or ".join(METHODS)}, e.g. agg:nwot+synflow:logrank')
  terms = {}
  for term in (t.strip() for t in body.split('+') if t.strip()):
    weight, name_ = _weighted_term(term, name)
    terms.setdefault(name_, weight)
  components = tuple(terms)
  if len(components) < 2:
    raise AggregateError(f'aggregate {name!r} needs at least two proxies joined by +, e.g. '
                         f'agg:nwot+synflow+flops')
  nested = [c for c in components if is_aggregate(c)]
  if nested:
    raise AggregateError(f'aggregate {name!r} contains the aggregate {nested[0]!r}; list its '
                         f'proxies instead')
  proxies_lib.get(list(components))  # unknown component -> ProxyError naming the choices
  suffix = '' if method == 'rank' else f':{method}'
  weights = tuple(terms[c] for c in components)
  spelled = [c if w == 1.0 else f'{w:g}*{c}' for c, w in zip(components, weights)]
  return Aggregate(f'{PREFIX}{"+".join(spelled)}{suffix}', components, method,
                   weights=() if all(w == 1.0 for w in weights) else weights)


def _weighted_term(term: str, name: str) -> tuple[float, str]:
  """'W*proxy' -> (W, proxy); 'proxy' -> (1, proxy)."""
  if '*' not in term:
    return 1.0, term
  weight, _, proxy = term.partition('*')
  try:
    value = float(weight)
  except ValueError:
    value = float('nan')
  if not value > 0 or not np.isfinite(value):
    raise AggregateError(f'bad weight {weight!r} in {name!r}; write a positive number before '
                         f'the proxy, e.g. agg:params+2*jacob_cov:logrank')
  return value, proxy.strip()


def split(names) -> tuple[list[str], list[Aggregate]]:
  """Requested names (comma-separated string or list) -> (proxies to score, aggregates).

  The proxies are those asked for by name, then each aggregate's components not already there,
  each once; an unknown plain proxy fails in one line as in `proxies.get`."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  aggregates = list({a.name: a for a in (parse(n) for n in names if is_aggregate(n))}.values())
  plain = [n for n in names if not is_aggregate(n)]
  wanted = plain + [c for a in aggregates for c in a.components]
  if not wanted:
    raise proxies_lib.ProxyError(f'no proxy given; choose from {", ".join(proxies_lib.REGISTRY)}'
                                 f' or an aggregate (tenas, agg:A+B)')
  return [p.name for p in proxies_lib.get(wanted)], aggregates


def valid_mask(values, flags=None) -> np.ndarray:
  """Finite and not flagged (flag 0 or no flag column)."""
  valid = np.isfinite(np.asarray(values, np.float64))
  if flags is not None:
    valid &= np.asarray(flags) == 0
  return valid


def oriented_ranks(values, higher_is_better: bool, valid) -> np.ndarray:
  """Ranks 1..n with n the best; invalid entries tie for the worst ranks (mean rank)."""
  v = np.asarray(values, np.float64)
  goodness = np.where(valid, v if higher_is_better else -v, -np.inf)
  return stats.rankdata(goodness)


def compute(agg: Aggregate, columns: dict, flags: dict | None = None):
  """(score [n], flagged_components [n] list of names) of `agg` over the pool in `columns`.

  `columns` maps each component to its values [n]; `flags` maps it to its flag array [n]
  (0 = fine) when it has one."""
  flags = flags or {}
  n = len(np.asarray(columns[agg.components[0]]))
  total = np.zeros(n)
  flagged = [[] for _ in range(n)]
  for i, name in enumerate(agg.components):
    valid = valid_mask(columns[name], flags.get(name))
    ranks = oriented_ranks(columns[name], proxies_lib.REGISTRY[name].higher_is_better, valid)
    total += agg.weight(i) * (ranks if agg.method == 'rank' else np.log(ranks / n))
    for row in np.flatnonzero(~valid):
      flagged[row].append(name)
  return total, flagged


# -- choosing an aggregate without fooling ourselves


def split_archs(n: int, select_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random split of range(n) into (selection, held-out) index arrays, both sorted."""
  if not 0.0 < select_fraction < 1.0:
    raise ValueError(f'select_fraction must be in (0, 1), got {select_fraction}; e.g. 0.5')
  order = np.random.default_rng(seed).permutation(n)
  cut = int(round(select_fraction * n))
  if cut < 3 or n - cut < 3:
    raise ValueError(f'{n} archs are too few to split {select_fraction:.2f} / '
                     f'{1 - select_fraction:.2f} (each side needs >= 3); score more archs')
  return np.sort(order[:cut]), np.sort(order[cut:])


def candidate_aggregates(names, max_components: int, methods=METHODS) -> list[Aggregate]:
  """Every aggregate of 2..max_components of `names` under each method, in a fixed order."""
  names = list(dict.fromkeys(names))
  return [parse(f'{PREFIX}{"+".join(combo)}:{method}')
          for k in range(2, min(max_components, len(names)) + 1)
          for combo in itertools.combinations(names, k) for method in methods]


def score_on(agg: Aggregate, columns: dict, flags: dict, rows) -> np.ndarray:
  """`agg` on the archs `rows` of the columns, its ranks taken over that pool only."""
  pool = {n: np.asarray(columns[n])[rows] for n in agg.components}
  pool_flags = {n: np.asarray(flags[n])[rows] for n in agg.components if n in flags}
  return compute(agg, pool, pool_flags)[0]


def spearman_on(agg: Aggregate, columns: dict, flags: dict, acc, rows) -> float:
  """Spearman rho of `agg` with accuracy over the pool `rows` (`score_on`)."""
  return float(stats.spearmanr(score_on(agg, columns, flags, rows),
                               np.asarray(acc)[rows]).statistic)

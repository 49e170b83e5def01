"""Latency and energy: a linear model over per-node work features, and its calibration.

latency_ms = sum_n mult_n * features_n . cycles / (clock_MHz * 1e3): MACs by kernel class
(kxk conv, pointwise, depthwise, dense), pooling reads, elementwise ops, activation and weight
traffic, a per-kernel-call overhead and a per-inference overhead.  Node multiplicities come from
the (soft) template, so latency is differentiable in gates and widths; it is linear in the
cycle coefficients, which makes calibration a small, well-posed fit.

energy_mJ = active power (mW) x latency (ms) / 1000.
"""

from __future__ import annotations

import csv
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def latency_ms(features, cycles, clock_mhz) -> jax.Array:
  """features [..., P] x cycles-per-unit [P] at clock_mhz -> milliseconds."""
  return jnp.asarray(features) @ jnp.asarray(cycles, jnp.float32) / (clock_mhz * 1e3)


def energy_mj(latency, power_mw) -> jax.Array:
  return jnp.asarray(latency) * power_mw / 1e3


@functools.partial(jax.jit, static_argnames=('num_groups', 'steps'))
def _fit(features, targets, weights, groups, log_init, prior_weight, learning_rate,
         num_groups: int, steps: int):
  features = features.astype(jnp.float32)
  # a per-feature unit so the optimiser sees comparable magnitudes
  unit = jnp.exp(log_init)
  log_y = jnp.log(targets)

  def predict(params):
    delta, log_scale = params
    per_row = features @ (unit * jnp.exp(delta))
    return jnp.log(jnp.maximum(per_row, 1e-30)) + log_scale[groups]

  def loss(params):
    err = (predict(params) - log_y) ** 2
    fit = jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1e-9)
    return fit + prior_weight * jnp.mean(params[0] ** 2)

  # start each group's scale at its weighted median-free mean log ratio
  base = jnp.log(jnp.maximum(features @ unit, 1e-30))
  num = jax.ops.segment_sum(weights * (log_y - base), groups, num_groups)
  den = jax.ops.segment_sum(weights, groups, num_groups)
  params = (jnp.zeros_like(log_init), num / jnp.maximum(den, 1e-9))
  opt = optax.adam(learning_rate)
  state = opt.init(params)

  def step(carry, _):
    params, state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = opt.update(grads, state)
    return (optax.apply_updates(params, updates), state), value

  (params, _), history = jax.lax.scan(step, (params, state), None, length=steps)
  delta, log_scale = params
  return unit * jnp.exp(delta), jnp.exp(log_scale), history


def fit_shared(features, targets, init, groups=None, weights=None, num_groups=None,
               prior_weight: float = 0.0, steps: int = 2000, learning_rate: float = 0.05):
  """Fit targets ~ scale[group] * features @ coeffs with coeffs > 0, in log space.

  features [M, P], targets [M] (> 0), init [P] (> 0; also the prior: `prior_weight`
  penalises log(coeffs / init)^2, the per-group scales are free).  Rows with weight 0 are
  ignored (leave-one-out).  Returns (coeffs [P], scales [G], loss history).
  """
  features = jnp.asarray(features, jnp.float32)
  m = features.shape[0]
  groups = jnp.zeros(m, jnp.int32) if groups is None else jnp.asarray(groups, jnp.int32)
  num_groups = int(np.max(np.asarray(groups))) + 1 if num_groups is None else num_groups
  weights = jnp.ones(m) if weights is None else jnp.asarray(weights, jnp.float32)
  log_init = jnp.log(jnp.asarray(init, jnp.float32))
  return _fit(features, jnp.asarray(targets, jnp.float32), weights, groups, log_init,
              jnp.float32(prior_weight), jnp.float32(learning_rate), num_groups, steps)


def calibrate(features, measured_ms, init_cycles, clock_mhz: float, prior_weight: float = 0.0,
              steps: int = 2000, learning_rate: float = 0.05, weights=None) -> np.ndarray:
  """Cycles-per-unit coefficients of one (device, runtime) from measured latencies.

  features: [M, P] latency features of the measured models (`cost(...)['features']`);
  measured_ms: [M]; init_cycles: prior coefficients (e.g. `devices.coefficients`).
  """
  coeffs, scale, _ = fit_shared(features, np.asarray(measured_ms) * clock_mhz * 1e3,
                                init_cycles, weights=weights, prior_weight=prior_weight,
                                steps=steps, learning_rate=learning_rate)
  return np.asarray(coeffs * scale[0])


def load_latency_csv(path: str, name_column: str = 'model',
                     latency_column: str = 'latency_ms') -> tuple[list[str], np.ndarray]:
  """(names, latencies) from a CSV with a model-name column and a latency column."""
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if r.get(latency_column)]
  return [r[name_column] for r in rows], np.array([float(r[latency_column]) for r in rows])


def calibrate_from_csv(path: str, features_by_name: dict, init_cycles, clock_mhz: float,
                       **kw) -> np.ndarray:
  names, measured = load_latency_csv(path)
  missing = sorted(set(names) - set(features_by_name))
  if missing:
    raise ValueError(f'no features for {missing}; known: {", ".join(sorted(features_by_name))}')
  feats = np.stack([np.asarray(features_by_name[n]) for n in names])
  return calibrate(feats, measured, init_cycles, clock_mhz, **kw)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
  from scipy import stats  # local: only validation needs scipy
  return float(stats.kendalltau(np.asarray(a), np.asarray(b)).statistic)

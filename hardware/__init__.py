"""MCU hardware model: one layer-graph IR, device catalog, memory planner, latency and energy.

`hardware/` sees only `graph.Graph`s (search spaces lower to them).  Public entry points:

  cost(graph_or_template, gates=None, widths=None, device=..., runtime=...) -> dict
  cost_rows(graphs: dict[name, Graph], device, runtime) -> list[dict]   (one CSV row each)
  get_device(name), get_runtime(name), devices.list_devices_table()
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hardware import devices
from hardware import graph
from hardware import latency
from hardware import memory
from hardware import template
from hardware.devices import get_device, get_runtime, list_devices_table
from hardware.graph import FEATURES, Graph, GraphBuilder, Node, prune
from hardware.template import Template, compile_template

COST_KEYS = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params',
             'arena_bytes')
_CHUNK = 1024


def _single_cost(t: Template, dev: devices.Device, rt: devices.Runtime, gates, widths, cycles):
  act = template.soft_activity(t, gates, widths, rt.fold_constants, rt.prune_dead,
                               rt.merge_duplicates)
  c = template.counts(t, activity=act)
  arena = memory.soft_peak_bytes(t, act, im2col=rt.im2col)
  lat = latency.latency_ms(c['features'], cycles, dev.clock_mhz)
  return dict(
      sram_bytes=memory.sram_bytes(arena, c['quant_channels'], rt),
      flash_bytes=memory.flash_bytes(c['weights'], c['biases'], c['quant_channels'],
                                     c['kernel_calls'], rt, c['const_bytes']),
      latency_ms=lat, energy_mj=latency.energy_mj(lat, dev.active_power_mw), macs=c['macs'],
      params=c['params'], arena_bytes=arena, features=c['features'])


@functools.lru_cache(maxsize=32)
def cost_fn(t: Template, device, runtime):
  """Jitted, vmapped (gates [K, G], widths [K, W], cycles [P]) -> dict of [K] arrays."""
  dev, rt = get_device(device), get_runtime(runtime)
  single = functools.partial(_single_cost, t, dev, rt)
  return jax.jit(jax.vmap(single, in_axes=(0, 0, None)))


def cost(graph_or_template, gates=None, widths=None, device='stm32f746', runtime='cmsis-nn',
         cycles=None) -> dict:
  """Hardware cost of one candidate or a batch.

  gates: None (every node on), [G] or [K, G] (for NB201: op weights [K, 6, 5] reshaped to
  [K, 30]); widths: None, [W] or [K, W] channel multipliers.  cycles: optional calibrated
  cycles per feature (default: the (device, runtime) prior).  Returns float arrays (scalars for
  an unbatched call): sram_bytes, flash_bytes, latency_ms, energy_mj, macs, params,
  arena_bytes, features [.., P].  Differentiable in gates and widths; exact at 0/1 gates.
  """
  t = template.as_template(graph_or_template)
  dev, rt = get_device(device), get_runtime(runtime)
  cycles = devices.coefficients(dev, rt) if cycles is None else np.asarray(cycles)
  batched = gates is not None and np.ndim(gates) >= 2 or widths is not None and np.ndim(
      widths) == 2
  k = (np.shape(gates)[0] if gates is not None and np.ndim(gates) >= 2 else
       np.shape(widths)[0] if batched else 1)
  g = jnp.ones((k, max(t.num_gates, 1))) if gates is None else jnp.reshape(
      jnp.asarray(gates, jnp.float32), (k, -1))
  w = jnp.ones((k, max(t.num_widths, 1))) if widths is None else jnp.reshape(
      jnp.asarray(widths, jnp.float32), (k, -1))
  fn = cost_fn(t, dev, rt)
  if k <= _CHUNK:
    out = fn(g, w, jnp.asarray(cycles, jnp.float32))
  else:
    parts = [fn(g[i:i + _CHUNK], w[i:i + _CHUNK], jnp.asarray(cycles, jnp.float32))
             for i in range(0, k, _CHUNK)]
    out = {key: jnp.concatenate([p[key] for p in parts]) for key in parts[0]}
  return out if batched else {key: v[0] for key, v in out.items()}


def fits(result: Mapping, device) -> dict:
  """Whether a cost result fits the device's SRAM and flash."""
  dev = get_device(device)
  return dict(fits_sram=np.asarray(result['sram_bytes']) <= dev.sram_kb * 1024,
              fits_flash=np.asarray(result['flash_bytes']) <= dev.flash_kb * 1024)


def concrete_cost(g: Graph, device='stm32f746', runtime='cmsis-nn', cycles=None) -> dict:
  """Exact cost of one concrete (ungated) graph in numpy: no JIT, so cheap for many graphs.

  Same numbers as `cost(g)` (tested); SRAM from the reference planner `memory.plan_arena`.
  """
  dev, rt = get_device(device), get_runtime(runtime)
  if g.num_gates:
    if not (rt.fold_constants and rt.prune_dead):
      raise ValueError(f'runtime {rt.name!r} keeps ops the exact pruner removes; use cost() for '
                       'gated graphs')
    if rt.merge_duplicates:
      raise ValueError(f'runtime {rt.name!r} merges duplicate ops of the graph as given, before '
                       'pruning; use cost() for gated graphs')
    g = prune(g)
  cycles = devices.coefficients(dev, rt) if cycles is None else np.asarray(cycles)
  st = graph.node_stats(g)
  mult = np.array([0.0 if n.is_alias else n.operands - 1.0 if n.op == 'add' else 1.0
                   for n in g.nodes])
  consts = float(sum(len(n.const_slots) * n.shape[2] for n in g.nodes))
  if rt.merge_duplicates:
    mult[graph.duplicate_of(g) != np.arange(len(g))] = 0.0
  features = mult @ st.features
  features[FEATURES.index('inference')] = 1.0
  qch = float(mult @ st.quant_channels)
  calls = float(features[FEATURES.index('kernel_calls')])
  arena = float(memory.plan_arena(g, im2col=rt.im2col).peak_bytes)
  lat = float(features @ cycles / (dev.clock_mhz * 1e3))
  return dict(sram_bytes=float(memory.sram_bytes(arena, qch, rt)),
              flash_bytes=float(memory.flash_bytes(float(mult @ st.weights),
                                                   float(mult @ st.biases), qch, calls, rt,
                                                   consts)),
              latency_ms=lat, energy_mj=lat * dev.active_power_mw / 1e3,
              macs=float(mult @ st.macs), params=float(mult @ st.params), arena_bytes=arena,
              features=features)


def cost_rows(graphs: Mapping[str, Graph], device='stm32f746', runtime='cmsis-nn',
              cycles=None) -> list[dict]:
  """One flat row per named concrete graph (for cost CSVs); SRAM from the exact planner."""
  return [_row(name, concrete_cost(g, device, runtime, cycles), device, runtime)
          for name, g in graphs.items()]


def _row(name, r, device, runtime) -> dict:
  dev, rt = get_device(device), get_runtime(runtime)
  row = dict(arch=name, device=dev.name, runtime=rt.name,
             sram_bytes=int(round(float(r['sram_bytes']))),
             flash_bytes=int(round(float(r['flash_bytes']))),
             latency_ms=float(r['latency_ms']), energy_mj=float(r['energy_mj']),
             macs=int(round(float(r['macs']))), params=int(round(float(r['params']))))
  row.update({k: bool(v) for k, v in fits(row, dev).items()})
  return row


def rows_from_batch(names, result, device, runtime) -> list[dict]:
  """CSV rows from a batched `cost` result (one per name)."""
  return [_row(n, {k: np.asarray(v)[i] for k, v in result.items() if k != 'features'},
               device, runtime) for i, n in enumerate(names)]

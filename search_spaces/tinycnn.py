"""The seed's small space `tinycnn`, lowered to the hardware graph, and its objective.

A candidate is 1-3 blocks of [conv kxk (8/16/32 filters, same padding) -> activation
(ReLU fused into the conv, or a separate swish) -> 2x2 pooling (max or avg)], then flatten and
a dense classifier.  Filters and kernel are chosen per layer; activation and pooling once per
network: sum_{L=1..3} 6^L * 2 * 2 = 1,032 candidates.

Encoding (also the CSV arch name): 'f16k3-f32k5-relu-max' (layers joined by '-', then the
activation and the pooling).

Objective (the seed's): accuracy_proxy / (memory x power), 0 when a hard limit (memory,
power) is violated.  Power is the average power at a given inference rate:
energy per inference x rate + sleep power for the rest of each period, so it depends on the
architecture (a constant active power alone would not); an architecture whose latency exceeds
the period also scores 0.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

import hardware
from hardware import graph as graph_lib

FILTERS = (8, 16, 32)
KERNELS = (3, 5)
ACTIVATIONS = ('relu', 'swish')
POOLINGS = ('max', 'avg')
MAX_LAYERS = 3


@dataclasses.dataclass(frozen=True)
class TinyCNNArch:
  filters: tuple[int, ...]
  kernels: tuple[int, ...]
  activation: str = 'relu'
  pooling: str = 'max'

  def __post_init__(self):
    if not 1 <= len(self.filters) <= MAX_LAYERS or len(self.kernels) != len(self.filters):
      raise ValueError(f'tinycnn needs 1-{MAX_LAYERS} layers with one kernel each')
    if any(f not in FILTERS for f in self.filters) or any(k not in KERNELS for k in self.kernels):
      raise ValueError(f'tinycnn filters must be in {FILTERS} and kernels in {KERNELS}')
    if self.activation not in ACTIVATIONS or self.pooling not in POOLINGS:
      raise ValueError(f'tinycnn activation must be one of {ACTIVATIONS}, pooling one of '
                       f'{POOLINGS}')

  def encode(self) -> str:
    layers = '-'.join(f'f{f}k{k}' for f, k in zip(self.filters, self.kernels))
    return f'{layers}-{self.activation}-{self.pooling}'


def decode(code: str) -> TinyCNNArch:
  """'f16k3-f32k5-relu-max' -> TinyCNNArch; ValueError with the expected format otherwise."""
  parts = code.strip().split('-')
  try:
    *layers, act, pool = parts
    filters = tuple(int(p[1:p.index('k')]) for p in layers)
    kernels = tuple(int(p[p.index('k') + 1:]) for p in layers)
    return TinyCNNArch(filters, kernels, act, pool)
  except (ValueError, IndexError) as e:
    raise ValueError(f'bad tinycnn arch {code!r} ({e}); expected e.g. "f16k3-f32k5-relu-max"')


def enumerate_archs() -> list[TinyCNNArch]:
  """All 1,032 candidates in a fixed order."""
  out = []
  for n in range(1, MAX_LAYERS + 1):
    for layers in itertools.product(itertools.product(FILTERS, KERNELS), repeat=n):
      for act in ACTIVATIONS:
        for pool in POOLINGS:
          out.append(TinyCNNArch(tuple(f for f, _ in layers), tuple(k for _, k in layers),
                                 act, pool))
  return out


def _build(arch: TinyCNNArch, input_shape, num_classes, widths: bool) -> graph_lib.Graph:
  b = graph_lib.GraphBuilder(arch.encode(), num_widths=len(arch.filters) if widths else 0)
  x = b.input(input_shape)
  for i, (f, k) in enumerate(zip(arch.filters, arch.kernels)):
    fused = 'relu' if arch.activation == 'relu' else None
    x = b.conv2d(x, f, k, activation=fused, width=i if widths else -1, name=f'layer{i}/conv')
    if fused is None:
      x = b.activation(x, arch.activation, name=f'layer{i}/{arch.activation}')
    x = b.pool(x, arch.pooling, 2, 2, 'valid', name=f'layer{i}/pool')
  x = b.reshape(x, name='flatten')
  b.dense(x, num_classes, name='fc')
  return b.build()


def lower(arch, input_shape=(32, 32, 3), num_classes: int = 10) -> graph_lib.Graph:
  """Concrete graph of one candidate (TinyCNNArch or its encoding)."""
  arch = decode(arch) if isinstance(arch, str) else arch
  return _build(arch, tuple(input_shape), num_classes, widths=False)


def width_template(num_layers: int = 3, kernels: Sequence[int] = (3, 3, 3),
                   activation: str = 'relu', pooling: str = 'max', input_shape=(32, 32, 3),
                   num_classes: int = 10) -> graph_lib.Graph:
  """Graph at 32 filters per layer with width multipliers [num_layers] (filters / 32), so costs
  are differentiable in the per-layer width."""
  arch = TinyCNNArch((max(FILTERS),) * num_layers, tuple(kernels[:num_layers]), activation,
                     pooling)
  return _build(arch, tuple(input_shape), num_classes, widths=True)


def parse_archs(archs) -> list[TinyCNNArch]:
  """'all' / None / 'f8k3-relu-max,f16k5-swish-avg' / list -> candidates."""
  if archs is None or archs in ('', 'all'):
    return enumerate_archs()
  items = archs.split(',') if isinstance(archs, str) else list(archs)
  return [decode(a) if isinstance(a, str) else a for a in items]


def cost_rows(archs=None, device='stm32f746', runtime='cmsis-nn', input_shape=(32, 32, 3),
              num_classes: int = 10, cycles=None) -> list[dict]:
  graphs = {a.encode(): lower(a, input_shape, num_classes) for a in parse_archs(archs)}
  return hardware.cost_rows(graphs, device, runtime, cycles)


# ------------------------------------------------------------------------------ objective


def average_power_mw(energy_mj, latency_ms, rate_hz, sleep_power_mw):
  """Mean power when running one inference every 1/rate_hz seconds and sleeping otherwise."""
  busy = jnp.clip(jnp.asarray(latency_ms) * rate_hz / 1e3, 0.0, 1.0)
  return jnp.asarray(energy_mj) * rate_hz + sleep_power_mw * (1.0 - busy)


def objective(accuracy_proxy, memory_bytes, power_mw, memory_limit_bytes, power_limit_mw,
              feasible=True):
  """accuracy_proxy / (memory x power); 0 where memory or power exceed their hard limits or
  `feasible` is false.  Memory in KB and power in mW inside the ratio (scale only)."""
  acc = jnp.asarray(accuracy_proxy, jnp.float32)
  mem = jnp.asarray(memory_bytes, jnp.float32)
  power = jnp.asarray(power_mw, jnp.float32)
  ok = (mem <= memory_limit_bytes) & (power <= power_limit_mw) & jnp.asarray(feasible)
  return jnp.where(ok, acc / (mem / 1024.0 * power), 0.0)


def score(rows: Sequence[dict], accuracy_proxy, device, rate_hz: float = 1.0,
          power_limit_mw: Optional[float] = None, sram_limit_bytes: Optional[float] = None,
          flash_limit_bytes: Optional[float] = None) -> np.ndarray:
  """Seed objective for cost rows: memory = peak SRAM; limits default to the device's SRAM and
  flash and its active power; an inference must finish within its period."""
  dev = hardware.get_device(device)
  sram = np.array([r['sram_bytes'] for r in rows], float)
  flash = np.array([r['flash_bytes'] for r in rows], float)
  lat = np.array([r['latency_ms'] for r in rows], float)
  energy = np.array([r['energy_mj'] for r in rows], float)
  power = average_power_mw(energy, lat, rate_hz, dev.sleep_power_mw)
  flash_ok = flash <= (dev.flash_kb * 1024 if flash_limit_bytes is None else flash_limit_bytes)
  on_time = lat <= 1e3 / rate_hz
  return np.asarray(objective(
      accuracy_proxy, sram, power,
      dev.sram_kb * 1024 if sram_limit_bytes is None else sram_limit_bytes,
      dev.active_power_mw if power_limit_mw is None else power_limit_mw,
      flash_ok & on_time))

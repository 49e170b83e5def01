"""The seed's objective (the tinycnn system's), for any space's cost rows.

accuracy_proxy / (memory x power), 0 when a hard limit (memory, flash, power) is violated.
Power is the average power at a given inference rate: energy per inference x rate + sleep power
for the rest of each period, so it depends on the architecture (a constant active power alone
would not); an architecture whose latency exceeds the period also scores 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

import hardware

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


def score_and_feasible(rows: Sequence[dict], accuracy_proxy, device, rate_hz: float = 1.0,
                       power_limit_mw: Optional[float] = None,
                       sram_limit_bytes: Optional[float] = None,
                       flash_limit_bytes: Optional[float] = None) -> tuple:
  """(objective, feasible) for cost rows: memory = peak SRAM; limits default to the device's
  SRAM and flash and its active power; an inference must finish within its period."""
  dev = hardware.get_device(device)
  sram = np.array([r['sram_bytes'] for r in rows], float)
  flash = np.array([r['flash_bytes'] for r in rows], float)
  lat = np.array([r['latency_ms'] for r in rows], float)
  energy = np.array([r['energy_mj'] for r in rows], float)
  power = average_power_mw(energy, lat, rate_hz, dev.sleep_power_mw)
  flash_ok = flash <= (dev.flash_kb * 1024 if flash_limit_bytes is None else flash_limit_bytes)
  on_time = lat <= 1e3 / rate_hz
  sram_limit = dev.sram_kb * 1024 if sram_limit_bytes is None else sram_limit_bytes
  power_limit = dev.active_power_mw if power_limit_mw is None else power_limit_mw
  value = np.asarray(objective(accuracy_proxy, sram, power, sram_limit, power_limit,
                               flash_ok & on_time))
  feasible = (sram <= sram_limit) & (np.asarray(power) <= power_limit) & flash_ok & on_time
  return value, feasible


def score(rows: Sequence[dict], accuracy_proxy, device, **limits) -> np.ndarray:
  """The objective alone (`score_and_feasible`)."""
  return score_and_feasible(rows, accuracy_proxy, device, **limits)[0]

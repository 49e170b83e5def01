"""Score archs of any registered search space with `engine.space_proxies`: inputs, shared init
keys, one compiled call per group of archs and batch of K candidates.

Candidates of one call run under `lax.map` (`candidate_chunk` of them vmapped together inside
it): each candidate's weights depend on its arch (masks and fan-in), so vmapping many of them
turns every convolution into a grouped one, which XLA:CPU runs slowly; `lax.map` keeps them
ordinary convolutions and the loop compiled. One compile serves every call of a group.
"""
from __future__ import annotations

import dataclasses
import time
import types
import zlib

import jax
import numpy as np

from engine import data as data_lib
from engine import space_proxies as sp


@dataclasses.dataclass(frozen=True)
class SpaceScoreSettings:
  zc_batch: int = 64
  ntk_batch: int = 64
  lr_segments: int = 8
  batch_candidates: int = 8
  candidate_chunk: int = 1

  @classmethod
  def from_config(cls, c) -> 'SpaceScoreSettings':
    return cls(zc_batch=c.zc_batch, ntk_batch=c.ntk_batch, batch_candidates=c.batch_candidates,
               candidate_chunk=max(1, c.candidate_chunk))


class UnknownProxy(ValueError):
  pass


def check_names(names, space_name: str = 'this search space') -> list[str]:
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  unknown = [n for n in names if n not in sp.PROXIES]
  if unknown or not names:
    raise UnknownProxy(f'proxy {(unknown or [""])[0]!r} has no implementation for search space '
                       f'{space_name}; choose from {", ".join(sp.PROXIES)}')
  return list(dict.fromkeys(names))


def make_inputs(space, names, seed: int, images, s: SpaceScoreSettings, shape=None) -> dict:
  """The batches every candidate is scored on. `images`: an ImageSet or None (Gaussian noise);
  `shape`: the input shape (default: the space's)."""
  rng = np.random.default_rng([seed, 0x5bace])
  shape = tuple(shape or space.input_shape)
  kinds = {sp.PROXIES[n][0] for n in names}
  inputs = {}

  def batch(n):
    if images is None:
      return (rng.standard_normal((n,) + shape).astype(np.float32),
              rng.integers(0, space.num_classes, n).astype(np.int32))
    x, y = data_lib.sample_batches(rng, 1, n, images, shape[0], num_classes=space.num_classes)
    return x[0], y[0].astype(np.int32)

  if 'zc' in kinds:
    inputs['zc'], inputs['zc_labels'] = batch(s.zc_batch)
  if 'ntk' in kinds:
    inputs['ntk'] = batch(s.ntk_batch)[0]
  if 'lr' in kinds:
    inputs['lr'] = batch(2 * s.lr_segments)[0].reshape((s.lr_segments, 2) + shape)
  return inputs


def init_keys(names, seed: int) -> dict:
  base = jax.random.PRNGKey(seed)
  return {n: jax.random.fold_in(base, zlib.crc32(n.encode()) & 0x7FFFFFFF)
          for n in list(names) + ['gradient']}


# compiled scorers by (space, group, proxies, seed, settings, input shapes): a search that
# scores a few archs at a time compiles once
_COMPILED: dict = {}


@dataclasses.dataclass
class Timing:
  compile_s: float = 0.0
  run_s: float = 0.0


def score(space, archs, names, seed: int = 0, images=None,
          s: SpaceScoreSettings = SpaceScoreSettings(), progress=None, inputs=None):
  """-> ({name: values [N]}, {name: flags [N]}, Timing) for `archs` (objects or strings)."""
  names = check_names(names)
  archs = space.parse(archs) if isinstance(archs, str) else [
      space.decode(a) if isinstance(a, str) else a for a in archs]
  network = [n for n in names if sp.PROXIES[n][0] != 'analytic']
  values = {n: np.full(len(archs), np.nan) for n in names}
  flags = {n: np.zeros(len(archs), np.int32) for n in names}
  timing = Timing()
  analytic = [n for n in names if sp.PROXIES[n][0] == 'analytic']
  if analytic:
    graphs = [space.lower(a, space.input_shape, space.num_classes) for a in archs]
    for n, v in sp.analytic(graphs, analytic).items():
      values[n] = v
  if not network:
    return values, flags, timing
  groups: dict = {}
  for i, a in enumerate(archs):
    groups.setdefault(space.group(a), []).append(i)
  bar = progress(total=len(archs), unit='arch') if progress else None
  for group, idx in groups.items():
    shape = space.shape_of(group)
    net = space.net(group, shape, space.num_classes)
    group_inputs = (make_inputs(space, names, seed, images, s, shape) if inputs is None
                    else inputs)
    rows = space.to_array([archs[i] for i in idx])
    _score_rows((space.name, group), net, rows, network, seed, group_inputs, s, timing,
                values, flags, np.asarray(idx), bar)
  if bar:
    bar.close()
  return values, flags, timing


def _score_rows(cache_name, net, rows, network, seed, inputs, s, timing, values, flags, idx,
                bar=None):
  """Scores arch rows (int rows, or relaxed masks) of one net in compiled calls of K
  candidates, writing into values[name][idx] / flags[name][idx]."""
  keys = init_keys(network, seed)
  k = s.batch_candidates

  def call(batch_rows, batch_inputs):
    one = lambda r: sp.network_proxies(net, r, batch_inputs, network, keys)
    return jax.lax.map(one, batch_rows, batch_size=max(1, s.candidate_chunk))

  n_rows = len(rows)
  pad = -n_rows % k
  rows = np.concatenate([rows, np.repeat(rows[-1:], pad, 0)]) if pad else rows
  start = time.perf_counter()
  cache_key = (cache_name, str(rows.dtype), rows.shape[1:], tuple(network), seed, s,
               jax.tree.map(lambda a: (np.shape(a), str(np.asarray(a).dtype)), inputs))
  compiled = _COMPILED.get(repr(cache_key))
  if compiled is None:
    compiled = jax.jit(call).lower(rows[:k], inputs).compile()
    _COMPILED[repr(cache_key)] = compiled
  timing.compile_s += time.perf_counter() - start
  start = time.perf_counter()
  for c in range(0, len(rows), k):
    out = jax.device_get(compiled(rows[c:c + k], inputs))
    take = min(k, n_rows - c)
    for n in network:
      values[n][idx[c:c + take]] = out[n][0][:take]
      flags[n][idx[c:c + take]] = out[n][1][:take]
    if bar:
      bar.update(take)
  timing.run_s += time.perf_counter() - start


class NetScorer:
  """The scorer of a plug-in space for the searchers (`engine.search`): archs or relaxed masks
  [M, S, O] in, proxy values (and `name_flag`s) out, through the space's `Net` (one-hot masks
  go through the arch's own rows; multi-hot and soft ones through `relax.net`)."""

  def __init__(self, space, proxy_names, settings: SpaceScoreSettings, seed: int = 0,
               images=None):
    self.space, self.settings, self.images = space, settings, images
    self.names = check_names(proxy_names, space.name)
    self.higher_is_better = {n: higher for n, (_, higher) in sp.PROXIES.items()}
    self.network = [n for n in self.names if sp.PROXIES[n][0] != 'analytic']
    self.compile_s = self.run_s = 0.0
    self.reseed(seed)

  def reseed(self, seed: int):
    self.seed = seed
    self._inputs: dict = {}

  def inputs_for(self, group) -> dict:
    if group not in self._inputs:
      self._inputs[group] = make_inputs(self.space, self.names, self.seed, self.images,
                                        self.settings, self.space.shape_of(group))
    return self._inputs[group]

  def default_k(self, n: int) -> int:
    return self.settings.batch_candidates

  def networks(self) -> list[str]:
    """The proxy networks scored on, for the report: the space's own."""
    kinds = {sp.PROXIES[n][0] for n in self.network}
    batches = ([f'zero-cost B={self.settings.zc_batch}'] if 'zc' in kinds else []) + (
        [f'NTK B={self.settings.ntk_batch}'] if 'ntk' in kinds else [])
    return [', '.join([f'{self.space.name}\'s own network'] + batches)] if self.network else []

  def _settings(self, k):
    return dataclasses.replace(self.settings, batch_candidates=k) if k else self.settings

  def _add(self, timing):
    self.compile_s += timing.compile_s
    self.run_s += timing.run_s

  def score_archs(self, group, archs, k=None, progress=None) -> dict:
    bar = (lambda **_: types.SimpleNamespace(update=progress, close=lambda: None)) \
        if progress else None
    values, flags, timing = score(self.space, archs, self.names, self.seed, self.images,
                                  self._settings(k), bar, inputs=self.inputs_for(group))
    self._add(timing)
    return {**values, **{n + '_flag': f for n, f in flags.items()}}

  def score_masks(self, group, masks, k=None, progress=None) -> dict:
    masks = np.asarray(masks, np.float32)
    relax = self.space.relax
    if np.all((masks != 0).sum(-1) == 1) and np.all(masks.max(-1) == 1):
      return self.score_archs(group, relax.from_rows(group, masks.argmax(-1)), k, progress)
    values = {n: np.full(len(masks), np.nan) for n in self.names}
    flags = {n: np.zeros(len(masks), np.int32) for n in self.names}
    timing = Timing()
    analytic = [n for n in self.names if sp.PROXIES[n][0] == 'analytic']
    if analytic:  # the supernet's size from the relaxed cost model
      shape = self.space.shape_of(group)
      costs = relax.cost(group, masks, 'stm32f746', 'tflm', input_shape=shape,
                         num_classes=self.space.num_classes)
      for n in analytic:
        values[n] = np.asarray(costs['params' if n == 'params' else 'macs'], np.float64)
    if self.network:
      net = relax.net(group, self.space.shape_of(group), self.space.num_classes)
      _score_rows((self.space.name, group, 'relaxed'), net, masks, self.network, self.seed,
                  self.inputs_for(group), self._settings(k), timing, values, flags,
                  np.arange(len(masks)))
    self._add(timing)
    return {**values, **{n + '_flag': f for n, f in flags.items()}}

  def traced(self, group, mask, inputs, names) -> dict:
    net = self.space.relax.net(group, self.space.shape_of(group), self.space.num_classes)
    keys = init_keys(self.network, self.seed)
    out = sp.network_proxies(net, mask, inputs, [n for n in self.network if n in names], keys)
    return {n: v for n, (v, _) in out.items()}

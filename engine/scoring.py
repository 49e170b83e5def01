"""Score batches of candidates in one compiled call, sharded over the local devices.

`batch_score_fn` builds the function masks [K, 6, 5], keys [K, 2], inputs -> {proxy: [K]}.
Within a device the candidates are vmapped (dense mode: every supernet op runs, masked) or, with
`settings.sparse`, walked by `lax.map` so each runs only its active ops. A one-hot candidate is
passed as op indices (`settings.single_path`, the default) and costs about its own single-path
network (`nb201.net.Supernet`); those are walked by `lax.map` too. The K axis is split
over devices with `shard_map`. `Scorer` drives it over any number of archs in fixed-size batches
(one compile per batch shape, the last batch padded), keeps compile time apart from run time, and
adds the analytic proxies.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from engine import proxies as proxies_lib
from search_spaces import nb201


def candidate_keys(seed: int, ops) -> jax.Array:
  """Key of each arch from the run seed and the arch itself: the same arch gets the same init
  whatever batch it lands in (so batched == one-at-a-time, and reruns reproduce)."""
  codes = jnp.asarray(nb201.ops_to_code(ops), jnp.uint32)
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, c))(codes)


def batch_score_fn(proxies, settings: proxies_lib.ScoreSettings, candidate_chunk: int = 0,
                   devices=None):
  """Un-jitted f(masks [K,6,5], keys [K,2], inputs) -> {name: [K], name_flag: [K]}.

  Gradient-group zero-cost proxies requested together share one pass
  (`proxies.fused_gradient_proxies`).

  K must be a multiple of the number of devices. Dense mode vmaps `candidate_chunk` candidates at
  a time (0: the whole shard; smaller chunks are unrolled to bound memory). Sparse mode walks the
  shard with lax.map, vmapping `candidate_chunk` together when it is above 1.
  """
  net = [p for p in proxies if p.kind == 'network']
  fused_names, fused_fn = proxies_lib.fused_gradient_proxies(net, settings) or ((), None)

  def one(mask, key, inputs):
    values = fused_fn(key, mask, inputs, settings) if fused_fn else {}
    for p in net:
      if p.name not in fused_names:
        values[p.name] = p.fn(proxies_lib.proxy_key(key, p.name), mask, inputs, settings)
    out = {}
    for p in net:
      out[p.name], out[p.name + '_flag'] = values[p.name]
    return out

  def shard(masks, keys, inputs):
    # Op indices (one-hot candidates) must not be vmapped: a batched switch index runs every
    # branch. lax.map walks them one after the other.
    if settings.sparse or jnp.issubdtype(masks.dtype, jnp.integer):
      return jax.lax.map(lambda mk: one(mk[0], mk[1], inputs), (masks, keys),
                         batch_size=candidate_chunk if candidate_chunk > 1 else None)
    batched = jax.vmap(one, in_axes=(0, 0, None))
    chunk = candidate_chunk or masks.shape[0]
    parts = [batched(masks[i:i + chunk], keys[i:i + chunk], inputs)
             for i in range(0, masks.shape[0], chunk)]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)

  devices = devices if devices is not None else jax.local_devices()
  if len(devices) == 1:
    return shard
  mesh = jax.sharding.Mesh(np.asarray(devices), ('candidates',))
  # check_vma=False: the NTK's pullback cotangents (an identity matrix built inside the shard)
  # are device-invariant while the outputs vary per device; the shards never communicate.
  return jax.shard_map(shard, mesh=mesh, in_specs=(P('candidates'), P('candidates'), P()),
                       out_specs=P('candidates'), check_vma=False)


@dataclasses.dataclass
class Timing:
  compile_s: float = 0.0
  run_s: float = 0.0
  scored: int = 0


class Scorer:
  """Scores NB201 candidates with the named proxies, `batch_candidates` at a time."""

  def __init__(self, proxy_names, settings: proxies_lib.ScoreSettings, seed: int = 0,
               images=None, batch_candidates: int = 8, candidate_chunk: int = 0, devices=None):
    self.proxies = proxies_lib.get(proxy_names)
    self.settings = settings
    self.seed = seed
    self.devices = devices if devices is not None else jax.local_devices()
    n_dev = len(self.devices)
    self.batch_candidates = -(-max(1, batch_candidates) // n_dev) * n_dev
    self.inputs = {k: jnp.asarray(v) for k, v in
                   proxies_lib.make_inputs(self.proxies, settings, seed, images).items()}
    self.network_proxies = [p for p in self.proxies if p.kind == 'network']
    self.timing = Timing()
    self._compiled = {}
    if self.network_proxies:
      self._fn = jax.jit(batch_score_fn(self.proxies, settings, candidate_chunk, self.devices))

  def _call(self, archs, keys):
    kind = (archs.dtype, archs.shape)
    if kind not in self._compiled:
      start = time.perf_counter()
      self._compiled[kind] = self._fn.lower(archs, keys, self.inputs).compile()
      self.timing.compile_s += time.perf_counter() - start
    start = time.perf_counter()
    out = jax.device_get(self._compiled[kind](archs, keys, self.inputs))
    self.timing.run_s += time.perf_counter() - start
    return out

  def score_masks(self, masks, keys) -> dict[str, np.ndarray]:
    """One compiled call on exactly `batch_candidates` masks [K, 6, 5] with keys [K, 2].

    One-hot masks are passed as op indices (`settings.single_path`), which take the single-path
    fast path (`nb201.net.Supernet`); multi-hot and soft masks run densely (vmapped) or, with
    `settings.sparse`, under per-op conditionals."""
    masks = np.asarray(masks, np.float32)
    if self.settings.single_path and np.all((masks != 0).sum(-1) == 1) and np.all(
        masks.max(-1) == 1):
      return self._call(jnp.asarray(masks.argmax(-1), jnp.int32), keys)
    return self._call(jnp.asarray(masks), keys)

  def score_ops(self, ops, progress=None) -> dict[str, np.ndarray]:
    """Scores archs given as op indices [M, 6]; `progress(n)` is called after each batch."""
    ops = np.asarray(ops, np.int64).reshape(-1, nb201.NUM_EDGES)
    masks = nb201.ops_to_mask(ops)
    results: dict[str, list] = {}
    for p in self.proxies:
      if p.kind == 'analytic':
        results[p.name] = [np.asarray(p.fn(masks, self.settings), np.float64)]
    if self.network_proxies:
      k = self.batch_candidates
      keys = candidate_keys(self.seed, ops)
      for start in range(0, len(ops), k):
        n = min(k, len(ops) - start)
        pad = np.r_[np.arange(start, start + n), np.full(k - n, start + n - 1)]
        out = self.score_masks(masks[pad], keys[pad])
        for name, value in out.items():
          results.setdefault(name, []).append(np.asarray(value)[:n])
        self.timing.scored += n
        if progress:
          progress(n)
    return {name: np.concatenate(parts) for name, parts in results.items()}


class SearchScorer:
  """NB201's scorer for the searchers (`engine.search`): masks [M, 6, 5] in, proxy values out.

  One `Scorer` per batch size K, kept across seeds (`reseed` swaps inputs, not programs);
  candidate keys come from the mask's active-op bit pattern, so a supernet and an arch get
  reproducible inits whatever batch they land in. `traced` gives the differentiable proxies of
  one (soft) mask for `grad_prune`."""

  def __init__(self, proxy_names, settings: proxies_lib.ScoreSettings, seed: int = 0,
               images=None, candidate_chunk: int = 0):
    self.candidate_chunk = candidate_chunk
    self.proxies = proxies_lib.get(proxy_names)
    self.names = [p.name for p in self.proxies]
    self.higher_is_better = {p.name: p.higher_is_better for p in proxies_lib.REGISTRY.values()}
    self.network = [p for p in self.proxies if p.kind == 'network']
    self.settings, self.images = settings, images
    self._scorers: dict[int, Scorer] = {}
    self.compile_s = self.run_s = 0.0
    self.reseed(seed)

  def reseed(self, seed: int):
    self.seed = seed
    self.inputs = {k: jnp.asarray(v) for k, v in proxies_lib.make_inputs(
        self.network, self.settings, seed, self.images).items()}
    for s in self._scorers.values():
      s.seed, s.inputs = seed, self.inputs

  def inputs_for(self, group) -> dict:
    return self.inputs

  def networks(self) -> list[str]:
    """The proxy networks scored on, for the report."""
    s, needs = self.settings, {p.needs for p in self.network}
    return ([f'NTK C={s.ntk_width} N={s.ntk_cells} B={s.ntk_batch} x{s.ntk_repeats}']
            if 'ntk' in needs else []) + (
        [f'zero-cost C={s.zc_width} N={s.zc_cells} B={s.zc_batch}'] if 'zc' in needs else [])

  def default_k(self, n: int) -> int:
    """Reuse a compiled batch shape when none is asked for (the final scoring of a winner)."""
    return max(self._scorers) if self._scorers else n

  def _scorer(self, k: int) -> Scorer:
    if k not in self._scorers:
      s = Scorer([p.name for p in self.network], self.settings, self.seed, self.images,
                 batch_candidates=k, candidate_chunk=self.candidate_chunk)
      s.inputs = self.inputs
      self._scorers[k] = s
    return self._scorers[k]

  def score_archs(self, group, archs, k=None, progress=None) -> dict[str, np.ndarray]:
    return self.score_masks(group, nb201.ops_to_mask(np.asarray(archs)), k, progress)

  def score_masks(self, group, masks, k=None, progress=None) -> dict[str, np.ndarray]:
    masks = np.asarray(masks, np.float32)
    m = len(masks)
    out: dict[str, list] = {}
    if self.network:
      scorer = self._scorer(k or self.default_k(m))
      k = scorer.batch_candidates
      keys = mask_keys(self.seed, masks)
      before = scorer.timing.compile_s, scorer.timing.run_s
      for start in range(0, m, k):
        n = min(k, m - start)
        pad = np.r_[np.arange(start, start + n), np.full(k - n, start + n - 1)]
        part = scorer.score_masks(masks[pad], keys[pad])
        for p in self.network:
          out.setdefault(p.name, []).append(np.asarray(part[p.name], np.float64)[:n])
          out.setdefault(p.name + '_flag', []).append(np.asarray(part[p.name + '_flag'])[:n])
        if progress:
          progress(n)
      self.compile_s += scorer.timing.compile_s - before[0]
      self.run_s += scorer.timing.run_s - before[1]
    values = {name: np.concatenate(parts) for name, parts in out.items()}
    for p in self.proxies:
      if p.kind == 'analytic':
        values[p.name] = np.asarray(p.fn(masks, self.settings), np.float64)
    return values

  def traced(self, group, mask, inputs, names) -> dict:
    """{name: value} of the network proxies `names` at one mask [6, 5] (traceable)."""
    key = jax.random.PRNGKey(0)  # shared inits live in `inputs`; the key is unused then
    return {p.name: p.fn(proxies_lib.proxy_key(key, p.name), mask, inputs, self.settings)[0]
            for p in self.network if p.name in names}


def mask_keys(seed: int, masks) -> jax.Array:
  """Per-candidate keys from the seed and the mask's active-op bit pattern (reproducible)."""
  bits = (np.asarray(masks) != 0).reshape(len(masks), -1)
  codes = jnp.asarray((bits * (1 << np.arange(bits.shape[1]))).sum(-1), jnp.uint32)
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, c))(codes)

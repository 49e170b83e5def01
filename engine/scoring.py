"""Score candidates of any registered search space in compiled batches, sharded over the local
devices: one scorer for every space, used by score, correlate and every searcher.

`batch_score_fn` builds the function rows [K, ...], keys [K, 2], inputs -> {proxy: [K]} over
the space's proxy networks (`SearchSpace.proxy_nets`). An arch row (integers) is one
candidate's own network, walked by `lax.map` (each candidate's weights or control flow depend
on its arch, and vmapping would run every branch or turn every convolution into a grouped one,
which XLA:CPU runs slowly). Relaxed masks (floats, supernets) are vmapped where the network's
weights do not depend on the mask (`Net.vmap_masks`: NB201's dense supernet), else walked by
`lax.map` too; `candidate_chunk` vmaps that many together. The K axis is split over devices with
`shard_map`.

`Scorer` drives it over any number of archs of one group in fixed-size batches (one compile per
(group, kind of row, K), the last batch padded), keeps compile time apart from run time, and
adds the analytic proxies (params, flops) from the space's size.
"""
from __future__ import annotations

import dataclasses
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from engine import proxies as proxies_lib


def row_keys(seed: int, rows) -> jax.Array:
  """Key of each candidate from the run seed and the candidate itself (an arch row's values, a
  mask's active-option pattern): the same candidate gets the same init whatever batch it lands
  in (so batched == one-at-a-time, and reruns reproduce)."""
  rows = np.asarray(rows)
  if rows.dtype.kind == 'f':
    content = [np.packbits(r.reshape(-1) != 0).tobytes() for r in rows]
  else:
    content = [r.astype(np.int64).tobytes() for r in rows]
  codes = jnp.asarray([zlib.crc32(c) for c in content], jnp.uint32)
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, c))(codes)


def batch_score_fn(proxies, settings: proxies_lib.ScoreSettings, nets, candidate_chunk: int = 0,
                   devices=None):
  """Un-jitted f(rows [K, ...], keys [K, 2], inputs, live=None) -> {name: [K], name_flag: [K]}
  on the networks `nets` ({'zc' | 'ntk' | 'lr': Net}).

  Gradient-group zero-cost proxies requested together share one pass
  (`proxies.fused_gradient_proxies`). K must be a multiple of the number of devices. `live`
  (bool [K], default all): candidates walked one by one (`lax.map`) are computed only where
  it is set, the others give zeros; so a partly filled last batch costs only its candidates
  (vmapped candidates are all computed).
  """
  net = [p for p in proxies if p.kind == 'network']
  fused_names, fused_fn = proxies_lib.fused_gradient_proxies(net, settings) or ((), None)
  vmappable = all(n.vmap_masks for n in nets.values()) and not settings.sparse

  def one(row, key, inputs):
    values = fused_fn(key, row, inputs, settings, nets) if fused_fn else {}
    for p in net:
      if p.name not in fused_names:
        values[p.name] = p.fn(proxies_lib.proxy_key(key, p.name), row, inputs, settings, nets)
    out = {}
    for p in net:
      out[p.name], out[p.name + '_flag'] = values[p.name]
    return out

  # what a skipped (padding) candidate gives: a proxy's value is a float32 scalar, its flag an
  # int32 one (`typed` holds every proxy to that, so the two branches of the cond agree without
  # tracing the proxies a second time for their shapes)
  dtype = lambda name: jnp.int32 if name.endswith('_flag') else jnp.float32
  names = [n for p in net for n in (p.name, p.name + '_flag')]
  blank = lambda: {n: jnp.zeros((), dtype(n)) for n in names}
  typed = lambda out: {n: jnp.asarray(v, dtype(n)).reshape(()) for n, v in out.items()}

  def shard(rows, keys, inputs, live):
    if not vmappable or jnp.issubdtype(rows.dtype, jnp.integer):
      return jax.lax.map(
          lambda a: jax.lax.cond(a[2], lambda: typed(one(a[0], a[1], inputs)), blank),
          (rows, keys, live), batch_size=candidate_chunk if candidate_chunk > 1 else None)
    batched = jax.vmap(one, in_axes=(0, 0, None))
    chunk = candidate_chunk or rows.shape[0]
    parts = [batched(rows[i:i + chunk], keys[i:i + chunk], inputs)
             for i in range(0, rows.shape[0], chunk)]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)

  devices = devices if devices is not None else jax.local_devices()
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.asarray(devices), ('candidates',))
    # check_vma=False: the NTK's pullback cotangents (an identity matrix built inside the
    # shard) are device-invariant while the outputs vary per device; the shards never
    # communicate.
    shard = jax.shard_map(shard, mesh=mesh,
                          in_specs=(P('candidates'), P('candidates'), P(), P('candidates')),
                          out_specs=P('candidates'), check_vma=False)

  def run(rows, keys, inputs, live=None):
    return shard(rows, keys, inputs, jnp.ones(rows.shape[0], bool) if live is None else live)
  return run


def one_hot_rows(space, group, rows) -> np.ndarray:
  """Arch rows [K, S] -> one-hot masks [K, S, O] of the space's relaxation."""
  width = max(space.relax.slots(group))
  return (np.asarray(rows)[..., None] == np.arange(width)).astype(np.float32)


@dataclasses.dataclass
class Timing:
  compile_s: float = 0.0
  run_s: float = 0.0
  scored: int = 0


class Scorer:
  """Scores archs or relaxed masks of one group of `space` with the named proxies.

  The protocol the jobs and searchers use: `score_archs(group, archs)`, `score_masks(group,
  masks [M, S, O])` -> {name: [M], name_flag: [M]}; `traced(group, mask, inputs, names)` gives
  the differentiable proxies of one (soft) mask (grad_prune); `reseed` swaps the inputs, not
  the compiled programs. One-hot masks are scored as their archs, on their own network
  (`settings.single_path`, the default); without it archs run as one-hot masks through the
  relaxed network."""

  def __init__(self, space, proxy_names, settings=proxies_lib.ScoreSettings(), seed: int = 0,
               images=None, batch_candidates: int = 8, candidate_chunk: int = 0, devices=None):
    self.space, self.settings, self.images = space, settings, images
    self.proxies = proxies_lib.get(proxy_names)
    self.names = [p.name for p in self.proxies]
    self.higher_is_better = {p.name: p.higher_is_better for p in proxies_lib.REGISTRY.values()}
    self.network = [p for p in self.proxies if p.kind == 'network']
    self.analytic = [p.name for p in self.proxies if p.kind == 'analytic']
    self.candidate_chunk = candidate_chunk
    self.devices = devices if devices is not None else jax.local_devices()
    # 0: K from free device memory, per compiled kind (`auto_k`)
    self.auto = batch_candidates == 0
    self.batch_candidates = self._round(batch_candidates or CPU_K)
    self._auto_k: dict = {}
    self.timing = Timing()
    self._nets: dict = {}
    self._compiled: dict = {}
    self.reseed(seed)

  @property
  def compile_s(self) -> float:
    return self.timing.compile_s

  @property
  def run_s(self) -> float:
    return self.timing.run_s

  def _round(self, k: int) -> int:
    n_dev = len(self.devices)
    return -(-max(1, k) // n_dev) * n_dev

  def reseed(self, seed: int):
    self.seed = seed
    self._inputs: dict = {}

  def nets(self, group, relaxed: bool = False) -> dict:
    """{'zc' | 'ntk' | 'lr': Net} the proxies of `group` run on (relaxed: over masks)."""
    if (group, relaxed) not in self._nets:
      space = self.space
      if space.proxy_nets is not None:
        nets = space.proxy_nets(group, self.settings, relaxed)
      else:
        make = space.relax.net if relaxed else space.net
        net = make(group, space.shape_of(group), space.num_classes)
        nets = {'zc': net, 'ntk': net, 'lr': net}
      self._nets[group, relaxed] = nets
    return self._nets[group, relaxed]

  def set_inputs(self, group, inputs):
    """Score `group` on these batches (`proxies.make_inputs`'s form) instead of the seed's."""
    needs = {p.needs for p in self.network}
    self._inputs[group] = {k: jnp.asarray(v) for k, v in inputs.items()
                           if k.split('_')[0] in needs}

  def inputs_for(self, group) -> dict:
    if group not in self._inputs:
      self._inputs[group] = {k: jnp.asarray(v) for k, v in proxies_lib.make_inputs(
          self.network, self.settings, self.seed, self.images, self.nets(group)).items()}
    return self._inputs[group]

  def networks(self, group=None) -> list[str]:
    """The proxy networks `group` is scored on (default: the first group scored), for the
    report."""
    s, needs = self.settings, {p.needs for p in self.network}
    if not needs:
      return []
    if group is None:
      group = next(iter(self._nets))[0] if self._nets else ()
    nets = self.nets(group)
    label = lambda kind: nets[kind].label or f"{self.space.name}'s own network"
    return ([f'NTK {label("ntk")} B={s.ntk_batch} x{s.ntk_repeats}'] if 'ntk' in needs else []) + (
        [f'zero-cost {label("zc")} B={s.zc_batch}'] if 'zc' in needs else [])

  def default_k(self, n: int) -> int:
    """Reuse a compiled batch shape when none is asked for (the final scoring of a winner)."""
    ks = [key[-1] for key in self._compiled]
    return max(ks) if ks else self.batch_candidates

  # ---------------------------------------------------------------------------- scoring

  def score_archs(self, group, archs, k=None, progress=None) -> dict[str, np.ndarray]:
    """Archs (objects or strings) of `group`; `progress(n)` is called after each batch. Archs
    the space calls one network (`Relaxation.same_network`) run once (`one_per_network`)."""
    archs = [self.space.decode(a) if isinstance(a, str) else a for a in archs]
    first, inverse = self.one_per_network(archs)
    if first is not None:
      values = self._size(group, archs=archs)
      once = self._score_each(group, [archs[i] for i in first], k, progress)
      values.update({n: v[inverse] for n, v in once.items() if n not in values})
      if progress:
        progress(len(archs) - len(first))
      return values
    return self._score_each(group, archs, k, progress)

  def one_per_network(self, archs) -> tuple:
    """(first, inverse): `archs[first]` holds one arch per network, and arch i scores as
    `archs[first][inverse[i]]`; (None, None) when every arch must run: no two are one network,
    the space does not say which are, a proxy counts units that carry nothing
    (`Proxy.counts_dead_units`), each candidate has its own init (its own key), or the archs
    span several groups."""
    relax = self.space.relax
    if (len(archs) < 2 or not self.network or relax is None or relax.same_network is None
        or self.settings.per_candidate_init or any(p.counts_dead_units for p in self.network)
        or len({self.space.group(a) for a in archs}) > 1):
      return None, None
    networks = relax.same_network(relax.to_rows(archs))
    _, first, inverse = np.unique(networks, axis=0, return_index=True, return_inverse=True)
    if len(first) == len(archs):
      return None, None
    order = np.argsort(first)  # the networks in the order of their first arch
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[np.asarray(inverse).reshape(-1)]

  def analytic_values(self, group, archs) -> dict[str, np.ndarray]:
    """The analytic proxies (params, flops) of archs of `group`, each arch's own."""
    return self._size(group, archs=[self.space.decode(a) if isinstance(a, str) else a
                                    for a in archs])

  def _score_each(self, group, archs, k, progress) -> dict[str, np.ndarray]:
    if not self.settings.single_path and self.space.relax is not None:
      # as one-hot masks through the relaxed network (NB201's dense supernet)
      masks = one_hot_rows(self.space, group, self.space.relax.to_rows(archs))
      return self._score(group, masks, True, k, progress)
    return self._score(group, self.space.to_array(archs), False, k, progress, archs)

  def score_masks(self, group, masks, k=None, progress=None) -> dict[str, np.ndarray]:
    """Relaxed masks [M, S, O] of `group`: one-hot ones as their archs, others as supernets."""
    masks = np.asarray(masks, np.float32)
    relax = self.space.relax
    if self.settings.single_path and np.all((masks != 0).sum(-1) == 1) and np.all(
        masks.max(-1) == 1):
      return self.score_archs(group, relax.from_rows(group, masks.argmax(-1)), k, progress)
    return self._score(group, masks, True, k, progress)

  def _score(self, group, rows, relaxed, k, progress, archs=None) -> dict[str, np.ndarray]:
    """The analytic proxies of `archs` (relaxed: of the masks `rows`) and the network proxies
    of `rows`."""
    values = self._size(group, masks=rows) if relaxed else self._size(group, archs=archs)
    if self.network:
      values.update(self._score_rows(group, rows, relaxed, k, progress))
    return values

  def traced(self, group, mask, inputs, names) -> dict:
    """{name: value} of the network proxies `names` at one mask [S, O] (traceable)."""
    nets = self.nets(group, relaxed=True)
    key = jax.random.PRNGKey(0)  # shared inits live in `inputs`; the key is unused then
    return {p.name: p.fn(proxies_lib.proxy_key(key, p.name), mask, inputs, self.settings,
                         nets)[0] for p in self.network if p.name in names}

  def _size(self, group, archs=None, masks=None) -> dict[str, np.ndarray]:
    """The analytic proxies: the space's own size, else the lowered graph (archs) or the
    relaxed cost model at a fixed device (supernets; params and MACs do not depend on it)."""
    if not self.analytic:
      return {}
    space = self.space
    shape, classes = space.shape_of(group), space.num_classes
    if space.size is not None:
      if masks is None:
        masks = one_hot_rows(space, group, space.relax.to_rows(archs))
      sizes = space.size(group, masks, self.settings)
    elif masks is None:
      from hardware import graph as graph_lib
      stats = [graph_lib.node_stats(space.lower(a, shape, classes)) for a in archs]
      sizes = {'params': [s.params.sum() for s in stats], 'flops': [s.macs.sum() for s in stats]}
    else:
      costs = space.relax.cost(group, masks, 'stm32f746', 'tflm', input_shape=shape,
                               num_classes=classes)
      sizes = {'params': costs['params'], 'flops': costs['macs']}
    return {n: np.asarray(sizes[n], np.float64) for n in self.analytic}

  def _compiled_for(self, group, rows, relaxed, k, inputs):
    kind = (group, relaxed, str(rows.dtype), rows.shape[1:], k)
    if kind not in self._compiled:
      start = time.perf_counter()
      fn = jax.jit(batch_score_fn(self.proxies, self.settings, self.nets(group, relaxed),
                                  self.candidate_chunk, self.devices))
      example = rows[:1].repeat(k, 0)
      with jax.default_matmul_precision(self.settings.matmul_precision):
        self._compiled[kind] = fn.lower(jnp.asarray(example), row_keys(0, example), inputs,
                                        jnp.ones(k, bool)).compile()
      self.timing.compile_s += time.perf_counter() - start
    return self._compiled[kind]

  def _score_rows(self, group, rows, relaxed, k, progress) -> dict[str, np.ndarray]:
    """Rows in compiled calls of K candidates; a K too big for the device's memory is halved
    (to at least one per device) and the batch retried, with a note: a candidate's score does
    not depend on K (its key comes from its row, the inputs from the seed)."""
    inputs = self.inputs_for(group)
    if not k and self.auto:
      k = self.auto_k(group, rows, relaxed, inputs)
    k = self._round(k or self.batch_candidates)
    keys = row_keys(self.seed, rows)
    out: dict[str, list] = {}
    c = 0
    while c < len(rows):
      n = min(k, len(rows) - c)
      pad = np.r_[np.arange(c, c + n), np.full(k - n, c + n - 1)]
      try:
        compiled = self._compiled_for(group, rows, relaxed, k, inputs)
        start = time.perf_counter()
        part = jax.device_get(compiled(jnp.asarray(rows[pad]), keys[pad], inputs,
                                       jnp.arange(k) < n))
      except Exception as err:  # XLA's out-of-memory error has no narrower public type
        if not is_out_of_memory(err) or k <= len(self.devices):
          raise
        k = self._round(k // 2)
        print(f'note: scoring {n} candidates at once ran out of device memory; splitting into '
              f'batches of {k}', flush=True)
        continue
      self.timing.run_s += time.perf_counter() - start
      for name, value in part.items():
        out.setdefault(name, []).append(np.asarray(value)[:n])
      self.timing.scored += n
      c += n
      if progress:
        progress(n)
    return {name: np.concatenate(parts).astype(np.float64 if not name.endswith('_flag')
                                                else np.int32) for name, parts in out.items()}

  def auto_k(self, group, rows, relaxed, inputs) -> int:
    """K for `--batch_candidates=0`: on a device that reports its memory (GPU, TPU), as many
    candidates per device as fit in AUTO_K_MEMORY_SHARE of its free memory, by the compiled
    program's own memory at one candidate per device (an overestimate per candidate: it holds
    the fixed buffers too), capped at AUTO_K_MAX per device; on CPU, CPU_K. A K that still runs
    out of memory is halved (`_score_rows`)."""
    kind = (group, relaxed, str(rows.dtype), rows.shape[1:])
    if kind not in self._auto_k:
      free = free_device_bytes(self.devices[0])
      n_dev = len(self.devices)
      if free is None:
        self._auto_k[kind] = self._round(CPU_K)
      else:
        memory = self._compiled_for(group, rows, relaxed, n_dev, inputs).memory_analysis()
        per_candidate = max(1, memory.temp_size_in_bytes + memory.output_size_in_bytes)
        per_device = int(AUTO_K_MEMORY_SHARE * free // per_candidate)
        self._auto_k[kind] = n_dev * max(1, min(per_device, AUTO_K_MAX))
        print(f'note: --batch_candidates=0: {self._auto_k[kind]} candidates per compiled call '
              f'({per_candidate / 2**20:.1f} MiB each, {free / 2**30:.1f} GiB free per device)',
              flush=True)
    return self._auto_k[kind]


# --batch_candidates=0: the share of free device memory the batch may use, the most candidates
# per device, and the K on CPU (whose memory jax does not report; throughput on 2 cores is flat
# beyond a few candidates, BENCHMARKS.md)
AUTO_K_MEMORY_SHARE = 0.8
AUTO_K_MAX = 1024
CPU_K = 8


def free_device_bytes(device) -> int | None:
  """Free memory of `device` as its allocator reports it, or None where it reports none (CPU)."""
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  if not stats or 'bytes_limit' not in stats:
    return None
  return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


def is_out_of_memory(err: Exception) -> bool:
  """Whether XLA failed for lack of device memory (at compile or run time)."""
  text = str(err)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text

"""The training-free proxies, chosen by name from one registry, and the settings, inputs and keys
they share, for every search space.

A *network* proxy is a pure function (key, row, inputs, settings, nets) -> (value, flag) that
runs under jit, vmap and lax.map: `row` is one candidate's arch row (op indices, or a relaxed
mask), `nets` the space's networks by the input kind they read ('zc', 'ntk', 'lr';
`SearchSpace.proxy_nets`), and the function only calls `net.init` / `net.apply`
(`engine.proxies.zero_cost`, `engine.proxies.ntk`, `engine.proxies.linear_regions`). An *analytic* proxy (params, flops)
comes from the space's size (`SearchSpace.size`, or its lowered graph), in numpy.

Initialisation: as in TE-NAS, every candidate of a run starts from the same weights for a given
repeat (keys from the run seed and the repeat index, in `inputs`), so repeats differ and
candidates compare on equal footing. It also keeps weights unbatched when candidates are vmapped;
per-candidate weights would make every convolution a grouped one, which XLA:CPU runs far slower.
`settings.per_candidate_init` instead initialises each candidate from its own key.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import jax
import numpy as np

from engine.train import data as data_lib
from engine.proxies import az_nas as az_lib
from engine.proxies import linear_regions as lr_lib
from engine.proxies import ntk as ntk_lib
from engine.proxies import vkdnw as vkdnw_lib
from engine.proxies import zero_cost as zc_lib


class ProxyError(ValueError):
  """Unknown proxy or bad proxy setting; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
  """How proxies are computed. Defaults follow TE-NAS except where a field says otherwise."""
  dataset: str = 'cifar10'        # the dataset the space's network is built for
  init: str = 'torch_default'      # TE-NAS's launch script ends up with PyTorch's default init
  # NTK: batch, repeats (fresh init and fresh batch each) and the proxy network's size.
  ntk_batch: int = 64
  ntk_repeats: int = 3
  # the proxy networks' size where a space scales its network for proxies (NB201's C and N)
  ntk_width: int = 16              # C of the NTK network (NB201: 16; TE-NAS search: 3)
  ntk_cells: int = 5               # N cells per stage (NB201: 5; TE-NAS search: 1)
  cotangent_chunk: int = 0         # coupled NTK: pullbacks vmapped together (0 = auto)
  sparse: bool = False             # multi-hot masks: run only active ops (lax.cond), not dense
  single_path: bool = True         # one-hot candidates run as op indices: their own single path
  per_candidate_init: bool = False  # init from each candidate's key instead of the shared keys
  # Linear regions by patterns (`Net.regions`): TE-NAS's 3 x 1000 crops of 3 x 3 pixels on a
  # thin network; by segments: `lr_segments` pairs of inputs.
  lr_batches: int = 3
  lr_batch_size: int = 1000
  lr_patch: int = 3
  lr_width: int = 1
  lr_repeats: int = 1
  lr_segments: int = 8
  flops_convention: str = 'naslib'
  # Zero-cost proxies (grad_norm, snip, synflow, jacob_cov, nwot): one batch, one init, on the
  # space's full network by default (NB201: NAS-Bench-Suite-Zero's setting).
  zc_batch: int = 64
  zc_width: int = 16
  zc_cells: int = 5
  zc_input_size: int = 0           # 0: the dataset's size; smaller for tests
  zc_depth: int = -1               # layers kept (NB201Config.depth); -1: all, less for tests
  zico_splits: int = 2             # zico: equal mini-batches the zc batch is split into (>= 2)
  # float32 matmuls and convolutions on GPU/TPU: 'highest' (true float32, as on CPU), 'high'
  # (bf16_3x / tf32) or 'default' (tf32 on NVIDIA, one bf16 pass on TPU: fastest, least exact).
  # CPU computes float32 whatever it says. (jax.default_matmul_precision, at compile.)
  matmul_precision: str = 'highest'

  @classmethod
  def from_config(cls, c) -> 'ScoreSettings':
    """The settings an experiment's config (or flags) asks for; one-line errors."""
    for name in ('ntk_batch', 'repeats', 'ntk_width', 'ntk_cells', 'zc_batch', 'zc_width',
                 'zc_cells'):
      if getattr(c, name) < 1:
        raise ProxyError(f'--{name} must be at least 1, got {getattr(c, name)}')
    return cls(  # zico_splits is checked by zico itself
        dataset=c.dataset, init=c.init, ntk_batch=c.ntk_batch, ntk_repeats=c.repeats,
        ntk_width=c.ntk_width, ntk_cells=c.ntk_cells, cotangent_chunk=c.cotangent_chunk,
        sparse=c.sparse, single_path=c.single_path, zc_batch=c.zc_batch, zc_width=c.zc_width,
        zc_cells=c.zc_cells, zico_splits=c.zico_splits,
        matmul_precision=getattr(c, 'matmul_precision', 'highest'))


@dataclasses.dataclass(frozen=True)
class Proxy:
  name: str
  kind: str                 # 'network' or 'analytic'
  higher_is_better: bool
  fn: Callable
  needs: str | None = None  # which input batch a network proxy reads: 'ntk', 'lr', 'zc'
  # The value also counts units or layers that carry nothing to the output (the ReLU patterns
  # of linear_regions and nwot, zen's BN variances, vkdnw's weight tensors), so archs a space
  # calls one network (`Relaxation.same_network`) can score differently. The others depend
  # only on the function the network computes at init (and its gradients), and the scorer
  # runs one arch per network (tests/scoring_test.py holds both sides on NB201's dead edges).
  counts_dead_units: bool = False
  # the weights' distribution is the proxy's own (its authors': kaiming_normal), not --init
  own_init: bool = False


def _init_keys(key, inputs, name, s: ScoreSettings):
  shared = inputs[name + '_init']
  if s.per_candidate_init:
    return jax.random.split(key, shared.shape[0])
  return shared


def _ntk(variant):
  def fn(key, row, inputs, s: ScoreSettings, nets):
    return ntk_lib.ntk_condition(nets['ntk'], _init_keys(key, inputs, 'ntk', s), row,
                                 inputs['ntk'], variant, s.init, s.cotangent_chunk)
  return fn


def _linear_regions(key, row, inputs, s: ScoreSettings, nets):
  return lr_lib.linear_regions(nets['lr'], _init_keys(key, inputs, 'lr', s), row, inputs['lr'],
                               s.init)


def _zero_cost(fn, init=None, options=None):
  """A zero-cost proxy of `engine.proxies.zero_cost` on the zc batch; `init` overrides settings.init and
  `options(settings, init_key)` gives extra keyword arguments."""
  def run(key, row, inputs, s: ScoreSettings, nets):
    net = nets['zc']
    init_key = _init_keys(key, inputs, 'zc', s)[0]
    params = net.init(init_key, row, init or s.init)
    extra = options(s, init_key) if options else {}
    return fn(net, params, row, inputs['zc'], inputs['zc_labels'], **extra)
  return run


def _zico_options(s: ScoreSettings, _):
  if s.zico_splits < 2 or s.zc_batch % s.zico_splits:
    raise ProxyError(f'zico needs --zico_splits >= 2 dividing the zc batch ({s.zc_batch}); '
                     f'got {s.zico_splits}')
  return {'splits': s.zico_splits}


# zen draws Gaussian weights (from kaiming_normal) and Gaussian inputs from the shared init key,
# so every candidate sees the same inputs.
_ZC_OPTIONS = {
    'zico': {'options': _zico_options},
    'zen': {'init': 'kaiming_normal', 'options': lambda s, k: {'key': jax.random.fold_in(k, 1)}},
}


def _az_nas(names):
  """AZ-NAS's terms (`engine.proxies.az_nas`) on the zc batch, from the authors'
  kaiming_normal (fan_in) init; the Rademacher projections come from the init key, so every
  candidate of a run shares them as it shares its weights. fn -> {name: (value, flag)} when
  `names` has several terms (one shared pass), else the one term's (value, flag)."""
  def run(key, row, inputs, s: ScoreSettings, nets):
    net = nets['zc']
    init_key = _init_keys(key, inputs, 'zc', s)[0]
    params = net.init(init_key, row, 'kaiming_normal')
    values = az_lib.az_terms(net, params, row, inputs['zc'], jax.random.fold_in(init_key, 2),
                             names)
    return values if len(names) > 1 else values[names[0]]
  return run


REGISTRY: dict[str, Proxy] = {p.name: p for p in [
    Proxy('ntk_cond', 'network', False, _ntk('coupled'), 'ntk'),
    Proxy('ntk_cond_independent', 'network', False, _ntk('independent'), 'ntk'),
    Proxy('linear_regions', 'network', True, _linear_regions, 'lr', counts_dead_units=True),
    Proxy('params', 'analytic', True, None),
    Proxy('flops', 'analytic', True, None),
] + [Proxy(name, 'network', True, _zero_cost(fn, **_ZC_OPTIONS.get(name, {})), 'zc',
           counts_dead_units=name in ('nwot', 'zen'),
           own_init='init' in _ZC_OPTIONS.get(name, {}))
     for name, fn in zc_lib.PROXIES.items()] + [
    # VKDNW (engine.proxies.vkdnw) on the zc batch, from the authors' kaiming_normal (fan_in) init
    Proxy('vkdnw', 'network', True, _zero_cost(vkdnw_lib.vkdnw, init='kaiming_normal'), 'zc',
          counts_dead_units=True, own_init=True),
    Proxy('vkdnw_dim', 'network', True, _zero_cost(vkdnw_lib.tensor_count, init='kaiming_normal'),
          'zc', counts_dead_units=True, own_init=True),
] + [Proxy(name, 'network', True, _az_nas((name,)), 'zc', own_init=True)
     for name in az_lib.TERMS]}


def fused_gradient_proxies(proxies, s: ScoreSettings):
  """(names, fn) when two or more of grad_norm, snip, fisher and grasp are requested: fn(key,
  row, inputs, settings, nets) -> {name: (value, flag)} from one shared pass
  (`zero_cost.gradient_proxies`). None otherwise, or with per-candidate init (each proxy then
  draws its own init from its own key, so there is no pass to share). Two or more of AZ-NAS's
  terms likewise share one pass (`az_nas.az_terms`), with or without the gradient group."""
  az = tuple(p.name for p in proxies if p.name in az_lib.TERMS)  # AZ-NAS's terms: one pass
  az = (az, _az_nas(az)) if len(az) > 1 and not s.per_candidate_init else None
  names = tuple(p.name for p in proxies if p.name in zc_lib.GRADIENT_GROUP)
  if len(names) < 2 or s.per_candidate_init:
    return az

  def fn(key, row, inputs, settings: ScoreSettings, nets):
    net = nets['zc']
    params = net.init(inputs['zc_init'][0], row, settings.init)
    return zc_lib.gradient_proxies(net, params, row, inputs['zc'], inputs['zc_labels'], names)
  if az:
    return names + az[0], lambda *a: {**fn(*a), **az[1](*a)}
  return names, fn


def get(names) -> list[Proxy]:
  """Proxies by name (a comma-separated string or a list); unknown names fail in one line."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  if not names:
    raise ProxyError(f'no proxy given; choose from {", ".join(REGISTRY)}')
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ProxyError(f'unknown proxy {unknown[0]!r}; choose from {", ".join(REGISTRY)}')
  return [REGISTRY[n] for n in dict.fromkeys(names)]


def proxy_key(key, name: str):
  """A proxy's own stream of a candidate's key: independent of which other proxies run."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def make_inputs(proxies, settings: ScoreSettings, seed: int,
                images: data_lib.ImageSet | None, nets) -> dict[str, np.ndarray]:
  """The input batches every candidate is scored on (shared, so candidates compare fairly), at
  the input shapes of the space's proxy networks `nets` ({kind: Net})."""
  needs = {p.needs for p in proxies}
  rng = np.random.default_rng([seed, 0x2ee7])
  inputs = {}
  if 'ntk' in needs:
    shape = nets['ntk'].input_shape
    inputs['ntk'] = data_lib.sample_batches(rng, settings.ntk_repeats, settings.ntk_batch, images,
                                            shape[0], channels=shape[-1])
    inputs['ntk_init'] = _repeat_keys(seed, 'ntk', settings.ntk_repeats)
  if 'lr' in needs:
    if nets['lr'].regions == 'patterns':
      parts = [data_lib.sample_patches(rng, settings.lr_batches, settings.lr_batch_size, images,
                                       nets['lr'].input_shape[0])
               for _ in range(settings.lr_repeats)]
    else:
      shape = tuple(nets['lr'].input_shape)
      parts = [data_lib.sample_batches(rng, 1, 2 * settings.lr_segments, images, shape[0],
                                       channels=shape[-1])
               .reshape((settings.lr_segments, 2) + shape) for _ in range(settings.lr_repeats)]
    inputs['lr'] = np.stack(parts)
    inputs['lr_init'] = _repeat_keys(seed, 'lr', settings.lr_repeats)
  if 'zc' in needs:
    net = nets['zc']
    x, labels = data_lib.sample_batches(rng, 1, settings.zc_batch, images, net.input_shape[0],
                                        num_classes=net.num_classes,
                                        channels=net.input_shape[-1])
    inputs['zc'], inputs['zc_labels'] = x[0], labels[0]
    inputs['zc_init'] = _repeat_keys(seed, 'zc', 1)
  return inputs


def _repeat_keys(seed: int, name: str, repeats: int) -> np.ndarray:
  base = proxy_key(jax.random.PRNGKey(seed), name)
  return np.asarray(jax.random.split(base, repeats))

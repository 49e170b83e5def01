"""NB201 as a registered search space: the cell's 6 edges, 5 ops each (15,625 archs).

An arch is a tuple of 6 op indices (`nb201.OPS`), its string the benchmark's arch string. Its
choices are those indices (one slot per edge, 5 options) and its supernet the op mask [6, 5]
that the scoring network (`nb201.net`) and the gated hardware template (`nb201.graph.cost`)
take directly; `none` is the optional option pruning may start without. Archs whose output
ignores the input (no path through non-`none` ops) are not valid.

The input shape and class count are the dataset's (`nb201.DATASETS`): `lower` and the relaxed
cost take them, and `config_for` maps them back to the network's configuration.

Its `Net` (`make_net`) is the supernet of `nb201.net` behind the interface every proxy uses: a
row is op indices [6] (each edge runs its one op: the single path) or an op mask [6, 5] (dense,
or `sparse`). The proxies run at the sizes the literature uses (`proxy_nets`): the zero-cost
proxies on the full network (NAS-Bench-Suite-Zero), the NTK at `ntk_width` x `ntk_cells`, the
linear regions on TE-NAS's one-cell, one-channel network over 3x3 crops.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from search_spaces import interface, nb201, registry
from search_spaces.kernels import batch_norm
from search_spaces.nb201 import CONV1, CONV3
from search_spaces.nb201 import graph as nb201_graph
from search_spaces.nb201 import net as nb201_net


def config_for(input_shape=None, num_classes=None) -> nb201.NB201Config:
  """The full NB201 network (C=16, N=5) at this input shape and class count."""
  size = int(input_shape[0]) if input_shape else nb201.DATASETS['cifar10'][0]
  classes = int(num_classes) if num_classes else nb201.DATASETS['cifar10'][1]
  return nb201.NB201Config(input_size=size, num_classes=classes)


def decode(arch_str: str) -> tuple:
  return tuple(int(o) for o in nb201.parse_arch_str(arch_str))


def encode(arch) -> str:
  return nb201.format_arch_str(np.asarray(arch))


def to_array(archs) -> np.ndarray:
  rows = [decode(a) if isinstance(a, str) else tuple(a) for a in archs]
  return np.asarray(rows, np.int32).reshape(-1, nb201.NUM_EDGES)


def from_rows(group, rows) -> list:
  return [tuple(int(o) for o in r) for r in np.asarray(rows).reshape(-1, nb201.NUM_EDGES)]


def mutate(arch, rng: np.random.Generator) -> tuple:
  """One edge's op changed to another op."""
  ops = list(arch)
  edge = int(rng.integers(nb201.NUM_EDGES))
  ops[edge] = (ops[edge] + int(rng.integers(1, nb201.NUM_OPS))) % nb201.NUM_OPS
  return tuple(ops)


def lower(arch, input_shape=None, num_classes=None):
  arch = decode(arch) if isinstance(arch, str) else arch
  return nb201_graph.lower(nb201.ops_to_mask(np.asarray(arch)),
                           config_for(input_shape, num_classes), name=encode(arch))


def sized_lower(arch, C: int = 16, N: int = 5, dataset: str = 'cifar10', num_classes: int = 0):
  """The arch's graph at width C and cells N for `dataset`, its constants kept: the network the
  trainer, the integer reference and the exporters run (`SearchSpace.sized_lower`)."""
  arch = decode(arch) if isinstance(arch, str) else tuple(arch)
  classes = {'num_classes': num_classes} if num_classes else {}
  config = nb201.NB201Config.for_dataset(dataset, C=C, N=N, **classes)
  return nb201_graph.train_graph(np.asarray(arch), config, name=encode(arch))


# NB201's layers without BN: the reduction's shortcut conv (He, as every conv of its network)
# and the classifier (LeCun normal)
TRAIN_INITS = (('conv2d', 'he_normal'), ('dense', 'lecun_normal'))


def relaxed_cost(group, masks, device, runtime, input_shape=None, num_classes=None) -> dict:
  return nb201_graph.cost(masks, config_for(input_shape, num_classes), device, runtime)


# ----------------------------------------------------------------------------- the Net

def _stacked(path) -> int:
  """Leading (cell, edge) axes of a parameter leaf: cell convs stack as [cells, edges, ...]."""
  return 2 if str(path[-1].key) in ('conv1', 'conv3') else 0


def layer_axes(path, leaf):
  if str(path[-1].key) not in nb201_net.LAYER_WEIGHTS:
    return None
  return tuple(range(_stacked(path), leaf.ndim))


def _identity_stats(params, row, x, config):
  """BN statistics mean 0, var 1 - eps: every BN becomes scale * x + bias, i.e. the identity at
  init (scale 1, bias 0). Stands in for zero-cost-nas's synflow net built with bn=False."""
  used = jax.eval_shape(lambda: nb201_net.apply(params, row, x, config)[1])
  return jax.tree.map(lambda st: (jnp.zeros(st[0].shape, st[0].dtype),
                                  jnp.full(st[1].shape, 1 - nb201_net.BN_EPS, st[1].dtype)),
                      used, is_leaf=lambda a: isinstance(a, tuple))


def log_bn_scales(stats, row):
  """sum over the network's BN layers of log sqrt(mean over channels of the batch variance).
  BNs of convs the arch switches off, and of convs whose input node only `none` edges feed (a
  zero tensor, so batch variance 0 and log sigma = -inf), do not exist in the architecture (the
  lowering drops them too) and are left out. A cell whose output is unreachable still gives
  -inf through the network's constant output, flagged by the caller."""
  mask = jax.nn.one_hot(row, nb201.NUM_OPS) if jnp.ndim(row) == 1 else jnp.asarray(row)
  live = nb201.live_nodes(jnp.any(mask[:, 1:] != 0, -1))  # any non-none op on the edge
  total = jnp.zeros(())
  log_sigma = lambda var: 0.5 * jnp.log(jnp.mean(var, -1))
  for key, (_, var) in stats.items():
    parts = key.split('/')
    if parts[0].startswith('stage'):  # stage/cell/edge/conv1|conv3
      edge = int(parts[2])
      active = ((mask[edge, CONV1 if parts[3] == 'conv1' else CONV3] != 0)
                & live[nb201.EDGES[edge][1]])
      total = total + jnp.where(active, log_sigma(jnp.where(active, var, 1.0)), 0.0)
    else:
      total = total + log_sigma(var)
  return total


_CELL_TENSORS = {'conv1': CONV1, 'bn1_scale': CONV1, 'bn1_bias': CONV1,
                 'conv3': CONV3, 'bn3_scale': CONV3, 'bn3_bias': CONV3}


def param_tensors(shapes, row) -> dict:
  """{leaf path key: bool [cells, edges] or ()}: the PyTorch parameter tensors of the arch's own
  network (`interface.Net.param_tensors`). A cell conv and its BN exist where the edge's op is
  that conv, whether or not its node reaches the output (the NB201 PyTorch cell builds it
  anyway); stem, reduction blocks and head always exist."""
  mask = jax.nn.one_hot(row, nb201.NUM_OPS) if jnp.ndim(row) == 1 else jnp.asarray(row)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    name = str(path[-1].key)
    if name in _CELL_TENSORS:
      on = mask[:, _CELL_TENSORS[name]] != 0
      out[interface.path_key(path)] = jnp.broadcast_to(on, leaf.shape[:2])
    else:
      out[interface.path_key(path)] = jnp.asarray(True)
  return out


@functools.lru_cache(maxsize=None)
def make_net(config: nb201.NB201Config, sparse: bool = False) -> interface.Net:
  """The NB201 network of `config` behind `interface.Net` (see the module docstring)."""
  shapes = jax.eval_shape(lambda: nb201_net.init_params(jax.random.PRNGKey(0), config))
  fans = {interface.path_key(p): int(math.prod(leaf.shape[_stacked(p):-1]))
          for p, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
          if str(p[-1].key) in nb201_net.LAYER_WEIGHTS}

  def apply(params, row, x, probes=None, bn='batch', stats=None, rescale=False, codes=False,
            features=False, stage_features=False, stage_shifts=None):
    if bn == 'identity':
      stats = _identity_stats(params, row, x, config)
    logits, walked = nb201_net.run(params, row, x, config, sparse=sparse, fixed_stats=stats,
                                   probes=probes, record_relus=codes, rescale=rescale,
                                   record_stages=stage_features, stage_shifts=stage_shifts)
    out = interface.Outputs(logits, tuple(walked.relus.values()), True, stats=walked.stats,
                            log_scale=walked.log_scale,
                            stage_features=tuple((f, jnp.bool_(True))
                                                 for f in walked.stage_features))
    if features:  # Zen-NAS's pre-pooling features: after the head's BN and ReLU
      head = params['head']
      f = jax.nn.relu(batch_norm(walked.last, head['bn_scale'], head['bn_bias'])[0])
      out = out._replace(features=f, bn_log_sigma=log_bn_scales(walked.stats, row))
    return out

  return interface.Net(
      init=lambda key, row, kind='torch_default': nb201_net.init_params(key, config, kind),
      apply=apply, fan_in=lambda row: fans, input_shape=(config.input_size,) * 2 + (
          config.in_channels,), num_classes=config.num_classes,
      example_row=np.zeros(nb201.NUM_EDGES, np.int32), layer_axes=layer_axes,
      ntk_weight=nb201_net.is_weight, regions='patterns', vmap_masks=not sparse,
      widest=config.input_size ** 2 * max(config.C, config.in_channels),
      label=f'C={config.C} N={config.N}' if config.use_stem else f'C={config.C}, one cell',
      param_tensors=functools.partial(param_tensors, shapes))


def proxy_configs(s) -> dict:
  """{'zc' | 'ntk' | 'lr': NB201Config} of the settings (`engine.proxies.ScoreSettings`)."""
  size = {'input_size': s.zc_input_size} if s.zc_input_size else {}
  return {
      'zc': nb201.NB201Config.for_dataset(s.dataset, C=s.zc_width, N=s.zc_cells,
                                          depth=s.zc_depth, **size),
      'ntk': nb201.NB201Config.for_dataset(s.dataset, C=s.ntk_width, N=s.ntk_cells),
      'lr': nb201.NB201Config.for_dataset(s.dataset, C=s.lr_width, N=1, use_stem=False,
                                          depth=1, in_channels=1, input_size=s.lr_patch)}


def proxy_nets(group, s, relaxed=False) -> dict:
  """The networks NB201's proxies run on, at the settings' sizes (`engine.proxies`)."""
  del group, relaxed  # one group; op indices and masks run on the same supernet
  configs = proxy_configs(s)
  # TE-NAS's linear-region count always runs the dense walk
  return {'zc': make_net(configs['zc'], s.sparse), 'ntk': make_net(configs['ntk'], s.sparse),
          'lr': make_net(configs['lr'])}


def size(group, masks, s) -> dict:
  """params and flops of the full network for the settings' dataset (masks [K, 6, 5])."""
  config = nb201.NB201Config.for_dataset(s.dataset)
  return {'params': nb201.count_params(masks, config),
          'flops': nb201.count_flops(masks, config, s.flops_convention)}


def net(group=(), input_shape=None, num_classes=None) -> interface.Net:
  """The full network at this input shape and class count (NB201 has one group)."""
  return make_net(config_for(input_shape, num_classes))


RELAXATION = interface.Relaxation(
    slots=lambda group: (nb201.NUM_OPS,) * nb201.NUM_EDGES, to_rows=to_array, net=net,
    from_rows=from_rows, cost=relaxed_cost, optional=nb201.NONE, valid=nb201.is_connected,
    same_network=nb201.without_dead_edges)

SPACE = registry.register(interface.SearchSpace(
    name='nb201', summary='NAS-Bench-201 cell (6 edges x 5 ops, 15,625 archs)',
    decode=decode, encode=encode,
    sample=lambda rng, n: from_rows((), nb201.sample_ops(rng, n)),
    enumerate=lambda: from_rows((), nb201.all_ops()), to_array=to_array, net=net,
    lower=lower, mutate=mutate, relax=RELAXATION, proxy_nets=proxy_nets, size=size,
    sized_lower=sized_lower, train_inits=TRAIN_INITS,
    input_shape=(32, 32, 3), num_classes=10,
    datasets={name: ((size, size, 3), classes) for name, (size, classes) in
              nb201.DATASETS.items()}))

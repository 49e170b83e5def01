"""Lowering of NAS-Bench-201 candidates to the hardware layer graph.

One template per `NB201Config` holds every candidate op of every edge in every cell; node gates
index the flattened op mask (gate e * 5 + o is mask[e, o]; 'none' has no node).  All cells share
the same gates, as they share the same arch.  A candidate is therefore just its mask:

* hard (one-hot or multi-hot 0/1) masks: `lower` prunes the template to the concrete graph
  (dead-code elimination: ops whose input is a zero tensor and nodes that do not reach the
  output are dropped; a cell node with a single live term is an alias, not a copy; a fully
  disconnected cell makes everything downstream constant, so only the input remains);
* soft masks (e.g. softmax weights [K, 6, 5]): `cost` evaluates the template in JAX with the
  same rules in min/max fuzzy logic (see hardware/graph.py), exact at 0/1 and differentiable.

The template is built by the network's one walk (`nb201_net.network`) with `GraphBackend`, which
emits graph nodes instead of computing: stem conv3x3 + BN (folded); cells (ReLU -> conv -> BN
folded; 3x3 avg pool stride 1; identity), every candidate op of an edge under its gate, n-ary
node sums after all their terms; reduction = ReLU-conv3x3/s2-BN, ReLU-conv3x3-BN, shortcut
AvgPool2x2 -> conv1x1 (no BN), add; head BN -> ReLU -> global avg pool -> dense (bias). Convs
pad as PyTorch does ('symmetric': k // 2 on every side; at stride 2 not TF's SAME), the 3x3
pool 'same' without counting the padding (count_include_pad=False).

`train_graph` is a candidate's graph with its constants kept (`graph_lib.prune(constants=True)`):
the network the trainer, the integer reference and the exporters run (`engine.quant.graph_qat`,
`engine.quant.graph_int`, `deploy.graph_tflite`; the space's `sized_lower`), whose `prune` is
`lower`'s graph.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

import hardware
from hardware import graph as graph_lib
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import EDGES, NB201Config, OPS

NUM_GATES = len(EDGES) * len(OPS)


def gate_index(edge: int, op: int) -> int:
  return edge * len(OPS) + op


# Node names: the layer's place in the plan (layer{i}_cell / layer{i}_reduce), then the part.
_EDGE_OP_NAMES = {'skip': 'skip_connect', 'pool': 'avg_pool_3x3', 'conv1': 'nor_conv_1x1',
                  'conv3': 'nor_conv_3x3'}
_HEAD_NAMES = {('stem', 'conv'): 'stem/conv', ('head', 'bn'): 'head/bn',
               ('head', 'relu'): 'head/relu', ('gap', 'gap'): 'head/gap',
               ('classifier', 'fc'): 'head/fc'}


class GraphBackend(nb201_net.Backend):
  """`nb201_net.network` emitting hardware-graph nodes: a tensor is a node id of `builder`.

  Walked with arch `gate_index` (every op of every edge, weight = its gate), `gate` builds one
  candidate op with every node it makes (ReLU, conv, identity, pool) under that gate.
  """

  def __init__(self, builder: graph_lib.GraphBuilder, config: NB201Config):
    self.b = builder
    self._gate = -1
    self._prefix = {}
    cells: dict[int, int] = {}
    for i, (kind, stage) in enumerate(config.layer_plan()):
      if kind == 'cell':
        c = cells[stage] = cells.get(stage, -1) + 1
        self._prefix[(f'stage{stage}', c)] = f'layer{i}_cell'
      else:
        self._prefix[(f'reduce{stage}',)] = f'layer{i}_reduce'

  def _name(self, path, part: str) -> str:
    if path[0].startswith('stage'):
      prefix = self._prefix[path[:2]]
      if len(path) == 3:  # node sum
        return f'{prefix}/{path[2]}'
      op = f'{prefix}/e{path[2]}/{_EDGE_OP_NAMES[path[3]]}'
      return f'{op}/{part}' if path[3] in ('conv1', 'conv3') else op
    if path[0].startswith('reduce'):
      branch = 'shortcut' if path[1] == 'pool' else path[1]
      return f'{self._prefix[path[:1]]}/{branch}' + ('' if branch == 'add' else f'/{part}')
    return _HEAD_NAMES[(path[0], part)]

  def input(self, x):
    return self.b.input(x)

  def conv(self, t, path, features, k, stride=1, bn=True):
    # PyTorch's padding k // 2 on every side (at stride 2, TF's SAME would pad 0 before, 1 after)
    return self.b.conv2d(t, features, k, stride, 'symmetric', bias=False, folded_bn=bn,
                         gate=self._gate, name=self._name(path, 'conv'))

  def relu(self, t, path):
    return self.b.activation(t, 'relu', gate=self._gate, name=self._name(path, 'relu'))

  def pool(self, t, path, size):
    stride, padding = (1, 'same') if size == 3 else (2, 'valid')
    return self.b.pool(t, 'avg', size, stride, padding, gate=self._gate,
                       name=self._name(path, 'pool'))

  def identity(self, t, path):
    return self.b.identity(t, gate=self._gate, name=self._name(path, 'identity'))

  def add(self, terms, path, like):
    if not terms:
      raise ValueError('the template walks every op, so no node sum is empty')
    return self.b.add(*terms, name=self._name(path, 'add'))

  def gate(self, weight, fn, like):
    outer, self._gate = self._gate, -1 if weight is None else weight
    try:
      return fn()
    finally:
      self._gate = outer

  def head_bn(self, t, path):
    return self.b.batchnorm(t, name=self._name(path, 'bn'))

  def global_pool(self, t, path):
    return self.b.global_avg_pool(t, name=self._name(path, 'gap'))

  def dense(self, t, path, features):
    return self.b.dense(t, features, name=self._name(path, 'fc'))


@functools.lru_cache(maxsize=16)
def template_graph(config: NB201Config = NB201Config()) -> graph_lib.Graph:
  """Gated graph with every candidate op; gates = flattened [6, 5] op mask."""
  b = graph_lib.GraphBuilder(f'nb201_C{config.C}_N{config.N}', num_gates=NUM_GATES)
  nb201_net.network(GraphBackend(b, config), gate_index,
                    (config.input_size, config.input_size, config.in_channels), config)
  return b.build()


@functools.lru_cache(maxsize=16)
def template(config: NB201Config = NB201Config()) -> hardware.Template:
  return hardware.compile_template(template_graph(config))


def to_mask(arch) -> np.ndarray:
  """Arch string, op indices [6] or mask [6, 5] -> float mask [6, 5]."""
  from search_spaces import nb201
  if isinstance(arch, str):
    arch = nb201.parse_arch_str(arch)
  arch = np.asarray(arch)
  if arch.shape == (len(EDGES),):
    return nb201.ops_to_mask(arch)
  if arch.shape[-2:] != (len(EDGES), len(OPS)):
    raise ValueError(f'expected an arch string, op indices [6] or a mask [6, 5]; got shape '
                     f'{arch.shape}')
  return arch.astype(np.float32)


def gates_from_masks(masks) -> np.ndarray:
  """Masks [..., 6, 5] -> gates [..., 30]."""
  masks = np.asarray(masks, np.float32)
  return masks.reshape(masks.shape[:-2] + (NUM_GATES,))


def lower(arch, config: NB201Config = NB201Config(), name: Optional[str] = None,
          constants: bool = False) -> graph_lib.Graph:
  """Concrete graph of one hard (0/1, possibly multi-hot) candidate (`constants`: with its
  constants kept, `graph_lib.prune`)."""
  mask = to_mask(arch)
  if not np.all((mask == 0) | (mask == 1)):
    raise ValueError('lower() needs a 0/1 mask; use cost() for soft op weights')
  if name is None:
    name = arch if isinstance(arch, str) else 'nb201'
  return graph_lib.prune(template_graph(config), gates_from_masks(mask), name=name,
                         constants=constants)


def train_graph(arch, config: NB201Config = NB201Config(),
                name: Optional[str] = None) -> graph_lib.Graph:
  """The concrete graph of one single-path candidate with its constants kept
  (`graph_lib.prune(constants=True)`): the network the trainer, the integer reference and the
  exporters run (`engine.quant.graph_qat`, `engine.quant.graph_int`, `deploy.graph_tflite`); its
  `prune` is `lower`'s graph."""
  return lower(arch, config, name, constants=True)


def count_without_dce(arch, config: NB201Config = NB201Config()) -> tuple[int, int]:
  """(conv+dense MACs, PyTorch-style params) counting every op whose gate is on, as NB201's
  own counters do (they run dead branches too); for cross-checking the lowering."""
  g = template_graph(config)
  gates = gates_from_masks(to_mask(arch))
  on = graph_lib.gates_on(g, gates)
  macs = int(graph_lib.node_stats(g).macs[on].sum())
  return macs, graph_lib.torch_style_params(g, gates)


def cost(masks, config: NB201Config = NB201Config(), device='stm32f746', runtime='cmsis-nn',
         cycles=None) -> dict:
  """Batched hardware cost of masks [K, 6, 5] (or one [6, 5]); soft weights allowed."""
  masks = np.asarray(masks, np.float32) if not hasattr(masks, 'dtype') else masks
  gates = masks.reshape(masks.shape[:-2] + (NUM_GATES,))
  return hardware.cost(template(config), gates, device=device, runtime=runtime, cycles=cycles)


def cost_rows(masks, config: NB201Config = NB201Config(), device='stm32f746',
              runtime='cmsis-nn', names: Optional[Sequence[str]] = None,
              cycles=None) -> list[dict]:
  """One CSV row per mask of a batch [K, 6, 5] (names default to arch strings)."""
  from search_spaces import nb201
  masks = np.asarray(masks, np.float32)
  if masks.ndim == 2:
    masks = masks[None]
  if names is None:
    names = [nb201.format_arch_str(m.argmax(-1)) if np.all(m.sum(-1) == 1) and np.all(
        (m == 0) | (m == 1)) else f'mask{i}' for i, m in enumerate(masks)]
  result = cost(masks, config, device, runtime, cycles)
  return hardware.rows_from_batch(names, result, device, runtime)

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

Lowering of the official TinyNetwork: stem conv3x3 + BN (folded); cells (ReLU -> conv -> BN
folded; 3x3 avg pool stride 1; identity); n-ary node sums run after all their terms;
reduction = ReLU-conv3x3/s2-BN, ReLU-conv3x3-BN, shortcut AvgPool2x2 -> conv1x1 (no BN), add;
head BN -> ReLU -> global avg pool -> dense (bias).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

import hardware
from hardware import graph as graph_lib
from search_spaces.nb201 import EDGES, NB201Config, OPS

NUM_GATES = len(EDGES) * len(OPS)


def gate_index(edge: int, op: int) -> int:
  return edge * len(OPS) + op


def _edge_ops(b: graph_lib.GraphBuilder, x: int, edge: int, prefix: str) -> list[int]:
  """All candidate ops of one edge on input x (outputs to be summed)."""
  c = b.shape(x)[2]
  outs = []
  for o, op in enumerate(OPS):
    gate, name = gate_index(edge, o), f'{prefix}/e{edge}/{op}'
    if op == 'skip_connect':
      outs.append(b.identity(x, gate=gate, name=name))
    elif op in ('nor_conv_1x1', 'nor_conv_3x3'):
      k = 1 if op == 'nor_conv_1x1' else 3
      r = b.activation(x, 'relu', gate=gate, name=f'{name}/relu')
      outs.append(b.conv2d(r, c, k, bias=False, folded_bn=True, gate=gate, name=f'{name}/conv'))
    elif op == 'avg_pool_3x3':
      outs.append(b.pool(x, 'avg', 3, 1, 'same', gate=gate, name=name))
  return outs


def _cell(b: graph_lib.GraphBuilder, x: int, prefix: str) -> int:
  nodes = [x]
  for to_node in (1, 2, 3):
    terms = []
    for e, (t, frm) in enumerate(EDGES):
      if t == to_node:
        terms += _edge_ops(b, nodes[frm], e, prefix)
    nodes.append(b.add(*terms, name=f'{prefix}/node{to_node}'))
  return nodes[3]


def _reduction(b: graph_lib.GraphBuilder, x: int, c_out: int, prefix: str) -> int:
  a = b.activation(x, 'relu', name=f'{prefix}/a/relu')
  a = b.conv2d(a, c_out, 3, 2, bias=False, folded_bn=True, name=f'{prefix}/a/conv')
  a = b.activation(a, 'relu', name=f'{prefix}/b/relu')
  a = b.conv2d(a, c_out, 3, 1, bias=False, folded_bn=True, name=f'{prefix}/b/conv')
  s = b.pool(x, 'avg', 2, 2, 'valid', name=f'{prefix}/shortcut/pool')
  s = b.conv2d(s, c_out, 1, bias=False, name=f'{prefix}/shortcut/conv')
  return b.add(a, s, name=f'{prefix}/add')


@functools.lru_cache(maxsize=16)
def template_graph(config: NB201Config = NB201Config()) -> graph_lib.Graph:
  """Gated graph with every candidate op; gates = flattened [6, 5] op mask."""
  b = graph_lib.GraphBuilder(f'nb201_C{config.C}_N{config.N}', num_gates=NUM_GATES)
  x = b.input((config.input_size, config.input_size, config.in_channels))
  if config.use_stem:
    x = b.conv2d(x, config.C, 3, bias=False, folded_bn=True, name='stem/conv')
  for i, (kind, stage) in enumerate(config.layer_plan()):
    if kind == 'reduce':
      x = _reduction(b, x, config.C * 2 ** stage, f'layer{i}_reduce')
    else:
      x = _cell(b, x, f'layer{i}_cell')
  x = b.batchnorm(x, name='head/bn')
  x = b.activation(x, 'relu', name='head/relu')
  x = b.global_avg_pool(x, name='head/gap')
  b.dense(x, config.num_classes, name='head/fc')
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


def lower(arch, config: NB201Config = NB201Config(),
          name: Optional[str] = None) -> graph_lib.Graph:
  """Concrete graph of one hard (0/1, possibly multi-hot) candidate."""
  mask = to_mask(arch)
  if not np.all((mask == 0) | (mask == 1)):
    raise ValueError('lower() needs a 0/1 mask; use cost() for soft op weights')
  if name is None:
    name = arch if isinstance(arch, str) else 'nb201'
  return graph_lib.prune(template_graph(config), gates_from_masks(mask), name=name)


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

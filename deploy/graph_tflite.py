"""An int8 .tflite of any lowered hardware graph: the graph's own tensors, ops and shapes
(conv2d / depthwise_conv2d with SAME padding and a fused ReLU or ReLU6, add, average / max /
global average pool, reshape, dense), written with `deploy.tflite`'s flatbuffer builder.

Two sources of numbers:
  * a trained, quantized graph (`engine.graph_int.IntGraph`): the export of a plug-in space's
    winner, verified bit for bit against that integer reference in TFLite Micro;
  * `quantized=None`: seeded random int8 weights with per-channel scales, which run but predict
    nothing. Memory and file size do not depend on the weights' values, so this is what an
    untrained arch costs in TFLite Micro (arena, flash).
"""
from __future__ import annotations

import numpy as np

from deploy import tflite as tfl
from hardware import graph as graph_lib

_CONV_OPS = ('conv2d', 'depthwise_conv2d')


class _RandomWeights:
  """The `IntGraph` interface with seeded random numbers (every activation on one grid)."""

  def __init__(self, graph, seed):
    self.rng = np.random.default_rng(seed)
    self.graph = graph

  def act(self, i):
    return 0.05, 0

  def layer(self, i):
    node = self.graph.nodes[i]
    cin = self.graph.nodes[node.inputs[0]].shape[2]
    c = node.shape[2]
    kh, kw = node.kernel
    shape = {'conv2d': (c, kh, kw, cin), 'depthwise_conv2d': (1, kh, kw, c),
             'dense': (c, cin)}[node.op]
    w = self.rng.integers(-127, 128, shape, dtype=np.int8)
    return w, np.zeros(c, np.int32), np.full(c, 0.01, np.float32)


def to_tflite(graph: graph_lib.Graph, quantized=None, seed: int = 0,
              description: str = '') -> bytes:
  """The graph as an int8 TFLite flatbuffer; `quantized`: an `engine.graph_int.IntGraph` of
  this graph (None: random weights, `seed`)."""
  q = quantized if quantized is not None else _RandomWeights(graph, seed)
  m = tfl.ModelBuilder()
  ids: dict[int, int] = {}
  for i, node in enumerate(graph.nodes):
    h, w, c = node.shape
    scale, zp = q.act(i)
    out = lambda shape: m.tensor(shape, scale, zp, node.name)
    if node.op == 'input':
      ids[i] = out((1, h, w, c))
      continue
    src = ids[node.inputs[0]]
    if node.op in _CONV_OPS or node.op == 'dense':
      wq, bq, w_scale = q.layer(i)
      in_scale = q.act(node.inputs[0])[0]
      depthwise = node.op == 'depthwise_conv2d'
      wt = m.tensor(wq.shape, w_scale, np.zeros(c), node.name + '/w', wq.astype(np.int8),
                    axis=3 if depthwise else 0)
      bt = m.tensor((c,), np.float32(in_scale) * w_scale, np.zeros(c), node.name + '/b',
                    bq.astype(np.int32), dtype='int32')
      if node.op == 'dense':
        ids[i] = out((1, c))
        m.op('FULLY_CONNECTED', [src, wt, bt], [ids[i]], activation=node.activation)
      else:
        ids[i] = out((1, h, w, c))
        m.op('DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D', [src, wt, bt], [ids[i]],
             stride=node.stride[0], padding='same', activation=node.activation)
    elif node.op == 'add':
      if len(node.inputs) != 2 or node.const_slots:
        raise ValueError(f'graph_tflite writes two-input adds only (node {node.name})')
      ids[i] = out((1, h, w, c))
      m.op('ADD', [ids[j] for j in node.inputs], [ids[i]], activation=node.activation)
    elif node.op in ('global_avg_pool', 'avg_pool', 'max_pool'):
      ids[i] = out((1, h, w, c))
      size = node.kernel[0]
      kind = 'MAX_POOL_2D' if node.op == 'max_pool' else 'AVERAGE_POOL_2D'
      m.op(kind, [src], [ids[i]], size=size,
           stride=size if node.op == 'global_avg_pool' else node.stride[0], padding='valid')
    elif node.op == 'reshape':
      shape = (1, int(np.prod(node.shape)))
      ids[i] = out(shape)
      # batch -1: LiteRT runs a batch of images through one resized input
      new_shape = m.tensor((2,), 1.0, 0, node.name + '/shape', np.asarray((-1, shape[1]), np.int32),
                           dtype='int32')
      m.op('RESHAPE', [src, new_shape], [ids[i]], shape=(-1, shape[1]))
    else:
      raise ValueError(f'no int8 TFLite op for {node.op!r}'
                       f'{" " + node.activation if node.activation else ""} (node {node.name}); '
                       f'export supports conv2d, depthwise_conv2d, dense, add, avg/max/global '
                       f'pool and reshape with fused ReLU/ReLU6')
  return m.pack([ids[0]], [ids[len(graph.nodes) - 1]], description or graph.name or 'graph')

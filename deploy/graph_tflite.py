"""An int8 .tflite of any lowered hardware graph: the graph's own tensors, ops and shapes,
written with `deploy.tflite`'s flatbuffer builder. Each node becomes the stock TFLite builtin
that computes what the integer reference (`engine.quant.graph_int`) computes, with the same numbers:

| graph node                      | TFLite builtin                                                  |
|---------------------------------|-----------------------------------------------------------------|
| conv2d / depthwise, 'same'      | CONV_2D / DEPTHWISE_CONV_2D SAME, fused ReLU / ReLU6            |
| conv2d / depthwise, 'symmetric' | PyTorch's k // 2 on every side: where TF's SAME pads otherwise  |
|                                 | (stride 2: 0 before, 1 after), PAD (the input's zero point) +   |
|                                 | the conv VALID; else the conv SAME                              |
| batchnorm (per-channel affine)  | DEPTHWISE_CONV_2D 1x1                                           |
| activation relu                 | RELU (same scale and zero point in and out)                     |
| avg_pool 'same' / 'valid'       | AVERAGE_POOL_2D SAME (TFLite divides by the in-bounds taps: a   |
|                                 | count_include_pad=False pool) / VALID; max_pool VALID           |
| global_avg_pool                 | AVERAGE_POOL_2D over the whole map, then RESHAPE to [-1, C] (a  |
|                                 | reshape node after it writes nothing)                           |
| add of n terms                  | n - 1 chained ADDs (partial sums are int8 tensors on their own  |
|                                 | grids); a term that does not depend on the input (a graph with  |
|                                 | its constants kept) is a constant tensor, [1, 1, 1, C] when it  |
|                                 | is the same at every position (ADD broadcasts it)               |
| dense / reshape                 | FULLY_CONNECTED / RESHAPE                                       |

Nodes that do not depend on the input write no op: their values are constants.

Two sources of numbers:
  * a trained, quantized graph (`engine.quant.graph_int.IntGraph`): the export of any space's arch,
    verified bit for bit against that integer reference in TFLite Micro;
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
    self.live = graph_lib.input_dependent(graph)

  def act(self, i):
    return 0.05, 0

  def partial_act(self, i, k):
    return 0.05, 0

  def constant(self, i, k=None):
    if k is not None:
      return None
    return None if self.live[i] else np.zeros((1,) + self.graph.nodes[i].shape, np.int8)

  def layer(self, i):
    node = self.graph.nodes[i]
    cin = self.graph.nodes[node.inputs[0]].shape[2]
    c = node.shape[2]
    kh, kw = node.kernel
    shape = {'conv2d': (c, kh, kw, cin), 'depthwise_conv2d': (1, kh, kw, c),
             'batchnorm': (1, 1, 1, c), 'dense': (c, cin)}[node.op]
    w = self.rng.integers(-127, 128, shape, dtype=np.int8)
    return w, np.zeros(c, np.int32), np.full(c, 0.01, np.float32)


def to_tflite(graph: graph_lib.Graph, quantized=None, seed: int = 0,
              description: str = '') -> bytes:
  """The graph as an int8 TFLite flatbuffer; `quantized`: an `engine.quant.graph_int.IntGraph` of
  this graph (None: random weights, `seed`). ValueError (one line) for a graph whose output
  does not depend on its input."""
  q = quantized if quantized is not None else _RandomWeights(graph, seed)
  graph_lib.check_connected(graph, 'export')
  m = tfl.ModelBuilder()
  ids: dict[int, int] = {}

  def constant(values, scale, zp, name):
    v = np.asarray(values, np.int8)
    if np.all(v == v[:, :1, :1]):
      v = v[:, :1, :1]
    return m.tensor(v.shape, scale, zp, name, v)

  for i, node in enumerate(graph.nodes):
    h, w, c = node.shape
    scale, zp = q.act(i)
    out = lambda shape, name=node.name: m.tensor(shape, scale, zp, name)
    if node.op == 'input':
      ids[i] = out((1, h, w, c))
      continue
    if q.constant(i) is not None:  # no op: a constant
      continue
    if node.op == 'add':
      ids[i] = _add(m, q, graph, i, ids, constant, out)
      continue
    src = ids[node.inputs[0]]
    in_shape = graph.nodes[node.inputs[0]].shape
    if node.op in _CONV_OPS or node.op in ('dense', 'batchnorm'):
      wq, bq, w_scale = q.layer(i)
      in_scale, in_zp = q.act(node.inputs[0])
      depthwise = node.op in ('depthwise_conv2d', 'batchnorm')
      wt = m.tensor(wq.shape, w_scale, np.zeros(c), node.name + '/w', wq.astype(np.int8),
                    axis=3 if depthwise else 0)
      bt = m.tensor((c,), np.float32(in_scale) * w_scale, np.zeros(c), node.name + '/b',
                    bq.astype(np.int32), dtype='int32')
      if node.op == 'dense':
        ids[i] = out((1, c))
        m.op('FULLY_CONNECTED', [src, wt, bt], [ids[i]], activation=node.activation)
        continue
      if node.op == 'batchnorm':
        ids[i] = out((1, h, w, c))
        m.op('DEPTHWISE_CONV_2D', [src, wt, bt], [ids[i]], stride=1, padding='valid')
        continue
      pads = graph_lib.window_pads(node, in_shape)
      padding = 'valid' if node.padding == 'valid' else 'same'
      if graph_lib.explicit_pad(node, in_shape):
        # PyTorch's symmetric padding as an explicit PAD with the input's zero point, then VALID
        (top, bottom), (left, right) = pads
        ih, iw, ic = in_shape
        paddings = m.tensor((4, 2), 0.0, 0, node.name + '/paddings', np.array(
            [[0, 0], [top, bottom], [left, right], [0, 0]], np.int32), dtype='int32')
        padded = m.tensor((1, ih + top + bottom, iw + left + right, ic), in_scale, in_zp,
                          node.name + '/pad')
        m.op('PAD', [src, paddings], [padded])
        src, padding = padded, 'valid'
      ids[i] = out((1, h, w, c))
      m.op('DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D', [src, wt, bt], [ids[i]],
           stride=node.stride[0], padding=padding, activation=node.activation)
    elif node.op == 'activation' and node.activation == 'relu':
      ids[i] = out((1, h, w, c))
      m.op('RELU', [src], [ids[i]])
    elif node.op == 'global_avg_pool':  # then flat, [-1, C], as the hardware model's TFLM plan
      pooled = m.tensor((1, 1, 1, c), scale, zp, node.name + '/pool')
      m.op('AVERAGE_POOL_2D', [src], [pooled], size=in_shape[0], stride=in_shape[0],
           padding='valid')
      ids[i] = _reshape(m, pooled, (1, c), out, node.name)
    elif graph_lib.flat_already(graph, i):
      ids[i] = src
    elif node.op in ('avg_pool', 'max_pool'):
      if graph_lib.unlike_same(node, in_shape):
        raise ValueError(f'no int8 TFLite pool for symmetric padding other than SAME\'s '
                         f'(node {node.name})')
      ids[i] = out((1, h, w, c))
      kind = 'MAX_POOL_2D' if node.op == 'max_pool' else 'AVERAGE_POOL_2D'
      m.op(kind, [src], [ids[i]], size=node.kernel[0], stride=node.stride[0],
           padding='valid' if node.padding == 'valid' else 'same')
    elif node.op in ('reshape', 'identity'):
      shape = (1, int(np.prod(node.shape))) if node.op == 'reshape' else (1, h, w, c)
      ids[i] = _reshape(m, src, shape, out, node.name)
    else:
      raise ValueError(f'no int8 TFLite op for {node.op!r}'
                       f'{" " + node.activation if node.activation else ""} (node {node.name}); '
                       f'export supports conv2d, depthwise_conv2d, dense, batchnorm, ReLU, add, '
                       f'avg/max/global pool and reshape with fused ReLU/ReLU6')
  return m.pack([ids[0]], [ids[len(graph.nodes) - 1]], description or graph.name or 'graph')


def _reshape(m, src, shape, out, name) -> int:
  res = out(shape)
  # batch -1: LiteRT runs a batch of images through one resized input
  new_shape = m.tensor((len(shape),), 1.0, 0, name + '/shape',
                       np.asarray((-1,) + tuple(shape[1:]), np.int32), dtype='int32')
  m.op('RESHAPE', [src, new_shape], [res], shape=(-1,) + tuple(shape[1:]))
  return res


def _add(m, q, graph, i, ids, constant, out) -> int:
  """The ADD chain of add node i (live): ((t0 + t1) + t2) ..., partial sums on their grids,
  terms that do not depend on the input as constant tensors."""
  node = graph.nodes[i]
  h, w, c = node.shape
  if node.const_slots:  # `hardware.graph.prune` folded them: their values are not in the graph
    raise ValueError(f'{node.name}: an add of folded constants cannot be written; lower the '
                     f'graph with its constants kept (hardware.graph.prune(constants=True))')

  def operand(j):
    if j in ids:
      return ids[j]
    return constant(q.constant(j), *q.act(j), graph.nodes[j].name)

  if len(node.inputs) == 1:
    return ids[node.inputs[0]]
  cur = node.inputs[0]
  cur_id = None if q.constant(cur) is not None else ids[cur]
  cur_grid = q.act(cur)
  for k, j in enumerate(node.inputs[1:], 1):
    last = k == len(node.inputs) - 1
    if cur_id is None and q.constant(j) is not None:  # leading constants: one constant
      cur_grid = q.partial_act(i, k)
      continue
    a = cur_id if cur_id is not None else (
        operand(cur) if k == 1 else constant(q.constant(i, k - 1), *cur_grid,
                                             f'{node.name}/partial{k - 1}'))
    grid = q.act(i) if last else q.partial_act(i, k)
    res = out((1, h, w, c)) if last else m.tensor((1, h, w, c), *grid,
                                                  f'{node.name}/partial{k}')
    m.op('ADD', [a, operand(j)], [res], activation=node.activation if last else None)
    cur_id, cur_grid = res, grid
  return cur_id

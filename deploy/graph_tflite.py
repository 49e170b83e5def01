"""An int8 .tflite of any lowered hardware graph, with seeded random weights: what a plug-in
space's arch costs in TFLite Micro (arena, file size) before anything is trained.

The tensors, ops and shapes are the graph's (conv2d / depthwise_conv2d with fused ReLU or
ReLU6, add, average / global average pool, reshape, dense), written with `deploy.tflite`'s
flatbuffer builder. Weights are random int8 with per-channel scales, so the model runs but
predicts nothing: it measures memory and size, which do not depend on the weights' values. A
trained export goes through `deploy.tflite` (NB201's integer reference).
"""
from __future__ import annotations

import numpy as np

from deploy import tflite as tfl
from hardware import graph as graph_lib

_FUSED = {None: 0, 'relu': 1, 'relu6': 3}  # TFLite ActivationFunctionType


def to_tflite(graph: graph_lib.Graph, seed: int = 0) -> bytes:
  s = tfl._schema()
  rng = np.random.default_rng(seed)
  m = tfl._ModelBuilder()
  ids: dict[int, int] = {}
  fused: list[tuple[int, int]] = []  # per conv: (stride, activation code), set after building
  for i, node in enumerate(graph.nodes):
    h, w, c = node.shape
    act = lambda shape, name: m.tensor(shape, 0.05, 0, name)
    if node.op == 'input':
      ids[i] = act((1, h, w, c), node.name)
      continue
    src = ids[node.inputs[0]]
    cin = graph.nodes[node.inputs[0]].shape[2]
    if node.op in ('conv2d', 'depthwise_conv2d'):
      kh, kw = node.kernel
      depthwise = node.op == 'depthwise_conv2d'
      wshape = (1, kh, kw, c) if depthwise else (c, kh, kw, cin)
      axis = 3 if depthwise else 0
      wq = m.tensor(wshape, np.full(c, 0.01), np.zeros(c), node.name + '/w',
                    rng.integers(-127, 128, wshape, dtype=np.int8), axis=axis)
      bq = m.tensor((c,), np.full(c, 0.05 * 0.01), np.zeros(c), node.name + '/b',
                    np.zeros(c, np.int32), dtype='int32')
      ids[i] = act((1, h, w, c), node.name)
      kind = 'DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D'
      m.op(kind, [src, wq, bq], [ids[i]], stride=node.stride[0], padding='same')
      fused.append((node.stride[0], _FUSED[node.activation]))
    elif node.op == 'dense':
      wq = m.tensor((c, cin), np.full(c, 0.01), np.zeros(c), node.name + '/w',
                    rng.integers(-127, 128, (c, cin), dtype=np.int8))
      bq = m.tensor((c,), np.full(c, 0.05 * 0.01), np.zeros(c), node.name + '/b',
                    np.zeros(c, np.int32), dtype='int32')
      ids[i] = act((1, c), node.name)
      m.op('FULLY_CONNECTED', [src, wq, bq], [ids[i]])
    elif node.op == 'add':
      ids[i] = act((1, h, w, c), node.name)
      m.op('ADD', [ids[j] for j in node.inputs], [ids[i]])
    elif node.op in ('global_avg_pool', 'avg_pool'):
      ids[i] = act((1, h, w, c), node.name)
      size = node.kernel[0]
      m.op('AVERAGE_POOL_2D', [src], [ids[i]], size=size,
           stride=node.stride[0] if node.op == 'avg_pool' else size, padding='valid')
    elif node.op == 'reshape':
      shape = (1, int(np.prod(node.shape)))
      ids[i] = act(shape, node.name)
      m.op('RESHAPE', [src], [ids[i]], shape=shape)
    else:
      raise ValueError(f'graph_tflite cannot write op {node.op!r} (node {node.name})')
  model = m.pack([ids[0]], [ids[len(graph.nodes) - 1]], graph.name or 'graph')
  # fused activations, and SAME padding and strides of depthwise convs, set on the built model
  # (the shared option writer knows NB201's ops only)
  mt = s.ModelT.InitFromPackedBuf(model, 0)
  convs = [o for o in mt.subgraphs[0].operators
           if isinstance(o.builtinOptions, (s.Conv2DOptionsT, s.DepthwiseConv2DOptionsT))]
  for o, (stride, code) in zip(convs, fused):
    o.builtinOptions.fusedActivationFunction = code
    if isinstance(o.builtinOptions, s.DepthwiseConv2DOptionsT):
      o.builtinOptions.padding = s.Padding.SAME
      o.builtinOptions.strideW = o.builtinOptions.strideH = stride
  import flatbuffers
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(mt.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())

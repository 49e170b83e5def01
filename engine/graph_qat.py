"""A quantization-aware network of any lowered hardware graph, in Flax: how a plug-in space's
winner (tinycnn, mbv2, any space whose `lower` gives a `hardware.graph.Graph`) is trained.

The hardware graph is already the deployed network: conv2d / depthwise_conv2d (SAME padding,
BN folded in or a bias, fused ReLU / ReLU6), dense, add, average / max / global average pool,
reshape. Training it means un-folding BN back into trainable scale and shift with batch
statistics; quantizing it means the layers of `engine.qat_layers`, which NB201's own network
(`search_spaces.nb201.qat`) is made of too (same modes, same collections 'params' /
'batch_stats' / 'quant', same `engine.quant` functions):

  * 'fp32':   float; BN on batch statistics when `train`;
  * 'folded': BN folded into its conv with the running statistics;
  * 'quant':  folded, per-channel int8 weights, int32 biases, per-tensor int8 activations
              (fake-quant): QAT when trained, with frozen BN statistics.

Activations are quantized where an int8 runtime stores a new grid: the input, every conv /
dense output (after its fused activation), every add. Pools, max pools and reshapes keep their
input's grid. `engine.graph_int.IntGraph` runs the same variables in integers, and
`deploy.graph_tflite` writes them; tests hold the three against each other.

Layer names are the graph's node names with '/' as '__' (Flax and checkpoint paths split on
'/').
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from engine import qat_layers
from engine.qat_layers import ActQuant, Ctx
from hardware import graph as graph_lib

TRAINABLE_OPS = ('input', 'conv2d', 'depthwise_conv2d', 'dense', 'add', 'avg_pool', 'max_pool',
                 'global_avg_pool', 'reshape', 'identity')


class UnsupportedGraph(ValueError):
  """A graph op the int8 training / export path has no kernel for (one line)."""


def module_name(node: graph_lib.Node) -> str:
  return node.name.replace('/', '__')


def check_graph(graph: graph_lib.Graph):
  """Raise `UnsupportedGraph` naming the first op int8 training and export cannot handle."""
  for node in graph.nodes:
    what = None
    if node.op not in TRAINABLE_OPS:
      what = f'{node.op} {node.activation or ""}'.strip()
    elif node.activation not in (None, 'relu', 'relu6'):
      what = f'fused {node.activation}'
    elif node.op == 'add' and (len(node.inputs) != 2 or node.const_slots):
      what = 'add of other than two tensors'
    elif node.op in ('conv2d',) and node.groups != 1:
      what = 'grouped conv'
    elif node.op in ('avg_pool', 'max_pool') and (node.kernel[0] != node.stride[0]):
      what = f'{node.op} with overlapping windows'
    if what:
      raise UnsupportedGraph(
          f'{graph.name or "this arch"}: node {node.name} ({what}) has no int8 training and '
          f'export path (conv / depthwise / dense with ReLU or ReLU6, add, pools, reshape); '
          f'pick an arch without it (tinycnn: the relu archs)')


def _conv(x, w, node):
  dims = ('NHWC', 'HWIO', 'NHWC')
  groups = x.shape[-1] if node.op == 'depthwise_conv2d' else 1
  # SAME as TensorFlow / TFLite pad it (the extra row and column at the bottom and right)
  return jax.lax.conv_general_dilated(x, w, node.stride, 'SAME', dimension_numbers=dims,
                                      feature_group_count=groups)


def _activate(y, kind):
  if kind == 'relu':
    return jax.nn.relu(y)
  if kind == 'relu6':
    return jnp.clip(y, 0.0, 6.0)
  return y


class GraphLayer(nn.Module):
  """One conv2d / depthwise_conv2d / dense node: weights, BN or bias, fused activation, output
  quantizer (child 'out_q')."""
  node: graph_lib.Node
  in_channels: int

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    node, c = self.node, self.node.shape[2]
    kh, kw = node.kernel
    shape = {'conv2d': (kh, kw, self.in_channels, c), 'depthwise_conv2d': (kh, kw, 1, c),
             'dense': (self.in_channels, c)}[node.op]
    # He init where a BN follows; without one (tinycnn's biased convs) PyTorch's default
    # U(+-1/sqrt(fan_in)), the init the space's own network and ground truth train from
    init = (nn.initializers.he_normal() if node.folded_bn else
            nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'))
    kernel = self.param('kernel', init, shape)
    bn = node.folded_bn
    if bn:
      gamma = self.param('scale', nn.initializers.ones, (c,))
      beta = self.param('bias', nn.initializers.zeros, (c,))
    else:
      bias = self.param('bias', nn.initializers.zeros, (c,)) if node.bias else None
    apply = (lambda x, w: x @ w) if node.op == 'dense' else (lambda x, w: _conv(x, w, node))
    reduce_axes = (0,) if node.op == 'dense' else (0, 1, 2)
    if ctx.mode == 'fp32':
      y = apply(x, kernel)
      y = qat_layers.batch_norm(self, y, gamma, beta, ctx, reduce_axes) if bn else (
          y if bias is None else y + bias)
    else:
      y = qat_layers.folded_layer(self, apply, x, qp_in, kernel, (gamma, beta) if bn else None,
                                  None if bn else bias, ctx)
    return ActQuant(name='out_q')(_activate(y, node.activation), ctx)


def _pool(t, node):
  x, qp = t
  if node.op == 'global_avg_pool':
    y = jnp.mean(x, (1, 2), keepdims=True)
    if qp is not None:
      y = qat_layers.pooled_on_grid(y, x, qp, lambda q: jnp.sum(q, (1, 2), keepdims=True),
                   x.shape[1] * x.shape[2])
    return y, qp
  k, s = node.kernel[0], node.stride[0]
  window, strides = (1, k, k, 1), (1, s, s, 1)
  if node.op == 'max_pool':  # max of values on one grid is on it
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, 'VALID'), qp
  total = lambda v: jax.lax.reduce_window(v, 0.0, jax.lax.add, window, strides, 'VALID')
  y = total(x) / (k * k)
  if qp is not None:
    y = qat_layers.pooled_on_grid(y, x, qp, total, k * k)
  return y, qp


class GraphNetwork(nn.Module):
  """The network of `graph`; `mode` is one of `qat_layers.MODES`. Input: normalised float
  images [N, H, W, C] at the graph's input shape; output: logits [N, classes]."""
  graph: graph_lib.Graph
  mode: str = 'fp32'

  @nn.compact
  def __call__(self, x, train: bool = False, update_ranges: bool = False):
    qat_layers.check_mode(self.mode)
    check_graph(self.graph)
    ctx = Ctx(self.mode, train, update_ranges)
    nodes = self.graph.nodes
    vals = []
    for node in nodes:
      if node.op == 'input':
        vals.append(ActQuant(name='input_q')(x, ctx))
        continue
      t = vals[node.inputs[0]]
      if node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
        cin = nodes[node.inputs[0]].shape[2]
        if node.op == 'dense':
          cin = t[0].shape[-1]
        vals.append(GraphLayer(node, cin, name=module_name(node))(t, ctx))
      elif node.op == 'add':
        a, b = (vals[i][0] for i in node.inputs)
        vals.append(ActQuant(name=module_name(node))(_activate(a + b, node.activation), ctx))
      elif node.op in ('avg_pool', 'max_pool', 'global_avg_pool'):
        vals.append(_pool(t, node))
      elif node.op == 'reshape':
        vals.append((t[0].reshape(t[0].shape[0], -1), t[1]))
      else:  # identity
        vals.append(t)
    return vals[-1][0].reshape(x.shape[0], -1)


def init_variables(key, graph: graph_lib.Graph) -> dict:
  """Variables {'params', 'batch_stats', 'quant'} of the graph's network (all modes)."""
  return qat_layers.init_variables(key, GraphNetwork(graph, 'fp32'), graph.nodes[0].shape)


def calibrate(variables: dict, graph: graph_lib.Graph, batches) -> dict:
  """PTQ calibration (`qat_layers.calibrate`) of the folded float network."""
  return qat_layers.calibrate(GraphNetwork(graph, 'folded'), variables, batches)

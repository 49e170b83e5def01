"""A quantization-aware network of any lowered hardware graph, in Flax: how every space's arch
is trained (NB201's graph with its constants kept, `SearchSpace.sized_lower`; tinycnn's, mbv2's,
any space whose `lower` gives a `hardware.graph.Graph`).

The hardware graph is already the deployed network: conv2d / depthwise_conv2d (padding 'same'
as TensorFlow pads, 'symmetric' as PyTorch, or 'valid'; BN folded in or a bias, fused ReLU /
ReLU6), dense, ReLU nodes, 'batchnorm' nodes (a BN with no conv to fold into), adds of any
number of terms, average (padded ones dividing by the taps inside the map) / max / global
average pool, reshape. Training it means un-folding BN back into trainable scale and shift with
batch statistics; quantizing it means the layers of `engine.quant.qat_layers` (same modes, same
collections 'params' / 'batch_stats' / 'quant', same `engine.quant.quant` functions):

  * 'fp32':   float; BN on batch statistics when `train`;
  * 'folded': BN folded into its conv with the running statistics;
  * 'quant':  folded, per-channel int8 weights, int32 biases, per-tensor int8 activations
              (fake-quant): QAT when trained, with frozen BN statistics.

Activations are quantized where an int8 runtime stores a new grid: the input, every conv /
dense / batchnorm output (after its fused activation), every add, and each partial sum of an
add of n > 2 terms (a chain of TFLite's two-input ADDs). ReLU nodes, pools, max pools and
reshapes keep their input's grid. An add of no term (a graph with its constants kept) is a zero
tensor on scale 1, zero point 0, and the nodes computed from it are constants: trained like the
rest (a conv of it is its BN shift), written as constant tensors by the exporter.
`engine.quant.graph_int.IntGraph` runs the same variables in integers, and `deploy.graph_tflite`
writes them; tests hold the three against each other.

Layer names are the graph's node names with '/' as '__' (Flax and checkpoint paths split on
'/').
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from engine.quant import qat_layers
from engine.quant.qat_layers import ActQuant, Ctx
from hardware import graph as graph_lib

TRAINABLE_OPS = ('input', 'conv2d', 'depthwise_conv2d', 'dense', 'add', 'avg_pool', 'max_pool',
                 'global_avg_pool', 'reshape', 'identity', 'activation', 'batchnorm')
ZERO_QPARAMS = (1.0, 0.0)  # the grid of a zero tensor (an add of no term): scale 1, zero point 0
# kernel initializers by name (`GraphNetwork.inits`); a layer with a BN after it: He
INITS = {'he_normal': nn.initializers.he_normal(), 'lecun_normal': nn.initializers.lecun_normal(),
         # PyTorch's default U(+-1/sqrt(fan_in))
         'torch_default': nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')}


class UnsupportedGraph(ValueError):
  """A graph op the int8 training / export path has no kernel for (one line)."""


def module_name(node: graph_lib.Node) -> str:
  return node.name.replace('/', '__')


def partial_sum_name(node: graph_lib.Node, i: int) -> str:
  """Quantizer of the i-th partial sum (i = 1 .. n - 2) of an add of n operands."""
  return f'{module_name(node)}_partial{i}'


def check_graph(graph: graph_lib.Graph):
  """Raise `UnsupportedGraph` naming the first op int8 training and export cannot handle, or
  ValueError (one line) for a graph whose output does not depend on its input."""
  graph_lib.check_connected(graph, 'train or export')
  for node in graph.nodes:
    what = None
    if node.op not in TRAINABLE_OPS:
      what = f'{node.op} {node.activation or ""}'.strip()
    elif node.op == 'activation' and node.activation != 'relu':
      what = f'{node.op} {node.activation}'
    elif node.op != 'activation' and node.activation not in (None, 'relu', 'relu6'):
      what = f'fused {node.activation}'
    elif node.op == 'add' and node.const_slots:
      what = 'add of folded constants (lower the graph with its constants kept)'
    elif node.op in ('conv2d',) and node.groups != 1:
      what = 'grouped conv'
    elif node.op == 'max_pool' and node.padding != 'valid':
      what = 'padded max pool'
    if what:
      raise UnsupportedGraph(
          f'{graph.name or "this arch"}: node {node.name} ({what}) has no int8 training and '
          f'export path (conv / depthwise / dense with ReLU or ReLU6, ReLU, BN, add, pools, '
          f'reshape); pick an arch without it')


def _conv(x, w, node, in_shape):
  dims = ('NHWC', 'HWIO', 'NHWC')
  groups = x.shape[-1] if node.op == 'depthwise_conv2d' else 1
  # the node's padding: TF's SAME (extra row and column at the bottom and right), or PyTorch's
  # symmetric k // 2, or none
  return jax.lax.conv_general_dilated(x, w, node.stride, graph_lib.window_pads(node, in_shape),
                                      dimension_numbers=dims, feature_group_count=groups)


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
  in_shape: tuple
  init: str = ''   # kernel initializer (`INITS`) of a layer without BN; '': PyTorch's default

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    node, c = self.node, self.node.shape[2]
    kh, kw = node.kernel
    cin = self.in_shape[2]
    shape = {'conv2d': (kh, kw, cin, c), 'depthwise_conv2d': (kh, kw, 1, c),
             'dense': (x.shape[-1], c)}[node.op]
    # He init where a BN follows; without one (tinycnn's biased convs) PyTorch's default
    # U(+-1/sqrt(fan_in)), the init the space's own network and ground truth train from, unless
    # the space names another (NB201: `SearchSpace.train_inits`)
    init = INITS['he_normal' if node.folded_bn else (self.init or 'torch_default')]
    kernel = self.param('kernel', init, shape)
    bn = node.folded_bn
    if bn:
      gamma = self.param('scale', nn.initializers.ones, (c,))
      beta = self.param('bias', nn.initializers.zeros, (c,))
    else:
      bias = self.param('bias', nn.initializers.zeros, (c,)) if node.bias else None
    apply = ((lambda x, w: x @ w) if node.op == 'dense' else
             (lambda x, w: _conv(x, w, node, self.in_shape)))
    reduce_axes = tuple(range(x.ndim - 1))
    if ctx.mode == 'fp32':
      y = apply(x, kernel)
      y = qat_layers.batch_norm(self, y, gamma, beta, ctx, reduce_axes) if bn else (
          y if bias is None else y + bias)
    else:
      y = qat_layers.folded_layer(self, apply, x, qp_in, kernel, (gamma, beta) if bn else None,
                                  None if bn else bias, ctx)
    return ActQuant(name='out_q')(_activate(y, node.activation), ctx)


class Affine(nn.Module):
  """A 'batchnorm' node (a BN with no conv to fold into, NB201's head): per-channel a * x + b,
  which an int8 runtime runs as a 1x1 depthwise conv with int8 weights and int32 biases."""

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    c = x.shape[-1]
    gamma = self.param('scale', nn.initializers.ones, (c,))
    beta = self.param('bias', nn.initializers.zeros, (c,))
    if ctx.mode == 'fp32':
      y = qat_layers.batch_norm(self, x, gamma, beta, ctx, tuple(range(x.ndim - 1)))
    else:  # BN folded into a [1, C] kernel of ones: y = x * a + b
      y = qat_layers.folded_layer(self, lambda x, a: x * a[0], x, qp_in, jnp.ones((1, c)),
                                  (gamma, beta), None, ctx)
    return ActQuant(name='out_q')(y, ctx)


def _pool(t, node, in_shape):
  x, qp = t
  if node.op == 'global_avg_pool':
    y = jnp.mean(x, (1, 2), keepdims=True)
    if qp is not None:
      y = qat_layers.pooled_on_grid(y, x, qp, lambda q: jnp.sum(q, (1, 2), keepdims=True),
                                    x.shape[1] * x.shape[2])
    return y, qp
  k, s = node.kernel[0], node.stride[0]
  window, strides = (1, k, k, 1), (1, s, s, 1)
  pads = ((0, 0),) + graph_lib.window_pads(node, in_shape) + ((0, 0),)
  if node.op == 'max_pool':  # max of values on one grid is on it
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads), qp
  total = lambda v: jax.lax.reduce_window(v, 0.0, jax.lax.add, window, strides, pads)
  # divided by the taps inside the map (TFLite's AVERAGE_POOL_2D; PyTorch's
  # count_include_pad=False), counted in numpy: a constant
  count = tap_counts(node, in_shape).astype(np.float32)
  y = total(x) / count
  if qp is not None:
    y = qat_layers.pooled_on_grid(y, x, qp, total, count)
  return y, qp


def tap_counts(node, in_shape) -> np.ndarray:
  """[1, Ho, Wo, 1] numbers of a pool window's taps inside the map (padding not counted)."""
  per_axis = []
  for size, k, s, (before, _), out in zip(in_shape[:2], node.kernel, node.stride,
                                          graph_lib.window_pads(node, in_shape), node.shape[:2]):
    start = np.arange(out) * s - before
    per_axis.append(np.minimum(start + k, size) - np.maximum(start, 0))
  return np.outer(*per_axis)[None, :, :, None].astype(np.int64)


class GraphNetwork(nn.Module):
  """The network of `graph`; `mode` is one of `qat_layers.MODES`. Input: normalised float
  images [N, H, W, C] at the graph's input shape; output: logits [N, classes]. `inits`:
  (op, `INITS` name) pairs, the kernel init of that op's layers without BN."""
  graph: graph_lib.Graph
  mode: str = 'fp32'
  inits: tuple = ()

  @nn.compact
  def __call__(self, x, train: bool = False, update_ranges: bool = False):
    qat_layers.check_mode(self.mode)
    check_graph(self.graph)
    ctx = Ctx(self.mode, train, update_ranges)
    inits = dict(self.inits)
    nodes = self.graph.nodes
    vals = []
    for node in nodes:
      if node.op == 'input':
        vals.append(ActQuant(name='input_q')(x, ctx))
        continue
      if node.op == 'add':
        vals.append(_add(node, [vals[i] for i in node.inputs], x.shape[0], ctx))
        continue
      t = vals[node.inputs[0]]
      in_shape = nodes[node.inputs[0]].shape
      if node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
        vals.append(GraphLayer(node, in_shape, inits.get(node.op, ''),
                               name=module_name(node))(t, ctx))
      elif node.op == 'batchnorm':
        vals.append(Affine(name=module_name(node))(t, ctx))
      elif node.op == 'activation':  # ReLU keeps the grid: 0 is on it, max(x, 0) stays on it
        vals.append((jax.nn.relu(t[0]), t[1]))
      elif node.op in ('avg_pool', 'max_pool', 'global_avg_pool'):
        vals.append(_pool(t, node, in_shape))
      elif node.op == 'reshape':
        vals.append((t[0].reshape(t[0].shape[0], -1), t[1]))
      else:  # identity
        vals.append(t)
    return vals[-1][0].reshape(x.shape[0], -1)


def _add(node, terms, batch, ctx: Ctx):
  """An add of n terms: none -> a zero tensor (on `ZERO_QPARAMS` when quantized), else a chain
  of quantized two-input adds ((t0 + t1) + t2) ... (TFLite's ADD has two inputs), the partial
  sums quantized by their own `partial_sum_name` quantizers, the last by the node's."""
  if not terms:
    return (jnp.zeros((batch,) + tuple(node.shape), jnp.float32),
            ZERO_QPARAMS if ctx.quantized else None)
  total = terms[0]
  for i, t in enumerate(terms[1:], 1):
    last = i == len(terms) - 1
    y = total[0] + t[0]
    total = ActQuant(name=module_name(node) if last else partial_sum_name(node, i))(
        _activate(y, node.activation) if last else y, ctx)
  return total


def init_variables(key, graph: graph_lib.Graph, inits: tuple = ()) -> dict:
  """Variables {'params', 'batch_stats', 'quant'} of the graph's network (all modes)."""
  return qat_layers.init_variables(key, GraphNetwork(graph, 'fp32', inits), graph.nodes[0].shape)


def calibrate(variables: dict, graph: graph_lib.Graph, batches) -> dict:
  """PTQ calibration (`qat_layers.calibrate`) of the folded float network."""
  return qat_layers.calibrate(GraphNetwork(graph, 'folded'), variables, batches)

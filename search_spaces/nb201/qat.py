"""NB201's quantization-aware network in Flax: one variable tree, three ways to run it (the modes
of `engine.qat_layers`: 'fp32', 'folded', 'quant').

The network is the one walk `search_spaces.nb201.net.network` (stem conv-BN; cells of
ReLU-conv-BN / 3x3 avg pool / skip edges summed at each node; reduction blocks; head BN, ReLU,
global average pool, dense) run by a Flax backend (`FlaxBackend`), laid out as the int8 graph of
`search_spaces.nb201.graph` so that `search_spaces.nb201.integer` can run it in integers. In
'fp32' mode with batch statistics it is the scoring supernet (`nb201_net.apply`) of its single
path, given the same weights (`search_spaces.nb201.qat_variables.variables_from_supernet`).

Where activations are quantized (as an int8 runtime stores them): the input, every conv/dense
output, every node sum of two or more terms (summed as a chain of binary adds, each partial sum
quantized as TFLite's two-input ADD needs), and the head BN output. ReLU and average pooling,
the global one included, keep their input's quantization (max(q, zero_point) and a rounded mean
are exact on the same grid), and a node with a single term is an alias.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from engine import quant
from engine import qat_layers
from engine.qat_layers import ActQuant, Ctx
from search_spaces.kernels import avg_pool_2x2, avg_pool_3x3
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import NB201Config

ZERO_QPARAMS = (1.0, 0.0)  # a constant zero tensor (a node with no live term)


def conv2d(x, w, stride=1):
  """k x k convolution with PyTorch's symmetric padding k // 2 (NB201's convs), NHWC x HWIO."""
  pad = w.shape[0] // 2
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def relu(t):
  """ReLU keeps the quantization grid: 0 is exact, so max(x, 0) stays on it."""
  x, qp = t
  return jax.nn.relu(x), qp


def _window_sum(x, size, stride, pad):
  window, strides = (1, size, size, 1), (1, stride, stride, 1)
  padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)


def avg_pool(t, size: int):
  """NB201's 3x3/s1 (padding not counted) or 2x2/s2 average pool on a (x, qparams) tensor;
  quantized, on the input's grid with the int8 kernel's rounding (`qat_layers.pooled_on_grid`)."""
  x, qp = t
  y = (avg_pool_3x3 if size == 3 else avg_pool_2x2)(x)
  if qp is None:
    return y, qp
  stride, pad = (1, 1) if size == 3 else (2, 0)
  total = lambda v: _window_sum(v, size, stride, pad)
  count = total(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype))
  return qat_layers.pooled_on_grid(y, x, qp, total, count), qp


def global_avg_pool(t):
  """Global average pool [N, H, W, C] -> [N, C]; quantized, on the input's grid, as TFLite's
  AVERAGE_POOL_2D over the whole map computes it."""
  x, qp = t
  y = jnp.mean(x, (1, 2))
  if qp is None:
    return y, qp
  return qat_layers.pooled_on_grid(y, x, qp, lambda v: jnp.sum(v, (1, 2)),
                                   x.shape[1] * x.shape[2]), qp


class QConv(nn.Module):
  """Conv (no bias) + optional BN; folded and fake-quantized outside 'fp32' mode."""
  features: int
  kernel_size: int
  stride: int = 1
  bn: bool = True

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    k, c = self.kernel_size, self.features
    kernel = self.param('kernel', nn.initializers.he_normal(), (k, k, x.shape[-1], c))
    if self.bn:
      gamma = self.param('scale', nn.initializers.ones, (c,))
      beta = self.param('bias', nn.initializers.zeros, (c,))
    if ctx.mode == 'fp32':
      y = conv2d(x, kernel, self.stride)
      if self.bn:
        y = qat_layers.batch_norm(self, y, gamma, beta, ctx, (0, 1, 2))
    else:
      y = qat_layers.folded_layer(self, lambda x, w: conv2d(x, w, self.stride), x, qp_in,
                                  kernel, (gamma, beta) if self.bn else None, None, ctx)
    return ActQuant(name='out_q')(y, ctx)


class QAffine(nn.Module):
  """A BatchNorm with no conv to fold into (the head's): per-channel a * x + b, which an int8
  runtime runs as a 1x1 depthwise conv with int8 weights and int32 biases."""

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    c = x.shape[-1]
    gamma = self.param('scale', nn.initializers.ones, (c,))
    beta = self.param('bias', nn.initializers.zeros, (c,))
    if ctx.mode == 'fp32':
      y = qat_layers.batch_norm(self, x, gamma, beta, ctx, (0, 1, 2))
    else:  # BN folded into a [1, C] kernel of ones: y = x * a + b
      y = qat_layers.folded_layer(self, lambda x, a: x * a[0], x, qp_in, jnp.ones((1, c)),
                                  (gamma, beta), None, ctx)
    return ActQuant(name='out_q')(y, ctx)


class QDense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, t, ctx: Ctx):
    x, qp_in = t
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if ctx.quantized:
      kernel, w_scale = quant.fake_quant_weights(kernel)
      bias = quant.fake_quant_bias(bias, qp_in[0] * w_scale)
    return ActQuant(name='out_q')(x @ kernel + bias, ctx)


def partial_sum_name(name: str, i: int) -> str:
  """Quantizer of the i-th partial sum (i = 1 .. n - 2) of an n-term node sum `name`."""
  return f'{name}_partial{i}'


def add_terms(module_fn, terms, like, ctx: Ctx):
  """Node sum: no term -> constant zeros, one term -> alias, more -> a chain of quantized
  binary adds (TFLite's ADD has two inputs): ((t0 + t1) + t2) ..., each partial sum quantized by
  `module_fn(i)` (i = 1 .. n - 2), the last by `module_fn(None)`."""
  if not terms:
    return jnp.zeros_like(like), (ZERO_QPARAMS if ctx.quantized else None)
  if len(terms) == 1:
    return terms[0]
  total = terms[0]
  for i, t in enumerate(terms[1:], 1):
    total = module_fn(i if i < len(terms) - 1 else None)(total[0] + t[0], ctx)
  return total


def layer_name(path) -> str:
  """Flax submodule name of a layer of the walk (`nb201_net.network`'s path tuples):
  ('stem',) -> 'stem'; ('stage0', 1, 2, 'conv3') -> 'stage0_cell1_edge2_conv3';
  ('stage0', 1, 'node2') -> 'stage0_cell1_node2_q'; ('reduce1', 'a'|'b') -> 'reduce1_conv_a'|_b;
  ('reduce1', 'shortcut') -> 'reduce1_shortcut'; ('reduce1', 'add') -> 'reduce1_add_q';
  ('head',) -> 'head_bn'; ('classifier',) -> 'classifier'. Conv / BN / dense layers hold their
  output quantizer as the child 'out_q'; the others are quantizers (a node sum of n terms also
  holds its n - 2 partial sums, `partial_sum_name`)."""
  head = path[0]
  if head.startswith('stage'):
    if len(path) == 4:
      _, cell, edge, kind = path
      return f'{head}_cell{cell}_edge{edge}_{kind}'
    _, cell, node = path
    return f'{head}_cell{cell}_{node}_q'
  if head.startswith('reduce'):
    return {'a': f'{head}_conv_a', 'b': f'{head}_conv_b', 'shortcut': f'{head}_shortcut',
            'add': f'{head}_add_q'}[path[1]]
  return {'stem': 'stem', 'head': 'head_bn', 'classifier': 'classifier'}[head]


class FlaxBackend(nb201_net.Backend):
  """`nb201_net.network` in Flax: each layer of the walk creates its submodule (QConv, QAffine,
  QDense, ActQuant) inside `module`'s compact `__call__`, named by `layer_name`. Tensors are
  (x, qparams) pairs, qparams None outside 'quant' mode. Single paths only: the walk is given
  op indices, so every gate weight is None and `gate` (the base's) just computes its op."""

  def __init__(self, module: nn.Module, ctx: Ctx):
    self.module, self.ctx = module, ctx

  def input(self, x):
    return ActQuant(parent=self.module, name='input_q')(x, self.ctx)

  def conv(self, t, path, features, k, stride=1, bn=True):
    return QConv(features, k, stride, bn, parent=self.module, name=layer_name(path))(t, self.ctx)

  def relu(self, t, path):
    return relu(t)

  def pool(self, t, path, size):
    return avg_pool(t, size)

  def add(self, terms, path, like):
    name = layer_name(path)
    make = lambda i: ActQuant(parent=self.module,
                              name=name if i is None else partial_sum_name(name, i))
    return add_terms(make, terms, None if like is None else like[0], self.ctx)

  def head_bn(self, t, path):
    return QAffine(parent=self.module, name=layer_name(path))(t, self.ctx)

  def global_pool(self, t, path):
    return global_avg_pool(t)

  def dense(self, t, path, features):
    return QDense(features, parent=self.module, name=layer_name(path))(t, self.ctx)


class QATNetwork(nn.Module):
  """One NB201 architecture; `mode` is one of `qat_layers.MODES`."""
  ops: Sequence[int]
  config: NB201Config = NB201Config()
  mode: str = 'fp32'

  @nn.compact
  def __call__(self, x, train: bool = False, update_ranges: bool = False):
    qat_layers.check_mode(self.mode)
    backend = FlaxBackend(self, Ctx(self.mode, train, update_ranges))
    logits, _ = nb201_net.network(backend, tuple(int(o) for o in self.ops), x, self.config)
    return logits


def _input_shape(config: NB201Config):
  return (config.input_size, config.input_size, config.in_channels)


def init_variables(key, ops, config: NB201Config) -> dict:
  """Variables {'params', 'batch_stats', 'quant'} of the network (shared by all modes)."""
  return qat_layers.init_variables(key, QATNetwork(tuple(ops), config, 'fp32'),
                                   _input_shape(config))


def param_count(variables) -> int:
  """Number of trainable parameters (equals `nb201.count_params` of the architecture)."""
  return int(sum(a.size for a in jax.tree.leaves(variables['params'])))


def calibrate(variables: dict, ops, config: NB201Config, batches) -> dict:
  """PTQ calibration (`qat_layers.calibrate`) of the folded float network."""
  return qat_layers.calibrate(QATNetwork(tuple(ops), config, 'folded'), variables, batches)


def init_calibrated(key, ops, config: NB201Config, images) -> dict:
  """An untrained int8 model (`qat_layers.init_calibrated`) at any `config`."""
  ops = tuple(ops)
  return qat_layers.init_calibrated(init_variables(key, ops, config),
                                    QATNetwork(ops, config, 'fp32'),
                                    QATNetwork(ops, config, 'folded'), images)

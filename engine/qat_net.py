"""A quantization-aware NB201 network in Flax: one variable tree, three ways to run it.

The network is the one walk `search_spaces.nb201.net.network` (stem conv-BN; cells of
ReLU-conv-BN / 3x3 avg pool / skip edges summed at each node; reduction blocks; head BN, ReLU,
global average pool, dense) run by a Flax backend (`FlaxBackend`), laid out as the int8 graph of
`search_spaces.nb201.graph` so that `engine.int_inference` can run it in integers. In 'fp32' mode
with batch statistics it is the scoring supernet (`nb201_net.apply`) of its single path, given
the same weights (`search_spaces.nb201.qat_variables.variables_from_supernet`). Modes:

  * 'fp32':   plain float training and evaluation; BN uses batch statistics when `train`.
  * 'folded': BN folded into its convolution with the running statistics, no quantization.
              Equal to fp32 evaluation up to float rounding; `update_ranges=True` in this mode is
              PTQ calibration (activation ranges recorded on the float model).
  * 'quant':  folded BN, then fake-quant (`engine.quant`): per-channel int8 weights, int32 biases,
              per-tensor asymmetric int8 activations. Training in this mode is QAT; its BN
              statistics stay frozen at their running values (Krishnamoorthi 2018, sec. 3.2:
              fold with frozen statistics once QAT starts), so train and eval see the same graph.

Where activations are quantized (as an int8 runtime stores them): the input, every conv/dense
output, every node sum of two or more terms (summed as a chain of binary adds, each partial sum
quantized as TFLite's two-input ADD needs), and the head BN output. ReLU and average pooling,
the global one included, keep their input's quantization (max(q, zero_point) and a rounded mean
are exact on the same grid), and a node with a single term is an alias. Activation ranges live in the
'quant' collection (min, max, batch count), tracked by `quant.update_range`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from engine import quant
from search_spaces.kernels import BN_EPS, avg_pool_2x2, avg_pool_3x3
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import NB201Config

MODES = ('fp32', 'folded', 'quant')
BN_MOMENTUM = 0.9
ZERO_QPARAMS = (1.0, 0.0)  # a constant zero tensor (a node with no live term)


@dataclasses.dataclass(frozen=True)
class Ctx:
  """How a forward pass runs; passed down the modules unchanged."""
  mode: str = 'fp32'
  train: bool = False
  update_ranges: bool = False

  @property
  def quantized(self) -> bool:
    return self.mode == 'quant'


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


def _round_div(total, count):
  """Integer division rounded half away from zero (TFLite's int8 average pool)."""
  half = jnp.floor(count / 2)
  return jnp.where(total >= 0, jnp.floor((total + half) / count),
                   -jnp.floor((-total + half) / count))


def avg_pool(t, size: int):
  """NB201's 3x3/s1 (padding not counted) or 2x2/s2 average pool on a (x, qparams) tensor.

  Quantized, the output keeps the input's grid and rounds exactly as the int8 kernel does: the
  integer window sum of q divided by the count, ties away from zero (so the fake-quant model
  and `engine.int_inference` agree on the frequent ties of a 4-element mean). Gradients are the
  float pool's.
  """
  x, qp = t
  pool = avg_pool_3x3 if size == 3 else avg_pool_2x2
  y = pool(x)
  if qp is None:
    return y, qp
  stride, pad = (1, 1) if size == 3 else (2, 0)
  scale, zp = jax.lax.stop_gradient(qp[0]), jax.lax.stop_gradient(qp[1])
  q = jnp.round(jax.lax.stop_gradient(x) / scale) + zp
  total = _window_sum(q, size, stride, pad)
  count = _window_sum(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), size, stride, pad)
  return y + jax.lax.stop_gradient((_round_div(total, count) - zp) * scale - y), qp


def global_avg_pool(t):
  """Global average pool [N, H, W, C] -> [N, C]. Quantized, it stays on the input's grid, as
  TFLite's AVERAGE_POOL_2D over the whole map computes it (window sum of q / (H * W), rounded
  half away from zero)."""
  x, qp = t
  y = jnp.mean(x, (1, 2))
  if qp is None:
    return y, qp
  scale, zp = jax.lax.stop_gradient(qp[0]), jax.lax.stop_gradient(qp[1])
  q = jnp.round(jax.lax.stop_gradient(x) / scale) + zp
  total = jnp.sum(q, (1, 2))
  return y + jax.lax.stop_gradient((_round_div(total, x.shape[1] * x.shape[2]) - zp) * scale
                                   - y), qp


class ActQuant(nn.Module):
  """Tracks one tensor's range and, in 'quant' mode, fake-quantizes it. Returns (x, qparams)."""
  momentum: float = 0.99

  @nn.compact
  def __call__(self, x, ctx: Ctx):
    lo = self.variable('quant', 'min', lambda: jnp.zeros((), jnp.float32))
    hi = self.variable('quant', 'max', lambda: jnp.zeros((), jnp.float32))
    count = self.variable('quant', 'count', lambda: jnp.zeros((), jnp.float32))
    if ctx.update_ranges and not self.is_initializing():
      lo.value, hi.value, count.value = quant.update_range(lo.value, hi.value, count.value, x,
                                                           self.momentum)
    if not ctx.quantized:
      return x, None
    qp = quant.activation_qparams(lo.value, hi.value)
    return quant.fake_quant(x, *qp), qp


def _stats_vars(module, c):
  mean = module.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
  var = module.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
  return mean, var


def _batch_norm(module, y, gamma, beta, ctx: Ctx, reduce_axes):
  """Float BN: batch statistics (and running-average update) when training, else running."""
  mean, var = _stats_vars(module, y.shape[-1])
  if ctx.train:
    m = jnp.mean(y, reduce_axes)
    v = jnp.mean(jnp.square(y - m), reduce_axes)
    if not module.is_initializing():
      mean.value = BN_MOMENTUM * mean.value + (1 - BN_MOMENTUM) * m
      var.value = BN_MOMENTUM * var.value + (1 - BN_MOMENTUM) * v
  else:
    m, v = mean.value, var.value
  return (y - m) * (gamma * jax.lax.rsqrt(v + BN_EPS)) + beta


def folded_layer(module, apply, x, qp_in, kernel, bn, bias, ctx: Ctx):
  """apply(x, w) + b of a layer outside 'fp32' mode: `bn` = (scale, shift) folded into (w, b)
  with the running statistics (without BN: w, b = kernel, bias), then per-channel int8 weights
  and an int32 bias (fake-quant) when quantized."""
  if bn is not None:
    mean, var = _stats_vars(module, kernel.shape[-1])
    w, b = quant.fold_batch_norm(kernel, *bn, mean.value, var.value, BN_EPS)
  else:
    w, b = kernel, bias
  if ctx.quantized:
    w, w_scale = quant.fake_quant_weights(w)
    if b is not None:
      b = quant.fake_quant_bias(b, qp_in[0] * w_scale)
  y = apply(x, w)
  return y if b is None else y + b


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
        y = _batch_norm(self, y, gamma, beta, ctx, (0, 1, 2))
    else:
      y = folded_layer(self, lambda x, w: conv2d(x, w, self.stride), x, qp_in, kernel,
                       (gamma, beta) if self.bn else None, None, ctx)
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
      y = _batch_norm(self, x, gamma, beta, ctx, (0, 1, 2))
    else:  # BN folded into a [1, C] kernel of ones: y = x * a + b
      y = folded_layer(self, lambda x, a: x * a[0], x, qp_in, jnp.ones((1, c)), (gamma, beta),
                       None, ctx)
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
  """One NB201 architecture; `mode` picks fp32 / folded / quant (see the module docstring)."""
  ops: Sequence[int]
  config: NB201Config = NB201Config()
  mode: str = 'fp32'

  @nn.compact
  def __call__(self, x, train: bool = False, update_ranges: bool = False):
    if self.mode not in MODES:
      raise ValueError(f'unknown mode {self.mode!r}; choose one of {", ".join(MODES)}')
    backend = FlaxBackend(self, Ctx(self.mode, train, update_ranges))
    logits, _ = nb201_net.network(backend, tuple(int(o) for o in self.ops), x, self.config)
    return logits


def init_variables(key, ops, config: NB201Config) -> dict:
  """Variables {'params', 'batch_stats', 'quant'} of the network (shared by all modes)."""
  x = jnp.zeros((1, config.input_size, config.input_size, config.in_channels), jnp.float32)
  model = QATNetwork(tuple(ops), config, 'fp32')
  # jitted: run eagerly, init compiles each of its hundreds of small ops on its own
  return dict(jax.jit(lambda k, x: model.init(k, x, train=False))(key, x))


def param_count(variables) -> int:
  """Number of trainable parameters (equals `nb201.count_params` of the architecture)."""
  return int(sum(a.size for a in jax.tree.leaves(variables['params'])))


def reset_ranges(variables: dict) -> dict:
  """Forget tracked activation ranges (before calibrating a float model)."""
  return {**variables, 'quant': jax.tree.map(jnp.zeros_like, variables['quant'])}


def calibrate(variables: dict, ops, config: NB201Config, batches) -> dict:
  """PTQ calibration: run the folded float model on `batches` recording activation ranges
  (the running mean of per-batch min/max). Returns the variables with fresh ranges."""
  model = QATNetwork(tuple(ops), config, 'folded')

  @jax.jit
  def step(v, x):
    _, upd = model.apply(v, x, update_ranges=True, mutable=['quant'])
    return {**v, 'quant': upd['quant']}

  v = reset_ranges(variables)
  for x in batches:
    v = step(v, jnp.asarray(x))
  return v


def init_calibrated(key, ops, config: NB201Config, images) -> dict:
  """An untrained int8 model: initial weights, BN statistics of `images` (normalised float
  [N, H, W, C]) and activation ranges calibrated on them. Enough to export and count work
  (the emulator's instruction counts do not depend on training)."""
  v = init_variables(key, ops, config)
  stats = jax.jit(lambda v, x: QATNetwork(tuple(ops), config, 'fp32').apply(
      v, x, train=True, mutable=['batch_stats'])[1]['batch_stats'])
  x = jnp.asarray(images)
  for _ in range(3):  # the running mean settles towards the batch's statistics
    v = {**v, 'batch_stats': stats(v, x)}
  return calibrate(v, ops, config, [x])

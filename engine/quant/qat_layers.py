"""The quantization-aware building blocks every trainable network is made of, whatever its
search space: the network of any lowered hardware graph (`engine.quant.graph_qat`), NB201's
included.

Modes (`MODES`):
  * 'fp32':   plain float training and evaluation; BN uses batch statistics when `train`;
  * 'folded': BN folded into its convolution with the running statistics, no quantization.
              Equal to fp32 evaluation up to float rounding; `update_ranges=True` in this mode is
              PTQ calibration (activation ranges recorded on the float model);
  * 'quant':  folded BN, then fake-quant (`engine.quant.quant`): per-channel int8 weights, int32
              biases, per-tensor asymmetric int8 activations. Training in this mode is QAT; its BN
              statistics stay frozen at their running values (Krishnamoorthi 2018, sec. 3.2:
              fold with frozen statistics once QAT starts), so train and eval see the same graph.

Activation ranges live in the 'quant' collection (min, max, batch count) of each `ActQuant`,
BN statistics in 'batch_stats' (mean, var), weights in 'params'.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from engine.quant import quant
from search_spaces.kernels import BN_EPS

MODES = ('fp32', 'folded', 'quant')
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Ctx:
  """How a forward pass runs; passed down the modules unchanged."""
  mode: str = 'fp32'
  train: bool = False
  update_ranges: bool = False

  @property
  def quantized(self) -> bool:
    return self.mode == 'quant'


def check_mode(mode: str):
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; choose one of {", ".join(MODES)}')


def round_div(total, count):
  """Division rounded half away from zero (TFLite's int8 average pool), on float arrays."""
  half = jnp.floor(count / 2)
  return jnp.where(total >= 0, jnp.floor((total + half) / count),
                   -jnp.floor((-total + half) / count))


def pooled_on_grid(y, x, qp, total_fn, count):
  """The quantized value of an average-pooled tensor: TFLite's integer mean (window sum of q
  divided by the in-bounds count, ties away from zero) on the input's grid, so the fake-quant
  model and the integer reference agree on the frequent ties of small windows. `y` is the float
  pool of `x`, `total_fn` the window sum; gradients are the float pool's."""
  scale, zp = jax.lax.stop_gradient(qp[0]), jax.lax.stop_gradient(qp[1])
  q = jnp.round(jax.lax.stop_gradient(x) / scale) + zp
  return y + jax.lax.stop_gradient((round_div(total_fn(q), count) - zp) * scale - y)


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


def batch_norm(module, y, gamma, beta, ctx: Ctx, reduce_axes):
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


def reset_ranges(variables: dict) -> dict:
  """Forget tracked activation ranges (before calibrating a float model)."""
  return {**variables, 'quant': jax.tree.map(jnp.zeros_like, variables['quant'])}


def calibrate(model: nn.Module, variables: dict, batches) -> dict:
  """PTQ calibration of `model` (in 'folded' mode): run it on `batches` recording activation
  ranges (the running mean of per-batch min/max). Returns the variables with fresh ranges."""

  @jax.jit
  def step(v, x):
    _, upd = model.apply(v, x, update_ranges=True, mutable=['quant'])
    return {**v, 'quant': upd['quant']}

  v = reset_ranges(variables)
  for x in batches:
    v = step(v, jnp.asarray(x))
  return v


def init_variables(key, model: nn.Module, input_shape) -> dict:
  """Variables {'params', 'batch_stats', 'quant'} of `model` (shared by all modes), for inputs
  of shape (H, W, C)."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  # jitted: run eagerly, init compiles each of its hundreds of small ops on its own
  return dict(jax.jit(lambda k, x: model.init(k, x, train=False))(key, x))


def init_calibrated(variables: dict, fp32_model: nn.Module, folded_model: nn.Module,
                    images) -> dict:
  """An untrained int8 model: `variables` (initial weights) with BN statistics of `images`
  (normalised float [N, H, W, C]; a network without BN has none) and activation ranges
  calibrated on them. Enough to export and count work (an emulator's instruction counts do not
  depend on training)."""
  x = jnp.asarray(images)
  if variables.get('batch_stats'):
    stats = jax.jit(lambda v, x: fp32_model.apply(v, x, train=True, mutable=['batch_stats'])[1][
        'batch_stats'])
    for _ in range(3):  # the running mean settles towards the batch's statistics
      variables = {**variables, 'batch_stats': stats(variables, x)}
  return calibrate(folded_model, variables, [x])

"""The NB201 macro network in JAX: a masked supernet for scoring and a Flax single-path model.

`init_params` / `apply` form the masked supernet used by the scoring engine. Its input is an op
mask [6, 5]: a one-hot row is one architecture, a multi-hot row sums its active ops, and a soft
row weights them (for gradient-guided pruning). Two execution modes give the same numbers:
  * dense (default): every op runs and is multiplied by its mask entry. No control flow, so
    XLA:CPU keeps its fast convolution kernels (inside a `lax.cond` or loop body it falls back to
    kernels measured ~30x slower) and candidates batch with `vmap`.
  * sparse: each op is wrapped in `lax.cond` on its mask entry, so inside a `lax.map` over
    candidates only the active ops run (a one-hot candidate costs its single-path network). For
    accelerators whose control flow does not cost kernel speed.

BatchNorm always normalises with the statistics of the batch (or with statistics passed in,
which is how the NTK's `independent` variant holds them fixed). `apply` returns the statistics
it used, so a caller can compute them once and feed them back.

`NB201Network` is the plain Flax model of one architecture (ops chosen in Python), used for
training and as the reference the supernet is tested against (`single_path_variables`).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from search_spaces.nb201 import CONV1, CONV3, NB201Config, NODE_INPUTS, NUM_EDGES, POOL, SKIP

BN_EPS = 1e-5
INITS = ('torch_default', 'kaiming_normal')
Params = dict[str, Any]


def _segments(config: NB201Config):
  """Layer plan grouped into ('cells', stage, count) and ('reduce', stage) segments."""
  segs = []
  for kind, stage in config.layer_plan():
    if kind == 'cell' and segs and segs[-1][0] == 'cells' and segs[-1][1] == stage:
      segs[-1] = ('cells', stage, segs[-1][2] + 1)
    elif kind == 'cell':
      segs.append(('cells', stage, 1))
    else:
      segs.append(('reduce', stage))
  return segs


def _channels(config: NB201Config, stage: int) -> int:
  return config.C * 2 ** stage


def output_channels(config: NB201Config) -> int:
  plan = config.layer_plan()
  return _channels(config, plan[-1][1]) if plan else config.C


# ----------------------------------------------------------------------------- init

def _weight(key, shape, fan_in, init):
  if init == 'torch_default':  # PyTorch's kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  if init == 'kaiming_normal':  # He et al., fan_in mode, ReLU gain
    return jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
  raise ValueError(f'unknown init {init!r}; choose one of {", ".join(INITS)}')


def _conv_w(key, k, cin, cout, init, lead=()):
  return _weight(key, tuple(lead) + (k, k, cin, cout), cin * k * k, init)


def init_params(key, config: NB201Config, init: str = 'torch_default') -> Params:
  """Supernet parameters: every op on every edge of every cell. BN scale 1, shift 0."""
  keys = iter(jax.random.split(key, 64))
  params: Params = {}
  ones, zeros = jnp.ones, jnp.zeros
  if config.use_stem:
    params['stem'] = {'conv': _conv_w(next(keys), 3, config.in_channels, config.C, init),
                      'bn_scale': ones(config.C), 'bn_bias': zeros(config.C)}
  for seg in _segments(config):
    if seg[0] == 'cells':
      _, s, n = seg
      c = _channels(config, s)
      lead = (n, NUM_EDGES)
      params[f'stage{s}'] = {
          'conv1': _conv_w(next(keys), 1, c, c, init, lead),
          'conv3': _conv_w(next(keys), 3, c, c, init, lead),
          'bn1_scale': ones(lead + (c,)), 'bn1_bias': zeros(lead + (c,)),
          'bn3_scale': ones(lead + (c,)), 'bn3_bias': zeros(lead + (c,)),
      }
    else:
      s = seg[1]
      cin, cout = _channels(config, s - 1), _channels(config, s)
      params[f'reduce{s}'] = {
          'conv_a': _conv_w(next(keys), 3, cin, cout, init),
          'bna_scale': ones(cout), 'bna_bias': zeros(cout),
          'conv_b': _conv_w(next(keys), 3, cout, cout, init),
          'bnb_scale': ones(cout), 'bnb_bias': zeros(cout),
          'shortcut': _conv_w(next(keys), 1, cin, cout, init),
      }
  c = output_channels(config)
  k1, k2 = jax.random.split(next(keys))
  params['head'] = {'bn_scale': ones(c), 'bn_bias': zeros(c),
                    'fc': _weight(k1, (c, config.num_classes), c, init),
                    'fc_bias': _weight(k2, (config.num_classes,), c, 'torch_default')}
  return params


def is_weight(path) -> bool:
  """TE-NAS's NTK uses parameters named 'weight' in PyTorch: conv, BN scale, classifier matrix."""
  return not str(path[-1].key).endswith('bias')


# ----------------------------------------------------------------------------- layers

def _conv(x, w, stride):
  pad = w.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, stride=1):
  """k x k convolution, padding k // 2, NHWC x HWIO (PyTorch's padding for NB201's convs).

  Only its gradient is custom. Vmapping XLA's weight gradient over NTK Jacobian rows turns it
  into a grouped convolution that runs tens of times slower on CPU, so `conv_weight_grad`
  chooses its own batched form (see there).
  """
  return _conv(x, w, stride)


def _conv_fwd(x, w, stride):
  return _conv(x, w, stride), (x, w)


def _conv_bwd(stride, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, stride), x)
  return input_vjp(g)[0], conv_weight_grad(x, g, w.shape[0], stride)


conv.defvjp(_conv_fwd, _conv_bwd)


def _native_weight_grad(x, g, k, stride):
  zeros = jnp.zeros((k, k, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(lambda w: _conv(x, w, stride), zeros)[1](g)[0]


def _matmul_weight_grad(x, g, k, stride):
  """Per-example weight gradients x [n, B, H, W, Cin], g [n, B, Ho, Wo, O] -> [n, k, k, Cin, O]:
  one batched matrix product per kernel tap."""
  pad = k // 2
  xp = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = g.shape[2], g.shape[3]
  taps = []
  for dy in range(k):
    for dx in range(k):
      window = xp[:, :, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      taps.append(jnp.einsum('nbhwc,nbhwo->nco', window, g))
  return jnp.stack(taps, 1).reshape(x.shape[0], k, k, x.shape[-1], g.shape[-1])


def conv_weight_grad(x, g, k, stride=1):
  """d<g, conv(x, w)>/dw as [k, k, Cin, Cout], with batching chosen for speed on CPU.

  Unbatched: XLA's own kernel. Vmapped over g only (coupled-NTK rows share x): the rows are
  folded into output channels, one XLA kernel with n*Cout outputs. Vmapped over both (per-sample
  gradients): batched matrix products, one per kernel tap.
  """

  @jax.custom_batching.custom_vmap
  def grad(x, g):
    return _native_weight_grad(x, g, k, stride)

  @grad.def_vmap
  def _rule(axis_size, in_batched, x, g):
    x_batched, g_batched = in_batched
    if x_batched and g_batched:
      return _matmul_weight_grad(x, g, k, stride), True
    if g_batched:
      n, b, ho, wo, o = g.shape
      folded = jnp.moveaxis(g, 0, -2).reshape(b, ho, wo, n * o)
      # Recurse into `grad`, not the native kernel: when an outer vmap (over candidates)
      # batches x as well, it must reach the matmul rule again; XLA's own batching of the
      # native weight gradient is the grouped convolution this function exists to avoid.
      out = grad(x, folded).reshape(k, k, x.shape[-1], n, o)
      return jnp.moveaxis(out, 3, 0), True
    g = jnp.broadcast_to(g, (axis_size,) + g.shape)  # only x is batched here
    return _matmul_weight_grad(x, g, k, stride), True

  return grad(x, g)


def batch_norm(x, scale, bias, stats=None):
  """Normalise with batch statistics over (N, H, W), or with `stats` = (mean, var) if given."""
  if stats is None:
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
  else:
    mean, var = stats
  return (x - mean) * (jax.lax.rsqrt(var + BN_EPS) * scale) + bias, (mean, var)


def relu_conv_bn(x, w, scale, bias, stats=None, stride=1):
  return batch_norm(conv(jax.nn.relu(x), w, stride), scale, bias, stats)


def avg_pool_3x3(x):
  """3x3 average pool, stride 1, padding 1, padding not counted (count_include_pad=False)."""
  window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


def avg_pool_2x2(x):
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4.0


# ----------------------------------------------------------------------------- supernet

def _gated(weight, fn, zeros_fn, sparse):
  """fn(weight) if weight != 0 else zeros; sparse mode runs fn only when it is needed."""
  if sparse:
    return jax.lax.cond(weight != 0, lambda: fn(weight), zeros_fn)
  return fn(weight)


def _mixed_edge(x, m, p, e, stats, sparse=False):
  """Sum of the active ops of edge e on input x; returns (output, BN stats of its convs)."""
  c = x.shape[-1]
  no_stats = lambda: (jnp.zeros(c), jnp.ones(c))

  def conv_op(kind):
    def run(weight):
      st = None if stats is None else stats[kind]
      y, used = relu_conv_bn(x, p[kind][e], p[f'bn{kind[-1]}_scale'][e],
                             p[f'bn{kind[-1]}_bias'][e], st)
      return weight * y, used
    return run

  zero_out = lambda: (jnp.zeros_like(x), no_stats())
  y1, s1 = _gated(m[CONV1], conv_op('conv1'), zero_out, sparse)
  y3, s3 = _gated(m[CONV3], conv_op('conv3'), zero_out, sparse)
  pool = _gated(m[POOL], lambda w: w * avg_pool_3x3(x), lambda: jnp.zeros_like(x), sparse)
  return m[SKIP] * x + y1 + y3 + pool, {'conv1': s1, 'conv3': s3}


def _cell(x, mask, p, stats, sparse):
  """One cell; p holds this cell's edge params stacked over edges [6, ...]."""
  nodes = [x]
  edge_stats = [None] * NUM_EDGES
  for inputs in NODE_INPUTS:
    total = jnp.zeros_like(x)
    for e, frm in inputs:
      st = None if stats is None else jax.tree.map(lambda a: a[e], stats)
      y, edge_stats[e] = _mixed_edge(nodes[frm], mask[e], p, e, st, sparse)
      total = total + y
    nodes.append(total)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *edge_stats)
  return nodes[3], stacked


def apply(params: Params, mask, x, config: NB201Config, stats=None, sparse=False, hook=None):
  """Supernet forward: (logits [B, classes], BN statistics used). `stats` fixes BN statistics;
  `sparse` runs only active ops (see the module docstring); `hook(x) -> x`, if given, is applied
  to the features after the stem and after every cell and reduction block (synflow rescales
  there to stay in float32 range)."""
  hook = hook or (lambda a: a)
  used: dict[str, Any] = {}
  get = (lambda name: None) if stats is None else stats.get
  if config.use_stem:
    p = params['stem']
    x, used['stem'] = batch_norm(conv(x, p['conv']), p['bn_scale'], p['bn_bias'], get('stem'))
    x = hook(x)
  for seg in _segments(config):
    if seg[0] == 'cells':
      name = f'stage{seg[1]}'

      # Cells are unrolled, not scanned: inside a loop body XLA:CPU loses its fast convolution
      # kernels (a scanned backward pass measured 6x slower).
      cell_stats = []
      for i in range(seg[2]):
        pick = lambda tree: jax.tree.map(lambda a: a[i], tree)
        x, st = _cell(x, mask, pick(params[name]),
                      None if get(name) is None else pick(get(name)), sparse)
        x = hook(x)
        cell_stats.append(st)
      used[name] = jax.tree.map(lambda *a: jnp.stack(a), *cell_stats)
    else:
      name = f'reduce{seg[1]}'
      p, st = params[name], get(name) or {}
      a, sa = relu_conv_bn(x, p['conv_a'], p['bna_scale'], p['bna_bias'], st.get('a'), stride=2)
      b, sb = relu_conv_bn(a, p['conv_b'], p['bnb_scale'], p['bnb_bias'], st.get('b'))
      x = hook(b + conv(avg_pool_2x2(x), p['shortcut']))
      used[name] = {'a': sa, 'b': sb}
  p = params['head']
  x, used['head'] = batch_norm(x, p['bn_scale'], p['bn_bias'], get('head'))
  features = jnp.mean(jax.nn.relu(x), (1, 2))
  return features @ p['fc'] + p['fc_bias'], used


def relu_blocks(params: Params, mask, x, config: NB201Config):
  """[(pre-activation [B, units], active)] for every ReLU module the network has, in order.

  Mirrors forward hooks on PyTorch's nn.ReLU modules (TE-NAS, NASWOT): one ReLU per conv op of
  every edge (on that op's input node), two per reduction block, and the head's. `active` is
  False for the ReLU of a conv op the mask switches off: that module does not exist in the
  single-path network, so callers must drop its columns (a Hamming kernel would count them).
  BatchNorm uses the batch's statistics, as `apply` does without `stats`.
  """
  blocks = []
  flat = lambda a: a.reshape(a.shape[0], -1)
  if config.use_stem:
    p = params['stem']
    x, _ = batch_norm(conv(x, p['conv']), p['bn_scale'], p['bn_bias'])
  for seg in _segments(config):
    if seg[0] == 'cells':
      p_all = params[f'stage{seg[1]}']
      for i in range(seg[2]):
        p = jax.tree.map(lambda a: a[i], p_all)
        nodes = [x]
        for inputs in NODE_INPUTS:
          total = jnp.zeros_like(x)
          for e, frm in inputs:
            src = nodes[frm]
            for col in (CONV1, CONV3):
              blocks.append((flat(src), mask[e, col] != 0))
            y, _ = _mixed_edge(src, mask[e], p, e, None)
            total = total + y
          nodes.append(total)
        x = nodes[3]
    else:
      p = params[f'reduce{seg[1]}']
      blocks.append((flat(x), jnp.bool_(True)))
      a, _ = relu_conv_bn(x, p['conv_a'], p['bna_scale'], p['bna_bias'], stride=2)
      blocks.append((flat(a), jnp.bool_(True)))
      b, _ = relu_conv_bn(a, p['conv_b'], p['bnb_scale'], p['bnb_bias'])
      x = b + conv(avg_pool_2x2(x), p['shortcut'])
  p = params['head']
  x, _ = batch_norm(x, p['bn_scale'], p['bn_bias'])
  blocks.append((flat(x), jnp.bool_(True)))
  return blocks


def relu_inputs(params: Params, mask, x, config: NB201Config):
  """Pre-activations of every ReLU the network applies, flattened per sample [B, units].

  Matches TE-NAS's hooks on nn.ReLU (see `relu_blocks`). Inactive ops contribute all-zero
  columns, which leave linear-region pattern counts unchanged.
  """
  return jnp.concatenate([jnp.where(active, pre, 0.0)
                          for pre, active in relu_blocks(params, mask, x, config)], axis=1)


# ----------------------------------------------------------------------------- Flax single path

class _Cell(nn.Module):
  ops: Sequence[int]

  @nn.compact
  def __call__(self, x, train: bool):
    nodes = [x]
    for inputs in NODE_INPUTS:
      total = jnp.zeros_like(x)
      for e, frm in inputs:
        op, h = self.ops[e], nodes[frm]
        if op == SKIP:
          total = total + h
        elif op == POOL:
          total = total + avg_pool_3x3(h)
        elif op in (CONV1, CONV3):
          k = 1 if op == CONV1 else 3
          y = nn.Conv(h.shape[-1], (k, k), padding=k // 2, use_bias=False,
                      name=f'edge{e}_conv')(jax.nn.relu(h))
          total = total + nn.BatchNorm(not train, momentum=0.9, epsilon=BN_EPS,
                                       name=f'edge{e}_bn')(y)
      nodes.append(total)
    return nodes[3]


class _Reduce(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: nn.BatchNorm(not train, momentum=0.9, epsilon=BN_EPS, name=name)
    a = bn('bn_a')(nn.Conv(self.channels, (3, 3), 2, padding=1, use_bias=False,
                           name='conv_a')(jax.nn.relu(x)))
    b = bn('bn_b')(nn.Conv(self.channels, (3, 3), padding=1, use_bias=False,
                           name='conv_b')(jax.nn.relu(a)))
    return b + nn.Conv(self.channels, (1, 1), use_bias=False, name='shortcut')(avg_pool_2x2(x))


class NB201Network(nn.Module):
  """One NB201 architecture as an ordinary Flax model (batch_stats collection when training)."""
  ops: Sequence[int]
  config: NB201Config = NB201Config()

  @nn.compact
  def __call__(self, x, train: bool = True):
    cfg = self.config
    if cfg.use_stem:
      x = nn.Conv(cfg.C, (3, 3), padding=1, use_bias=False, name='stem_conv')(x)
      x = nn.BatchNorm(not train, momentum=0.9, epsilon=BN_EPS, name='stem_bn')(x)
    counts: dict[int, int] = {}
    for kind, s in cfg.layer_plan():
      if kind == 'reduce':
        x = _Reduce(_channels(cfg, s), name=f'reduce{s}')(x, train)
      else:
        i = counts[s] = counts.get(s, -1) + 1
        x = _Cell(tuple(int(o) for o in self.ops), name=f'stage{s}_cell{i}')(x, train)
    x = nn.BatchNorm(not train, momentum=0.9, epsilon=BN_EPS, name='head_bn')(x)
    x = jnp.mean(jax.nn.relu(x), (1, 2))
    return nn.Dense(cfg.num_classes, name='classifier')(x)


def single_path_variables(params: Params, ops, config: NB201Config) -> dict:
  """Supernet params -> `NB201Network(ops)` variables holding the same weights."""
  ops = [int(o) for o in ops]
  out: dict[str, Any] = {}
  stats: dict[str, Any] = {}

  def bn(scale, bias):
    c = scale.shape[-1]
    return {'scale': scale, 'bias': bias}, {'mean': jnp.zeros(c), 'var': jnp.ones(c)}

  if config.use_stem:
    p = params['stem']
    out['stem_conv'] = {'kernel': p['conv']}
    out['stem_bn'], stats['stem_bn'] = bn(p['bn_scale'], p['bn_bias'])
  for seg in _segments(config):
    if seg[0] == 'cells':
      _, s, n = seg
      p = params[f'stage{s}']
      for i in range(n):
        cell, cell_stats = {}, {}
        for e, op in enumerate(ops):
          if op in (CONV1, CONV3):
            tag = '1' if op == CONV1 else '3'
            cell[f'edge{e}_conv'] = {'kernel': p[f'conv{tag}'][i, e]}
            cell[f'edge{e}_bn'], cell_stats[f'edge{e}_bn'] = bn(p[f'bn{tag}_scale'][i, e],
                                                               p[f'bn{tag}_bias'][i, e])
        if cell:  # Flax creates no entry for a cell without convolutions
          out[f'stage{s}_cell{i}'], stats[f'stage{s}_cell{i}'] = cell, cell_stats
    else:
      s = seg[1]
      p = params[f'reduce{s}']
      red, red_stats = {}, {}
      red['conv_a'], red['conv_b'] = {'kernel': p['conv_a']}, {'kernel': p['conv_b']}
      red['shortcut'] = {'kernel': p['shortcut']}
      red['bn_a'], red_stats['bn_a'] = bn(p['bna_scale'], p['bna_bias'])
      red['bn_b'], red_stats['bn_b'] = bn(p['bnb_scale'], p['bnb_bias'])
      out[f'reduce{s}'], stats[f'reduce{s}'] = red, red_stats
  p = params['head']
  out['head_bn'], stats['head_bn'] = bn(p['bn_scale'], p['bn_bias'])
  out['classifier'] = {'kernel': p['fc'], 'bias': p['fc_bias']}
  return {'params': out, 'batch_stats': stats}


def count_param_arrays(variables) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(variables['params'])))


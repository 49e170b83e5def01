"""Integer-only reference inference of a quantized `engine.quant.graph_qat.GraphNetwork`: any
space's lowered graph (NB201's with its constants kept) in TFLite Micro's int8 arithmetic.

The arithmetic is TFLite Micro's int8 reference kernels', with the helpers of `engine.quant.quant`:
int8 x int8 products summed in int32 with the int32 bias, then the Q31 multiplier + shift
(gemmlowp's double rounding, or the rounding of the runtime checked against, `quant.ROUNDINGS`),
the zero point, the fused activation's clamp (TFLite's `CalculateActivationRangeQuantized`) and
saturation. Convs pad by the node's `padding` with the input's zero point (SAME, VALID, or
PyTorch's symmetric k // 2, which TFLite runs as PAD + VALID); a 'batchnorm' node is a
per-channel affine (a 1x1 depthwise conv); ReLU is max(q, zero point) on its input's grid; ADD
rescales both inputs to 2 * max(scale) at 20 extra bits, an add of n terms being a chain of
two-input ADDs whose partial sums have their own grids; average pools divide the window sum by
the taps inside the map, rounding half away from zero; max pools and reshapes keep the grid.

Constants: a node that does not depend on the input (a graph lowered with its constants kept:
an add of no term is zeros on scale 1, zero point 0; a conv of it is its bias; ...) is computed
once, for one image, and broadcast into the adds that read it (what an exporter writes as a
constant tensor).

Two executions of the same kernels (written once over numpy or jax.numpy):
  * `reference_logits` / `run_int8`: numpy, eager, node by node: the reference;
  * `logits`: the same kernels traced once per batch size and compiled by XLA (64-bit integers
    enabled for the trace only), the convolutions as float32 XLA convolutions of exact integers.
    Tests hold it equal to the numpy run bit for bit on every space; int32 overflow, which numpy
    raises on at once, is collected as flags in the compiled code and raised after it.

Exact integer products through float32: int8 values times int8 weights summed in float32 are
exact while every partial sum is an integer below 2^24, in any summation order. Longer
contractions are split into chunks (numpy: of the im2col matrix product, `quant.int_matmul`;
XLA: of the input channels, `_xla_conv`) summed in int64.

`IntGraph` is also what `deploy.graph_tflite.to_tflite` writes: `act(i)` (scale, zero point of
node i's output), `layer(i)` (int8 weights in TFLite's layout, int32 bias, per-channel weight
scales), `partial_act(i, k)` and `constant(i)`, so the .tflite holds exactly the numbers this
reference computes with, and TFLite Micro must reproduce its outputs bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.quant import quant
from engine.quant.quant import ADD_LEFT_SHIFT, ROUNDINGS, int_matmul, int_round_div
from engine.quant.graph_qat import (ZERO_QPARAMS, check_graph, module_name, partial_sum_name,
                                    tap_counts)
from hardware import graph as graph_lib
from search_spaces.kernels import BN_EPS

_LAYER_OPS = ('conv2d', 'depthwise_conv2d', 'dense', 'batchnorm')


@dataclasses.dataclass
class IntLayer:
  weight: np.ndarray        # int8, TFLite layout: conv [O, kh, kw, I], depthwise and batchnorm
                            # [1, kh, kw, C], dense [O, I]
  bias: np.ndarray          # int32 [O]
  weight_scale: np.ndarray  # float32 [O]
  multiplier: np.ndarray    # Q31 significands [O]
  shift: np.ndarray         # [O]


def _scale_zp(ranges) -> tuple[float, int]:
  scale, zp = quant.activation_qparams(ranges['min'], ranges['max'])
  return float(np.float32(scale)), int(zp)


def _tflite_round(v):
  return np.sign(v) * np.floor(np.abs(v) + 0.5)  # std::round: half away from zero


def activation_range(kind, scale: float, zero_point: int) -> tuple[int, int]:
  """TFLite's int8 clamp of a fused activation on the output grid (scale, zero point)."""
  s = np.float32(scale)
  lo, hi = quant.QMIN, quant.QMAX
  if kind in ('relu', 'relu6'):
    lo = max(lo, zero_point + int(_tflite_round(np.float32(0.0) / s)))
  if kind == 'relu6':
    hi = min(hi, zero_point + int(_tflite_round(np.float32(6.0) / s)))
  return lo, hi


def _windows(x, node, in_shape):
  """x [N, H, W, C] (zero-point shifted, so zero padding is exact) -> the node's padded windows
  [N, Ho, Wo, k, k, C] (a strided view)."""
  k, s = node.kernel[0], node.stride[0]
  (top, bottom), (left, right) = graph_lib.window_pads(node, in_shape)
  ho, wo = node.shape[:2]
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # [N,H',W',C,k,k]
  return win[:, ::s, ::s][:, :ho, :wo].transpose(0, 1, 2, 4, 5, 3)


def _window_reduce(x, node, in_shape, xp, reduce):
  """reduce(list of the k * k strided tap slices) of x [N, H, W, C] zero-padded by the node's
  padding: pools, on numpy or jax arrays."""
  k, s = node.kernel[0], node.stride[0]
  (top, bottom), (left, right) = graph_lib.window_pads(node, in_shape)
  ho, wo = node.shape[:2]
  if top or bottom or left or right:
    x = xp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  taps = [x[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
          for dy in range(k) for dx in range(k)]
  return reduce(taps)


def _xla_conv(q, zero_point, weight, node, in_shape):
  """Exact integer conv / depthwise conv of (q - zero_point) with int8 `weight` (TFLite layout)
  under the node's padding, through XLA float32 convolutions: q [N, H, W, C] int8 values.

  It convolves q itself (zero-padded) and subtracts zero_point times the sum of the weights
  whose taps fall inside the image (a constant per output position and channel): the same
  integer, but |q| <= 128 halves the largest product against |q - zp| <= 255, so 3x3 convs
  stay exact in one float32 pass up to 114 input channels. Longer contractions are split into
  equal chunks of input channels, summed in int64."""
  k = node.kernel[0]
  pads = graph_lib.window_pads(node, in_shape)
  dims = ('NHWC', 'HWIO', 'NHWC')
  depthwise = node.op == 'depthwise_conv2d'
  w = weight[0][:, :, None, :] if depthwise else weight.transpose(1, 2, 3, 0)  # -> HWIO
  cin = q.shape[-1]
  max_channels = 1 if depthwise else max(1, ((1 << 24) // (128 * 127)) // (k * k))
  chunks = 1 if depthwise else -(-cin // max_channels)
  size = -(-cin // chunks)
  out = None
  for i in range(0, cin, size):
    part = jax.lax.conv_general_dilated(
        q[..., i:i + size].astype(jnp.float32),
        jnp.asarray(w if depthwise else w[:, :, i:i + size], jnp.float32),
        node.stride, pads, dimension_numbers=dims, feature_group_count=cin if depthwise else 1,
        precision=jax.lax.Precision.HIGHEST)
    part = part.astype(jnp.int32)  # exact integers below 2^24
    out = part if out is None else out + part
  # the weights over the taps inside the image, per output position and channel (numpy)
  inside = np.ones((1,) + tuple(in_shape), np.int64)
  win = _windows(inside, node, in_shape)
  if depthwise:
    tap_sums = np.einsum('nhwijc,ijc->nhwc', win, weight[0].astype(np.int64))
  else:
    tap_sums = np.einsum('nhwijc,oijc->nhwo', win, weight.astype(np.int64))
  return out.astype(jnp.int64) - int(zero_point) * tap_sums


class IntGraph:
  """The integer network of `graph` with quantized `variables` (ranges calibrated)."""

  def __init__(self, variables, graph: graph_lib.Graph, rounding: str = 'tflm'):
    # how the runtime checked against rounds its requantizations (`quant.ROUNDINGS`)
    if rounding not in ROUNDINGS:
      raise ValueError(f'unknown rounding {rounding!r}; use one of {", ".join(ROUNDINGS)}')
    check_graph(graph)
    self.graph = graph
    self.rounding = ROUNDINGS[rounding]
    params = jax.tree.map(np.asarray, dict(variables['params']))
    stats = jax.tree.map(np.asarray, dict(variables.get('batch_stats', {})))
    ranges = jax.tree.map(np.asarray, dict(variables['quant']))
    nodes = graph.nodes
    self.qparams: list[tuple[float, int]] = []
    self.partials: dict[int, list[tuple[float, int]]] = {}  # add i -> its partial sums' grids
    self.layers: dict[int, IntLayer] = {}
    self.live = graph_lib.input_dependent(graph)
    for i, node in enumerate(nodes):
      name = module_name(node)
      if node.op == 'input':
        self.qparams.append(_scale_zp(ranges['input_q']))
      elif node.op in _LAYER_OPS:
        self.qparams.append(_scale_zp(ranges[name]['out_q']))
        self.layers[i] = self._convert(node, params[name], stats.get(name),
                                       self.qparams[node.inputs[0]][0], self.qparams[i][0])
      elif node.op == 'add' and not node.inputs:
        self.qparams.append((float(ZERO_QPARAMS[0]), int(ZERO_QPARAMS[1])))
      elif node.op == 'add' and len(node.inputs) == 1:
        self.qparams.append(self.qparams[node.inputs[0]])
      elif node.op == 'add':
        self.partials[i] = [_scale_zp(ranges[partial_sum_name(node, k)])
                            for k in range(1, len(node.inputs) - 1)]
        self.qparams.append(_scale_zp(ranges[name]))
      else:  # pools, ReLU, reshape, identity: the input's grid
        self.qparams.append(self.qparams[node.inputs[0]])
    # constants: every node that does not depend on the input, for one image, once
    self.consts: dict[int, np.ndarray] = {}
    for i, node in enumerate(nodes):
      if not self.live[i]:
        self.consts[i] = self._node(i, self.consts, np, None, batch=1)
    # the partial sums of an add's leading constant terms: constants too
    self.partial_consts: dict[tuple[int, int], np.ndarray] = {}
    for i, node in enumerate(nodes):
      if node.op != 'add' or not self.live[i] or self.live[node.inputs[0]]:
        continue
      total, grid = self.consts[node.inputs[0]], self.qparams[node.inputs[0]]
      for k, j in enumerate(node.inputs[1:-1], 1):
        if self.live[j]:
          break
        total = self._add2(total, self.consts[j], grid, self.qparams[j], self.partials[i][k - 1],
                           None, np, None)
        grid = self.partials[i][k - 1]
        self.partial_consts[(i, k)] = total
    self._run = jax.jit(self._traced)  # one program per batch size (jit's shape cache)

  def _convert(self, node, p, st, in_scale, out_scale) -> IntLayer:
    c = node.shape[2]
    if node.op == 'batchnorm':  # BN folded into a [1, C] kernel of ones: y = x * a + b
      w, b = quant.fold_batch_norm(np.ones((1, c), np.float32), p['scale'], p['bias'],
                                   st['mean'], st['var'], BN_EPS)
    elif node.folded_bn:
      w, b = quant.fold_batch_norm(p['kernel'], p['scale'], p['bias'], st['mean'], st['var'],
                                   BN_EPS)
    else:
      w, b = p['kernel'], p.get('bias', np.zeros(c, np.float32))
    w, b = np.asarray(w, np.float32), np.asarray(b, np.float32)
    # float32 like the fake-quant, so both round the same numbers
    w_scale = np.asarray(quant.weight_scales(w), np.float32)
    w_q = quant.quantize(w / w_scale, 1.0, 0, -quant.WMAX, quant.WMAX)
    bias_scale = np.float32(in_scale) * w_scale
    b_q = quant.quantize(b / bias_scale, 1.0, 0, quant.INT32_MIN, quant.INT32_MAX, np.int32)
    # TFLite Micro: input scale * filter scale / output scale, in double, of the float32 scales
    mult, shift = quant.quantize_multiplier(
        np.float64(np.float32(in_scale)) * w_scale.astype(np.float64)
        / np.float64(np.float32(out_scale)))
    if node.op == 'conv2d':        # HWIO -> OHWI
      w_q = w_q.transpose(3, 0, 1, 2)
    elif node.op == 'dense':       # [in, out] -> [out, in]
      w_q = w_q.T
    # depthwise HW1C is TFLite's [1, kh, kw, C] after moving the 1 to the front
    elif node.op == 'depthwise_conv2d':
      w_q = w_q.transpose(2, 0, 1, 3)
    else:                          # batchnorm [1, C] -> a 1x1 depthwise [1, 1, 1, C]
      w_q = w_q.reshape(1, 1, 1, c)
    return IntLayer(np.ascontiguousarray(w_q), b_q, w_scale, mult, shift)

  # ------------------------------------------------------------------ what graph_tflite writes

  def act(self, i) -> tuple[float, int]:
    return self.qparams[i]

  def partial_act(self, i, k) -> tuple[float, int]:
    """(scale, zero point) of the k-th partial sum (k = 1 .. n - 2) of add node i."""
    return self.partials[i][k - 1]

  def layer(self, i):
    l = self.layers[i]
    return l.weight, l.bias, l.weight_scale

  def constant(self, i, k=None) -> np.ndarray | None:
    """int8 values [1, H, W, C] of node i (k: of add i's k-th partial sum) if it does not depend
    on the input, else None."""
    if k is not None:
      v = self.partial_consts.get((i, k))
      return None if v is None else v.astype(np.int8)
    return None if self.live[i] else self.consts[i].astype(np.int8)

  # ------------------------------------------------------------------ the kernels

  def _single(self, op) -> bool:
    kind = {'conv2d': 'conv', 'depthwise_conv2d': 'depthwise', 'batchnorm': 'affine'}.get(op, op)
    return self.rounding.get(kind, self.rounding['*'])

  def _requantize(self, acc, op, multiplier, shift, qparams, activation, xp, flags):
    scale, zp = qparams
    out = quant.multiply_by_quantized_multiplier(acc, multiplier, shift,
                                                 single_rounding=self._single(op), flags=flags)
    lo, hi = activation_range(activation, scale, zp)
    return xp.clip(out + zp, lo, hi).astype(np.int32)

  def _add2(self, a, b, qa, qb, qout, activation, xp, flags):
    """TFLite int8 ADD: rescale both inputs to 2 * max(scale) at 20 extra bits, add, requantize."""
    (sa, za), (sb, zb) = qa, qb
    twice_max = 2 * max(np.float64(sa), np.float64(sb))
    total = 0
    for t, s, z in ((a, sa, za), (b, sb, zb)):
      m, sh = quant.quantize_multiplier(np.float64(s) / twice_max)
      total = total + quant.multiply_by_quantized_multiplier(
          (xp.asarray(t).astype(np.int64) - z) << ADD_LEFT_SHIFT, m, sh,
          single_rounding=self._single('add'), flags=flags)
    m, sh = quant.quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * np.float64(qout[0])))
    return self._requantize(total, 'add', m, sh, qout, activation, xp, flags)

  def _node(self, i, vals, xp, flags, batch=None):
    """Node i's int8 values (int32 arrays) from its inputs' in `vals`, on numpy or jax."""
    node = self.graph.nodes[i]
    if node.op == 'add':
      if not node.inputs:  # a zero tensor
        return np.zeros((batch,) + tuple(node.shape), np.int32)
      grids = [self.qparams[j] for j in node.inputs]
      total, grid = vals[node.inputs[0]], grids[0]
      for k, j in enumerate(node.inputs[1:], 1):
        last = k == len(node.inputs) - 1
        out_grid = self.qparams[i] if last else self.partials[i][k - 1]
        total = self._add2(total, vals[j], grid, grids[k], out_grid,
                           node.activation if last else None, xp, flags)
        grid = out_grid
      return total
    x = vals[node.inputs[0]]
    zp_in = self.qparams[node.inputs[0]][1]
    in_shape = self.graph.nodes[node.inputs[0]].shape
    if node.op in _LAYER_OPS:
      l = self.layers[i]
      if node.op == 'dense':
        acc = int_matmul((x - zp_in).reshape(len(x), -1), l.weight.T)
      elif node.op == 'batchnorm':
        acc = (x.astype(np.int64) - zp_in) * l.weight.reshape(-1)
      elif xp is not np:
        acc = _xla_conv(x, zp_in, l.weight, node, in_shape)
      elif node.op == 'conv2d':
        k = node.kernel[0]
        win = _windows((x - zp_in).astype(np.float32), node, in_shape)
        acc = int_matmul(win.reshape(-1, k * k * win.shape[-1]),
                         l.weight.reshape(len(l.weight), -1).T).reshape(win.shape[:3] + (-1,))
      else:  # depthwise
        win = _windows(x.astype(np.int64) - zp_in, node, in_shape)
        acc = np.einsum('nhwijc,ijc->nhwc', win, l.weight[0].astype(np.int64))
      acc = acc + l.bias
      out = self._requantize(acc, node.op, l.multiplier, l.shift, self.qparams[i],
                             node.activation, xp, flags)
      return out.reshape((len(x),) + tuple(node.shape)) if node.op == 'dense' else out
    if node.op == 'activation':  # ReLU on the input's grid
      return xp.maximum(x, zp_in)
    if node.op == 'global_avg_pool':
      total = x.astype(np.int64).sum((1, 2), keepdims=True)
      return int_round_div(total, x.shape[1] * x.shape[2]).astype(np.int32)
    if node.op == 'avg_pool':
      total = _window_reduce(x.astype(np.int64), node, in_shape, xp, sum)
      return int_round_div(total, tap_counts(node, in_shape)).astype(np.int32)
    if node.op == 'max_pool':  # VALID only (`check_graph`)
      return _window_reduce(x, node, in_shape, xp,
                            lambda taps: functools.reduce(xp.maximum, taps)).astype(np.int32)
    if node.op == 'reshape':
      return x.reshape((len(x),) + tuple(node.shape))
    return x  # identity

  def _forward(self, q_in, xp, flags):
    vals = {0: q_in}
    for i in range(1, len(self.graph.nodes)):
      vals[i] = self._node(i, vals, xp, flags) if self.live[i] else self.consts[i]
    return vals[len(self.graph.nodes) - 1].reshape(len(q_in), -1)

  # ------------------------------------------------------------------ inference

  def quantize_input(self, x) -> np.ndarray:
    scale, zp = self.qparams[0]
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return np.clip(q, quant.QMIN, quant.QMAX).astype(np.int32)

  def run_int8(self, q_in: np.ndarray) -> np.ndarray:
    """int8 input values [N, H, W, C] (held in any int type) -> int8 logits [N, classes];
    numpy, eager: the reference."""
    return self._forward(np.asarray(q_in, np.int32), np, None).astype(np.int8)

  def reference_logits(self, x, batch_size=250) -> np.ndarray:
    """int8 logits of normalised float images [N, H, W, C], numpy (the reference)."""
    q = self.quantize_input(x)
    if not len(q):
      return np.zeros((0, self.graph.nodes[-1].shape[2]), np.int8)
    return np.concatenate([self.run_int8(q[i:i + batch_size])
                           for i in range(0, len(q), batch_size)])

  def logits(self, x, batch_size=500) -> np.ndarray:
    """int8 logits [N, classes] of normalised float images, equal bit for bit to
    `reference_logits`, through one XLA program per batch size (the last batch is padded)."""
    q = self.quantize_input(x)
    n = len(q)
    if n == 0:
      return np.zeros((0, self.graph.nodes[-1].shape[2]), np.int8)
    batch_size = min(batch_size, n)
    zp = self.qparams[0][1]
    parts = []
    for i in range(0, n, batch_size):
      part = q[i:i + batch_size]
      pad = batch_size - len(part)
      if pad:
        part = np.concatenate([part, np.full((pad,) + part.shape[1:], zp, np.int32)])
      with jax.enable_x64(True):
        out, overflow = self._run(part)
      if bool(overflow):
        raise OverflowError('requantization input overflows int32 in the integer network '
                            f'(images {i} to {i + batch_size - 1})')
      parts.append(np.asarray(out)[:batch_size - pad])
    return np.concatenate(parts).astype(np.int8)

  def _traced(self, q):
    flags = []
    out = self._forward(q, jnp, flags)
    overflow = jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)
    return out, overflow

  def predict(self, x, batch_size=500) -> np.ndarray:
    return np.argmax(self.logits(x, batch_size), -1)

  def weight_counts(self) -> dict[str, int]:
    """int8 weight and int32 bias element counts of the conv and dense layers that run (what
    `hardware` counts as weights and biases; a layer whose output is a constant stores none),
    and of 'batchnorm' affines apart (which it does not count)."""
    kinds = {False: [], True: []}
    for i, l in self.layers.items():
      if self.live[i]:
        # a layer without bias (NB201's shortcut) writes zeros, which LiteRT's CONV_2D wants
        node = self.graph.nodes[i]
        bias = l.bias.size if node.bias or node.op == 'batchnorm' else 0
        kinds[node.op == 'batchnorm'].append((l.weight.size, bias))
    out = dict(weights=int(sum(w for w, _ in kinds[False])),
               biases=int(sum(b for _, b in kinds[False])))
    if kinds[True]:
      out['batchnorm_affine'] = {'weights': int(sum(w for w, _ in kinds[True])),
                                 'biases': int(sum(b for _, b in kinds[True]))}
    return out


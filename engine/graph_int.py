"""Integer-only reference inference of a quantized `engine.graph_qat.GraphNetwork` (numpy).

The arithmetic is TFLite Micro's int8 reference kernels', as NB201's own integer network
(`search_spaces.nb201.integer`) does it, with the same helpers of `engine.quant`: int8 x int8
products summed in int32 with the int32 bias, then
`quant.requantize` (Q31 multiplier + shift, gemmlowp's double rounding), the zero point, the
fused activation's clamp (TFLite's `CalculateActivationRangeQuantized`) and saturation; ADD
rescales both inputs to 2 * max(scale) at 20 extra bits; average pools divide the window sum
with rounding half away from zero; max pools and reshapes keep the grid.

`IntGraph` is also what `deploy.graph_tflite.to_tflite` writes: `act(i)` (scale, zero point of
node i's output) and `layer(i)` (int8 weights in TFLite's layout, int32 bias, per-channel
weight scales), so the .tflite holds exactly the numbers this reference computes with, and
TFLite Micro must reproduce its outputs bit for bit.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from engine import quant
from engine.quant import ADD_LEFT_SHIFT, ROUNDINGS, int_matmul, int_round_div
from engine.graph_qat import check_graph, module_name
from hardware import graph as graph_lib
from search_spaces.kernels import BN_EPS


@dataclasses.dataclass
class IntLayer:
  weight: np.ndarray        # int8, TFLite layout: conv [O, kh, kw, I], depthwise [1, kh, kw, C],
                            # dense [O, I]
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


def _same_pad(size, k, stride):
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return out, total // 2, total - total // 2


def _windows(x, k, stride):
  """x [N, H, W, C] (zero-point shifted, so zero padding is exact) -> SAME-padded windows
  [N, Ho, Wo, k, k, C] (a strided view)."""
  _, h, w, _ = x.shape
  ho, top, bottom = _same_pad(h, k, stride)
  wo, left, right = _same_pad(w, k, stride)
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # [N,H',W',C,k,k]
  return win[:, ::stride, ::stride][:, :ho, :wo].transpose(0, 1, 2, 4, 5, 3)


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
    self.layers: dict[int, IntLayer] = {}
    for i, node in enumerate(nodes):
      name = module_name(node)
      if node.op == 'input':
        self.qparams.append(_scale_zp(ranges['input_q']))
      elif node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
        self.qparams.append(_scale_zp(ranges[name]['out_q']))
        self.layers[i] = self._convert(node, params[name], stats.get(name),
                                       self.qparams[node.inputs[0]][0], self.qparams[i][0])
      elif node.op == 'add':
        self.qparams.append(_scale_zp(ranges[name]))
      else:  # pools, reshape, identity: the input's grid
        self.qparams.append(self.qparams[node.inputs[0]])

  @staticmethod
  def _convert(node, p, st, in_scale, out_scale) -> IntLayer:
    if node.folded_bn:
      w, b = quant.fold_batch_norm(p['kernel'], p['scale'], p['bias'], st['mean'], st['var'],
                                   BN_EPS)
    else:
      w, b = p['kernel'], p.get('bias', np.zeros(node.shape[2], np.float32))
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
    return IntLayer(np.ascontiguousarray(w_q), b_q, w_scale, mult, shift)

  # ------------------------------------------------------------------ what graph_tflite writes

  def act(self, i) -> tuple[float, int]:
    return self.qparams[i]

  def layer(self, i):
    l = self.layers[i]
    return l.weight, l.bias, l.weight_scale

  # ------------------------------------------------------------------ inference

  def quantize_input(self, x) -> np.ndarray:
    scale, zp = self.qparams[0]
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return np.clip(q, quant.QMIN, quant.QMAX).astype(np.int32)

  def _single(self, op) -> bool:
    kind = {'conv2d': 'conv', 'depthwise_conv2d': 'depthwise'}.get(op, op)
    return self.rounding.get(kind, self.rounding['*'])

  def _requantize(self, acc, i, multiplier, shift):
    node = self.graph.nodes[i]
    scale, zp = self.qparams[i]
    out = quant.multiply_by_quantized_multiplier(acc, multiplier, shift,
                                                 single_rounding=self._single(node.op))
    lo, hi = activation_range(node.activation, scale, zp)
    return np.clip(out + zp, lo, hi).astype(np.int32)

  def run_int8(self, q_in: np.ndarray) -> np.ndarray:
    """int8 input values [N, H, W, C] (held in any int type) -> int8 logits [N, classes]."""
    nodes = self.graph.nodes
    vals = [np.asarray(q_in, np.int32)]
    for i, node in enumerate(nodes[1:], 1):
      x = vals[node.inputs[0]]
      zp_in = self.qparams[node.inputs[0]][1]
      if node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
        l = self.layers[i]
        shifted = (x - zp_in).astype(np.float32)
        if node.op == 'dense':
          acc = int_matmul(shifted.reshape(len(x), -1), l.weight.T)
        elif node.op == 'conv2d':
          k = node.kernel[0]
          win = _windows(shifted, k, node.stride[0])
          acc = int_matmul(win.reshape(-1, k * k * win.shape[-1]),
                           l.weight.reshape(len(l.weight), -1).T).reshape(win.shape[:3] + (-1,))
        else:
          k = node.kernel[0]
          win = _windows(x.astype(np.int64) - zp_in, k, node.stride[0])
          acc = np.einsum('nhwijc,ijc->nhwc', win, l.weight[0].astype(np.int64))
        acc = acc + l.bias
        vals.append(self._requantize(acc, i, l.multiplier, l.shift))
      elif node.op == 'add':
        a, b = (vals[j] for j in node.inputs)
        (sa, za), (sb, zb) = (self.qparams[j] for j in node.inputs)
        out_scale = self.qparams[i][0]
        twice_max = 2 * max(np.float64(sa), np.float64(sb))
        total = 0
        for t, s, z in ((a, sa, za), (b, sb, zb)):
          m, sh = quant.quantize_multiplier(np.float64(s) / twice_max)
          total = total + quant.multiply_by_quantized_multiplier(
              (t.astype(np.int64) - z) << ADD_LEFT_SHIFT, m, sh,
              single_rounding=self._single('add'))
        m, sh = quant.quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * np.float64(out_scale)))
        vals.append(self._requantize(total, i, m, sh))
      elif node.op == 'global_avg_pool':
        total = x.astype(np.int64).sum((1, 2), keepdims=True)
        vals.append(int_round_div(total, x.shape[1] * x.shape[2]).astype(np.int32))
      elif node.op in ('avg_pool', 'max_pool'):
        k = node.kernel[0]
        n, h, w, c = x.shape
        blocks = x[:, :h // k * k, :w // k * k].astype(np.int64).reshape(n, h // k, k, w // k,
                                                                          k, c)
        vals.append(blocks.max((2, 4)).astype(np.int32) if node.op == 'max_pool' else
                    int_round_div(blocks.sum((2, 4)), k * k).astype(np.int32))
      elif node.op == 'reshape':
        vals.append(x.reshape(len(x), -1))
      else:
        vals.append(x)
    return vals[-1].reshape(len(q_in), -1).astype(np.int8)

  def logits(self, x, batch_size=250) -> np.ndarray:
    """int8 logits of normalised float images [N, H, W, C]."""
    q = self.quantize_input(x)
    if not len(q):
      return np.zeros((0, self.graph.nodes[-1].shape[2]), np.int8)
    return np.concatenate([self.run_int8(q[i:i + batch_size])
                           for i in range(0, len(q), batch_size)])

  def predict(self, x, batch_size=250) -> np.ndarray:
    return np.argmax(self.logits(x, batch_size), -1)

  def weight_counts(self) -> dict[str, int]:
    return dict(weights=int(sum(l.weight.size for l in self.layers.values())),
                biases=int(sum(l.bias.size for l in self.layers.values())))

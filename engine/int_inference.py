"""Integer-only reference inference of a quantized `engine.qat_net.QATNetwork` (numpy).

Everything after the input quantization is integer arithmetic as TFLite-Micro's int8 reference
kernels do it: int8 x int8 products accumulated in int32 with the int32 bias, then
`quant.requantize` (Q31 fixed-point multiplier + shift, rounding, zero point, saturation).
Node sums are chains of TFLite's two-input ADD (inputs shifted left by 20 bits and rescaled to a
common scale 2 * max(input scales) before one final requantization; partial sums are int8
tensors with their own ranges); average pools, the global one included, divide the int32 window
sum with rounding half away from zero on the input's grid; ReLU is max(q, zero_point). This is the reference the export
step builds on, so it favours clarity over speed.

Exact integer matmuls through BLAS: each convolution is an im2col matrix product. The int8 operands
are multiplied as float32, which is exact while every partial sum is an integer below 2^24;
`_int_matmul` splits longer contractions into chunks of `EXACT_F32_TERMS` and sums them in int64.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from engine import quant
from engine.qat_net import ZERO_QPARAMS, layer_name, partial_sum_name
from search_spaces import nb201_net
from search_spaces.nb201 import NB201Config
from search_spaces.nb201_net import BN_EPS

ADD_LEFT_SHIFT = 20  # TFLite int8 ADD


@dataclasses.dataclass
class QTensor:
  """int8 values (held in int32) with their per-tensor scale and zero point."""
  q: np.ndarray
  scale: float
  zero_point: int


@dataclasses.dataclass
class IntLayer:
  """A conv / depthwise / dense layer in int8: what goes to flash."""
  weight: np.ndarray             # int8, HWIO (conv), [C] (depthwise 1x1) or [in, out] (dense)
  bias: np.ndarray | None        # int32 [out] (None: no bias, e.g. the reduction shortcut)
  multiplier: np.ndarray         # int32 Q31 significands [out]
  shift: np.ndarray              # [out]
  out_scale: float
  out_zero_point: int
  weight_scale: np.ndarray       # float32 per-channel weight scales [out]
  stride: int = 1


def _qparams(qvars) -> tuple[float, int]:
  scale, zp = quant.activation_qparams(qvars['min'], qvars['max'])
  return float(scale), int(zp)


# Terms of an int8 x (int8 - zero point) dot product whose float32 sum stays exact: every
# partial sum is an integer of magnitude below 2^24.
EXACT_F32_TERMS = (1 << 24) // (255 * 127)


def _int_matmul(a, b):
  """Exact integer a @ b for integer-valued operands (|a| <= 255, |b| <= 127) through float32
  BLAS, the contraction split into chunks short enough to stay exact, summed in int64."""
  a = a.astype(np.float32, copy=False)
  b = b.astype(np.float32)
  k = a.shape[-1]
  out = None
  for i in range(0, k, EXACT_F32_TERMS):
    part = np.rint(a[..., i:i + EXACT_F32_TERMS] @ b[i:i + EXACT_F32_TERMS]).astype(np.int64)
    out = part if out is None else out + part
  return out


def _im2col(x, k, stride):
  """x [N, H, W, C] (already zero-point-shifted, so zero padding is exact) -> [N, Ho, Wo, k*k*C].

  Each tap is copied once into its slot of the output; the zero border is never materialised
  as a padded copy of x."""
  n, h, w, c = x.shape
  if k == 1 and stride == 1:
    return x
  pad = k // 2
  ho = (h + 2 * pad - k) // stride + 1
  wo = (w + 2 * pad - k) // stride + 1
  cols = np.zeros((n, ho, wo, k, k, c), x.dtype)
  for dy in range(k):
    for dx in range(k):
      # output rows i read input row i * stride + dy - pad; keep those inside the image
      i0 = max(0, -((dy - pad) // stride))
      i1 = min(ho, (h - 1 - dy + pad) // stride + 1)
      j0 = max(0, -((dx - pad) // stride))
      j1 = min(wo, (w - 1 - dx + pad) // stride + 1)
      r0, c0 = i0 * stride + dy - pad, j0 * stride + dx - pad
      cols[:, i0:i1, j0:j1, dy, dx] = x[:, r0:r0 + stride * (i1 - i0 - 1) + 1:stride,
                                        c0:c0 + stride * (j1 - j0 - 1) + 1:stride]
  return cols.reshape(n, ho, wo, k * k * c)


def _round_div(total, count):
  """TFLite's int average: divide with rounding half away from zero."""
  return np.where(total >= 0, (total + count // 2) // count, -((-total + count // 2) // count))


class IntNetwork(nb201_net.Backend):
  """Integer NB201 network converted from QATNetwork variables (ranges must be calibrated).

  A backend of the one walk `nb201_net.network` (as `QATNetwork` is), on `QTensor`s; layers are
  named as QATNetwork names its submodules (`qat_net.layer_name`). Layers are converted on first
  use; the constructor runs one image so that `layers` holds every layer.
  """

  def __init__(self, variables, ops, config: NB201Config, single_rounding: bool = False):
    # TFLite Micro's kernels round twice (gemmlowp), LiteRT's XNNPACK kernels once; the
    # exported model equals this reference bit for bit in each with the matching setting
    # (docs/deploy.md). The default is the microcontroller runtime's.
    self.single_rounding = single_rounding
    self.params = jax.tree.map(np.asarray, dict(variables['params']))
    self.stats = jax.tree.map(np.asarray, dict(variables.get('batch_stats', {})))
    self.ranges = jax.tree.map(np.asarray, dict(variables['quant']))
    self.ops = tuple(int(o) for o in ops)
    self.config = config
    self.layers: dict[str, IntLayer] = {}
    self(np.zeros((1, config.input_size, config.input_size, config.in_channels), np.float32))

  # -------------------------------------------------------------------------- conversion

  def _layer(self, name, kind, t: QTensor, stride=1) -> IntLayer:
    if name in self.layers:
      return self.layers[name]
    p = self.params[name]
    out_scale, out_zp = _qparams(self.ranges[name]['out_q'])
    if kind == 'affine':  # head BN as a 1x1 depthwise conv
      st = self.stats[name]
      w, b = quant.fold_batch_norm(jnp.ones((1, p['scale'].shape[0])), p['scale'], p['bias'],
                                   st['mean'], st['var'], BN_EPS)
    elif 'scale' in p:  # conv + BN, folded exactly as QConv folds it
      st = self.stats[name]
      w, b = quant.fold_batch_norm(p['kernel'], p['scale'], p['bias'], st['mean'], st['var'],
                                   BN_EPS)
    else:
      w, b = jnp.asarray(p['kernel']), p.get('bias')
    # float32 like the fake-quant, so that both round the same numbers
    w_scale = np.asarray(quant.weight_scales(w), np.float32)
    w_q = quant.quantize(np.asarray(w, np.float32) / w_scale, 1.0, 0, -quant.WMAX, quant.WMAX)
    bias_q = None
    if b is not None:
      bias_scale = np.float32(t.scale) * w_scale
      bias_q = quant.quantize(np.asarray(b, np.float32) / bias_scale, 1.0, 0, quant.INT32_MIN,
                              quant.INT32_MAX, np.int64)
    mult, shift = quant.quantize_multiplier(t.scale * w_scale.astype(np.float64) / out_scale)
    if kind == 'affine':
      w_q = w_q[0]
    layer = IntLayer(w_q, bias_q, mult, shift, out_scale, out_zp, w_scale, stride)
    self.layers[name] = layer
    return layer

  # -------------------------------------------------------------------------- int kernels

  def _conv(self, name, t: QTensor, k, stride=1) -> QTensor:
    layer = self._layer(name, 'conv', t, stride)
    cols = _im2col((t.q - t.zero_point).astype(np.float32), k, stride)
    acc = _int_matmul(cols.reshape(-1, cols.shape[-1]),
                      layer.weight.reshape(-1, layer.weight.shape[-1]))
    if layer.bias is not None:
      acc = acc + layer.bias
    out = quant.requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point,
                           single_rounding=self.single_rounding)
    return QTensor(out.astype(np.int32).reshape(cols.shape[:3] + (-1,)), layer.out_scale,
                   layer.out_zero_point)

  def _affine(self, name, t: QTensor) -> QTensor:
    layer = self._layer(name, 'affine', t)
    acc = (t.q.astype(np.int64) - t.zero_point) * layer.weight + layer.bias
    out = quant.requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point,
                           single_rounding=self.single_rounding)
    return QTensor(out.astype(np.int32), layer.out_scale, layer.out_zero_point)

  def _dense(self, name, t: QTensor) -> QTensor:
    layer = self._layer(name, 'dense', t)
    acc = _int_matmul(t.q - t.zero_point, layer.weight) + layer.bias
    out = quant.requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point,
                           single_rounding=self.single_rounding)
    return QTensor(out.astype(np.int32), layer.out_scale, layer.out_zero_point)

  def _add(self, name, terms: list[QTensor]) -> QTensor:
    """An n-term node sum as n - 1 binary ADDs, partial sums quantized (`partial_sum_name`)."""
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
      total = self._add2(name if i == len(terms) - 1 else partial_sum_name(name, i), total, t)
    return total

  def _add2(self, name, a: QTensor, b: QTensor) -> QTensor:
    """TFLite int8 ADD: rescale both inputs to 2 * max(scale) at 20 extra bits, add, requantize."""
    out_scale, out_zp = _qparams(self.ranges[name])
    twice_max = 2 * max(a.scale, b.scale)
    total = 0
    for t in (a, b):
      m, s = quant.quantize_multiplier(t.scale / twice_max)
      shifted = (t.q.astype(np.int64) - t.zero_point) << ADD_LEFT_SHIFT
      total = total + quant.multiply_by_quantized_multiplier(shifted, m, s, self.single_rounding)
    m, s = quant.quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out_scale))
    out = quant.requantize(total, m, s, out_zp, single_rounding=self.single_rounding)
    return QTensor(out.astype(np.int32), out_scale, out_zp)

  @staticmethod
  def _avg_pool_3x3(t: QTensor) -> QTensor:
    """3x3, stride 1, padding 1 not counted; same scale and zero point in and out."""
    n, h, w, c = t.q.shape
    xp = np.pad(t.q.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    total = sum(xp[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    ones = np.pad(np.ones((h, w), np.int64), 1)
    count = sum(ones[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return QTensor(_round_div(total, count[None, :, :, None]).astype(np.int32), t.scale,
                   t.zero_point)

  @staticmethod
  def _avg_pool_2x2(t: QTensor) -> QTensor:
    n, h, w, c = t.q.shape
    total = t.q.astype(np.int64).reshape(n, h // 2, 2, w // 2, 2, c).sum((2, 4))
    return QTensor(_round_div(total, 4).astype(np.int32), t.scale, t.zero_point)

  @staticmethod
  def _global_avg_pool(t: QTensor) -> QTensor:
    """TFLite's AVERAGE_POOL_2D over the whole map: same grid in and out, [N, H, W, C] -> [N, C]."""
    total = t.q.astype(np.int64).sum((1, 2))
    return QTensor(_round_div(total, t.q.shape[1] * t.q.shape[2]).astype(np.int32), t.scale,
                   t.zero_point)

  # -------------------------------------------------------------------------- the walk's backend

  def input(self, x) -> QTensor:
    return self.quantize_input(x)

  def conv(self, t, path, features, k, stride=1, bn=True):
    return self._conv(layer_name(path), t, k, stride)

  def relu(self, t: QTensor, path) -> QTensor:
    return QTensor(np.maximum(t.q, t.zero_point), t.scale, t.zero_point)

  def pool(self, t, path, size):
    return self._avg_pool_3x3(t) if size == 3 else self._avg_pool_2x2(t)

  def add(self, terms, path, like):
    """Node sum: none -> constant zeros (ZERO_QPARAMS), one -> alias, more -> int8 ADD."""
    if not terms:
      scale, zp = ZERO_QPARAMS
      return QTensor(np.full_like(like.q, int(zp)), scale, int(zp))
    return terms[0] if len(terms) == 1 else self._add(layer_name(path), terms)

  def head_bn(self, t, path):
    return self._affine(layer_name(path), t)

  def global_pool(self, t, path):
    return self._global_avg_pool(t)

  def dense(self, t, path, features):
    return self._dense(layer_name(path), t)

  def quantize_input(self, x) -> QTensor:
    """Float (normalised) images -> int8, the only float step (a camera pipeline would fold it)."""
    scale, zp = _qparams(self.ranges['input_q'])
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return QTensor(np.clip(q, quant.QMIN, quant.QMAX).astype(np.int32), scale, zp)

  def __call__(self, x) -> QTensor:
    """Normalised float images [N, H, W, C] -> int8 logits (QTensor [N, classes])."""
    return nb201_net.network(self, self.ops, x, self.config)

  def predict(self, x, batch_size=250) -> np.ndarray:
    return np.concatenate([np.argmax(self(x[i:i + batch_size]).q, -1)
                           for i in range(0, len(x), batch_size)])

  # -------------------------------------------------------------------------- flash

  def weight_counts(self) -> dict[str, int]:
    """int8 weight and int32 bias element counts: conv + dense (what `hardware` counts as
    weights and biases) and the head BN's depthwise affine (which it does not)."""
    conv_dense = {k: v for k, v in self.layers.items() if k != 'head_bn'}
    head = self.layers['head_bn']
    return dict(
        weights=int(sum(v.weight.size for v in conv_dense.values())),
        biases=int(sum(v.bias.size for v in conv_dense.values() if v.bias is not None)),
        head_bn_weights=int(head.weight.size), head_bn_biases=int(head.bias.size))

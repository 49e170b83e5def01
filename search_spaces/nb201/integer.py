"""Integer-only reference inference of a quantized NB201 network (`search_spaces.nb201.qat`).

Everything after the input quantization is integer arithmetic as TFLite-Micro's int8 reference
kernels do it: int8 x int8 products accumulated in int32 with the int32 bias, then
`quant.requantize` (Q31 fixed-point multiplier + shift, rounding, zero point, saturation).
Node sums are chains of TFLite's two-input ADD (inputs shifted left by 20 bits and rescaled to a
common scale 2 * max(input scales) before one final requantization; partial sums are int8
tensors with their own ranges); average pools, the global one included, divide the int32 window
sum with rounding half away from zero on the input's grid; ReLU is max(q, zero_point). This is the reference the export
step builds on.

Two executions of the same kernels (written once, on numpy or jax arrays):
  * `net(x)`: numpy, eager, layer by layer: the reference, and what the exporter records;
  * `net.logits(x)`: the same walk traced once per arch and batch size and compiled by XLA
    (64-bit integers enabled for the trace only), so the elementwise integer steps fuse and the
    convolutions run as XLA float32 convolutions on both cores. Tests hold it equal to `net(x)`
    bit for bit; int32 overflow, which numpy raises on at once, is collected as flags in the
    compiled code and raised after it.

Exact integer products through float32: int8 activations times int8 weights (|w| <= 127)
summed in float32 are exact while every partial sum is an integer below 2^24, in any
summation order. Longer contractions are split into chunks (numpy: of the im2col matrix
product, `quant.EXACT_F32_TERMS`; XLA: of the input channels, `_xla_int_conv`) summed in int64.
"""
from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from engine import quant
from engine.quant import ROUNDINGS, int_matmul, int_round_div
from search_spaces.nb201.qat import ZERO_QPARAMS, layer_name, partial_sum_name
from search_spaces.kernels import BN_EPS
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import NB201Config

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


def _xla_int_conv(q, zero_point, w, k, stride):
  """Exact integer convolution of (q - zero_point) with w, zero padding k // 2 on every side
  (as `_im2col`), through XLA float32 convolutions: q: [N, H, W, C] int8 values, w: int8 HWIO.

  It convolves q itself (zero-padded) and subtracts zero_point times the sum of the weights
  whose taps fall inside the image (a constant per output position and channel): the same
  integer, but |q| <= 128 halves the largest product against |q - zp| <= 255, so 3x3 convs
  stay exact in one float32 pass up to 114 input channels. Longer contractions are split into
  equal chunks of input channels, summed in int64."""
  max_channels = max(1, ((1 << 24) // (128 * 127)) // (k * k))
  chunks = -(-q.shape[-1] // max_channels)
  size = -(-q.shape[-1] // chunks)
  pad = [(k // 2, k // 2)] * 2
  dims = ('NHWC', 'HWIO', 'NHWC')
  out = None
  for i in range(0, q.shape[-1], size):
    part = jax.lax.conv_general_dilated(
        q[..., i:i + size].astype(jnp.float32), jnp.asarray(w[:, :, i:i + size], jnp.float32),
        (stride, stride), pad, dimension_numbers=dims, precision=jax.lax.Precision.HIGHEST)
    part = part.astype(jnp.int32)  # exact integers below 2^24
    out = part if out is None else out + part
  inside = np.ones((1,) + tuple(q.shape[1:]), np.int64)
  tap_sums = _im2col(inside, k, stride)[0] @ w.reshape(-1, w.shape[-1]).astype(np.int64)
  return out.astype(jnp.int64) - int(zero_point) * tap_sums


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


class IntNetwork(nb201_net.Backend):
  """Integer NB201 network converted from QATNetwork variables (ranges must be calibrated).

  A backend of the one walk `nb201_net.network` (as `QATNetwork` is), on `QTensor`s; layers are
  named as QATNetwork names its submodules (`qat.layer_name`). Layers are converted on first
  use; the constructor runs one image so that `layers` holds every layer.
  """

  def __init__(self, variables, ops, config: NB201Config, rounding: str = 'tflm'):
    # Runtimes differ in how they round (ROUNDINGS); the exported model equals this reference
    # bit for bit in each with the matching setting (docs/deploy.md). The default is the
    # microcontroller runtime's.
    if rounding not in ROUNDINGS:
      raise ValueError(f'unknown rounding {rounding!r}; use one of {", ".join(ROUNDINGS)}')
    self.rounding = rounding
    self.params = jax.tree.map(np.asarray, dict(variables['params']))
    self.stats = jax.tree.map(np.asarray, dict(variables.get('batch_stats', {})))
    self.ranges = jax.tree.map(np.asarray, dict(variables['quant']))
    self.ops = tuple(int(o) for o in ops)
    self.config = config
    self.layers: dict[str, IntLayer] = {}
    self._qparams: dict[tuple, tuple[float, int]] = {}
    self._flags = None       # the compiled path's overflow flags (`quant.multiply_by_...`)
    self._compiled = {}      # batch size -> compiled `logits`
    self(np.zeros((1, config.input_size, config.input_size, config.in_channels), np.float32))

  # -------------------------------------------------------------------------- conversion

  def _layer(self, name, kind, t: QTensor, stride=1) -> IntLayer:
    if name in self.layers:
      return self.layers[name]
    p = self.params[name]
    out_scale, out_zp = self._range_qparams(name, 'out_q')
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

  def _range_qparams(self, name, key=None) -> tuple[float, int]:
    """(scale, zero point) of a tracked range, as Python numbers, computed once (eagerly: the
    compiled path reads them as constants)."""
    cache_key = (name, key)
    if cache_key not in self._qparams:
      ranges = self.ranges[name] if key is None else self.ranges[name][key]
      self._qparams[cache_key] = _qparams(ranges)
    return self._qparams[cache_key]

  # -------------------------------------------------------------------------- int kernels
  # numpy or jax arrays (`self.xp`); the layers' constants are numpy either way.

  xp = np

  def _single(self, kind) -> bool:
    table = ROUNDINGS[self.rounding]
    return table.get(kind, table['*'])

  def _requantize(self, acc, kind, layer_or_multiplier, shift=None, zero_point=None):
    if isinstance(layer_or_multiplier, IntLayer):
      l = layer_or_multiplier
      layer_or_multiplier, shift, zero_point = l.multiplier, l.shift, l.out_zero_point
    out = quant.requantize(acc, layer_or_multiplier, shift, zero_point,
                           single_rounding=self._single(kind), flags=self._flags)
    return out.astype(np.int32)

  def _conv(self, name, t: QTensor, k, stride=1) -> QTensor:
    layer = self._layer(name, 'conv', t, stride)
    if self.xp is np:
      cols = _im2col((t.q - t.zero_point).astype(np.float32), k, stride)
      acc = int_matmul(cols.reshape(-1, cols.shape[-1]),
                       layer.weight.reshape(-1, layer.weight.shape[-1]))
      acc = acc.reshape(cols.shape[:3] + (-1,))
    else:
      acc = _xla_int_conv(t.q, t.zero_point, layer.weight, k, stride)
    if layer.bias is not None:
      acc = acc + layer.bias
    return QTensor(self._requantize(acc, 'conv', layer), layer.out_scale, layer.out_zero_point)

  def _affine(self, name, t: QTensor) -> QTensor:
    layer = self._layer(name, 'affine', t)
    acc = (t.q.astype(np.int64) - t.zero_point) * layer.weight + layer.bias
    return QTensor(self._requantize(acc, 'affine', layer), layer.out_scale, layer.out_zero_point)

  def _dense(self, name, t: QTensor) -> QTensor:
    layer = self._layer(name, 'dense', t)
    acc = int_matmul(t.q - t.zero_point, layer.weight) + layer.bias
    return QTensor(self._requantize(acc, 'dense', layer), layer.out_scale, layer.out_zero_point)

  def _add(self, name, terms: list[QTensor]) -> QTensor:
    """An n-term node sum as n - 1 binary ADDs, partial sums quantized (`partial_sum_name`)."""
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
      total = self._add2(name if i == len(terms) - 1 else partial_sum_name(name, i), total, t)
    return total

  def _add2(self, name, a: QTensor, b: QTensor) -> QTensor:
    """TFLite int8 ADD: rescale both inputs to 2 * max(scale) at 20 extra bits, add, requantize."""
    out_scale, out_zp = self._range_qparams(name)
    twice_max = 2 * max(a.scale, b.scale)
    total = 0
    for t in (a, b):
      m, s = quant.quantize_multiplier(t.scale / twice_max)
      shifted = (t.q.astype(np.int64) - t.zero_point) << quant.ADD_LEFT_SHIFT
      total = total + quant.multiply_by_quantized_multiplier(shifted, m, s, self._single('add'),
                                                             self._flags)
    m, s = quant.quantize_multiplier(twice_max / ((1 << quant.ADD_LEFT_SHIFT) * out_scale))
    return QTensor(self._requantize(total, 'add', m, s, out_zp), out_scale, out_zp)

  def _avg_pool_3x3(self, t: QTensor) -> QTensor:
    """3x3, stride 1, padding 1 not counted; same scale and zero point in and out."""
    n, h, w, c = t.q.shape
    padded = self.xp.pad(t.q.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    total = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    ones = np.pad(np.ones((h, w), np.int64), 1)
    count = sum(ones[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return QTensor(int_round_div(total, count[None, :, :, None]).astype(np.int32), t.scale,
                   t.zero_point)

  @staticmethod
  def _avg_pool_2x2(t: QTensor) -> QTensor:
    n, h, w, c = t.q.shape
    total = t.q.astype(np.int64).reshape(n, h // 2, 2, w // 2, 2, c).sum((2, 4))
    return QTensor(int_round_div(total, 4).astype(np.int32), t.scale, t.zero_point)

  @staticmethod
  def _global_avg_pool(t: QTensor) -> QTensor:
    """TFLite's AVERAGE_POOL_2D over the whole map: same grid in and out, [N, H, W, C] -> [N, C]."""
    total = t.q.astype(np.int64).sum((1, 2))
    return QTensor(int_round_div(total, t.q.shape[1] * t.q.shape[2]).astype(np.int32), t.scale,
                   t.zero_point)

  # -------------------------------------------------------------------------- the walk's backend

  def input(self, x) -> QTensor:
    return x if isinstance(x, QTensor) else self.quantize_input(x)

  def conv(self, t, path, features, k, stride=1, bn=True):
    return self._conv(layer_name(path), t, k, stride)

  def relu(self, t: QTensor, path) -> QTensor:
    return QTensor(self.xp.maximum(t.q, t.zero_point), t.scale, t.zero_point)

  def pool(self, t, path, size):
    return self._avg_pool_3x3(t) if size == 3 else self._avg_pool_2x2(t)

  def add(self, terms, path, like):
    """Node sum: none -> constant zeros (ZERO_QPARAMS), one -> alias, more -> int8 ADD."""
    if not terms:
      scale, zp = ZERO_QPARAMS
      if self.xp is np:
        return QTensor(np.full_like(like.q, int(zp)), scale, int(zp))
      # compiled: one image's worth, broadcast by whatever reads it, so that XLA's constant
      # folding of the convs that read it works on one image, not on the batch
      return QTensor(jnp.full((1,) + like.q.shape[1:], int(zp), like.q.dtype), scale, int(zp))
    return terms[0] if len(terms) == 1 else self._add(layer_name(path), terms)

  def head_bn(self, t, path):
    return self._affine(layer_name(path), t)

  def global_pool(self, t, path):
    return self._global_avg_pool(t)

  def dense(self, t, path, features):
    return self._dense(layer_name(path), t)

  def quantize_input(self, x) -> QTensor:
    """Float (normalised) images -> int8, the only float step (a camera pipeline would fold it)."""
    scale, zp = self._range_qparams('input_q')
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return QTensor(np.clip(q, quant.QMIN, quant.QMAX).astype(np.int32), scale, zp)

  def __call__(self, x) -> QTensor:
    """Normalised float images [N, H, W, C] -> int8 logits (QTensor [N, classes]); numpy,
    eager: the reference."""
    return nb201_net.network(self, self.ops, x, self.config)

  def logits(self, x, batch_size=500) -> np.ndarray:
    """int8 logits [N, classes] of normalised float images, equal bit for bit to `self(x).q`,
    through one XLA program per batch size (the last batch is padded to it)."""
    q = self.quantize_input(np.asarray(x, np.float32))
    n = len(q.q)
    if n == 0:
      return np.zeros((0, self.config.num_classes), np.int8)
    batch_size = min(batch_size, n)
    run = self._compiled.get(batch_size) or self._compile(batch_size, q.scale, q.zero_point)
    self._compiled[batch_size] = run
    parts = []
    for i in range(0, n, batch_size):
      part = q.q[i:i + batch_size]
      pad = batch_size - len(part)
      if pad:
        part = np.concatenate([part, np.full((pad,) + part.shape[1:], q.zero_point, np.int32)])
      with jax.enable_x64(True):
        out, overflow = run(part)
      if bool(overflow):
        raise OverflowError('requantization input overflows int32 in the integer network '
                            f'(images {i} to {i + batch_size - 1})')
      parts.append(np.asarray(out)[:batch_size - pad])
    return np.concatenate(parts).astype(np.int8)

  def _compile(self, batch_size, scale, zero_point):
    fast = copy.copy(self)
    fast.xp = jnp

    def run(q):
      fast._flags = []
      out = nb201_net.network(fast, self.ops, QTensor(q, scale, zero_point), self.config)
      overflow = jnp.any(jnp.stack(fast._flags)) if fast._flags else jnp.zeros((), bool)
      fast._flags = None
      return jnp.broadcast_to(out.q, (q.shape[0],) + out.q.shape[1:]), overflow

    return jax.jit(run)

  def predict(self, x, batch_size=500) -> np.ndarray:
    return np.argmax(self.logits(x, batch_size), -1)

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

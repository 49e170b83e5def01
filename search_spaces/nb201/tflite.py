"""int8 TFLite flatbuffer of a quantized NB201 network, written from its integer reference.

`to_tflite(variables, ops, config)` walks the one network (`nb201_net.network`) with
`IntNetwork`'s integer kernels on one image and records, for every kernel it runs, the stock
TFLite builtin that computes the same thing with the same numbers:

| integer reference           | TFLite builtin                                                  |
|-----------------------------|-----------------------------------------------------------------|
| conv k x k, stride 1        | CONV_2D, SAME padding (k // 2 on every side, as PyTorch)        |
| conv 3x3, stride 2          | PAD (1 on every side, with the input's zero point) + CONV_2D VALID: |
|                             | TFLite's SAME at stride 2 pads 0 before and 1 after, PyTorch 1 and 1 |
| head BN (per-channel affine)| DEPTHWISE_CONV_2D 1x1                                           |
| ReLU                        | RELU (same scale and zero point in and out)                     |
| 3x3 average pool, stride 1  | AVERAGE_POOL_2D 3x3 SAME: TFLite divides by the number of in-bounds |
|                             | elements, which is NB201's count_include_pad=False              |
| 2x2 average pool, stride 2  | AVERAGE_POOL_2D 2x2 VALID                                       |
| global average pool         | AVERAGE_POOL_2D over the whole map, then RESHAPE to [1, C]      |
| node sum, residual add      | ADD, chained for three terms (partial sums are int8 tensors)    |
| classifier                  | FULLY_CONNECTED                                                 |

Every scale, zero point, int8 weight, int32 bias and requantization multiplier is the one
`IntNetwork` computes with, written by `deploy.tflite.ModelBuilder`.
"""
from __future__ import annotations

import numpy as np

from deploy.tflite import ModelBuilder
from search_spaces.nb201 import integer
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import NB201Config
from search_spaces.nb201.integer import QTensor


def _live(t: QTensor) -> bool:
  """Whether a tensor depends on the model input (constants carry no tensor id)."""
  return getattr(t, 'tid', None) is not None


class _Exporter(integer.IntNetwork):
  """`IntNetwork` that records a TFLite op for every integer kernel it runs (batch 1)."""

  def __init__(self, variables, ops, config: NB201Config, rounding='tflm'):
    self.m = None  # not recording while the constructor converts the layers
    super().__init__(variables, ops, config, rounding)
    self.m = ModelBuilder()

  def _new(self, out: QTensor, name) -> QTensor:
    if self.m is not None:
      out.tid = self.m.tensor(out.q.shape, out.scale, out.zero_point, name)
    return out

  def quantize_input(self, x):
    out = self._new(super().quantize_input(x), 'input')
    self.input_tid = getattr(out, 'tid', None)
    return out

  def _conv(self, name, t, k, stride=1):
    out = super()._conv(name, t, k, stride)
    if self.m is None or not _live(t):
      return out
    layer = self.layers[name]
    x = t.tid
    padding = 'same'
    if stride > 1:  # PyTorch's symmetric padding k // 2, as an explicit PAD
      p = k // 2
      padded = (1, t.q.shape[1] + 2 * p, t.q.shape[2] + 2 * p, t.q.shape[3])
      pads = self.m.tensor((4, 2), 0.0, 0, f'{name}/paddings', dtype='int32',
                           data=np.array([[0, 0], [p, p], [p, p], [0, 0]], np.int32))
      y = self.m.tensor(padded, t.scale, t.zero_point, f'{name}/pad')
      self.m.op('PAD', [x, pads], [y])
      x, padding = y, 'valid'
    w = np.transpose(layer.weight, (3, 0, 1, 2))  # HWIO -> OHWI
    ins = [x, *self._weights_and_bias(name, t, layer, w)]
    self._new(out, name)
    self.m.op('CONV_2D', ins, [out.tid], stride=stride, padding=padding)
    return out

  def _weights_and_bias(self, name, t: QTensor, layer, w, axis=0) -> tuple[int, int]:
    """Constant tensors of a layer: int8 weights `w` (already in TFLite's layout, the output
    channel on `axis`) with per-channel scales, and the int32 bias on scale s_in * s_w. A layer
    without bias (the reduction shortcut) gets zeros: LiteRT's CONV_2D rejects an absent bias,
    and adding 0 changes nothing."""
    w_scale = layer.weight_scale
    zeros = np.zeros(len(w_scale))
    wt = self.m.tensor(w.shape, w_scale, zeros, f'{name}/weights', w.astype(np.int8), axis=axis)
    bias = layer.bias if layer.bias is not None else np.zeros(len(w_scale), np.int64)
    bt = self.m.tensor(bias.shape, np.float32(t.scale) * w_scale, zeros, f'{name}/bias',
                       bias.astype(np.int32), 'int32')
    return wt, bt

  def _affine(self, name, t):
    out = super()._affine(name, t)
    if self.m is None or not _live(t):
      return out
    layer = self.layers[name]
    w = layer.weight.reshape(1, 1, 1, -1)
    ins = [t.tid, *self._weights_and_bias(name, t, layer, w, axis=3)]
    self._new(out, name)
    self.m.op('DEPTHWISE_CONV_2D', ins, [out.tid])
    return out

  def _dense(self, name, t):
    out = super()._dense(name, t)
    if self.m is None or not _live(t):
      return out
    layer = self.layers[name]
    w = layer.weight.T  # [in, out] -> TFLite's [out, in]
    ins = [t.tid, *self._weights_and_bias(name, t, layer, w)]
    self._new(out, name)
    self.m.op('FULLY_CONNECTED', ins, [out.tid])
    return out

  def _add2(self, name, a, b):
    out = super()._add2(name, a, b)
    if self.m is not None and (_live(a) or _live(b)):
      ins = [t.tid if _live(t) else self._constant(t, f'{name}/constant') for t in (a, b)]
      self._new(out, name)
      self.m.op('ADD', ins, [out.tid])
    return out

  def _constant(self, t: QTensor, name) -> int:
    """A tensor that does not depend on the input (an op on a node with no live term: a
    conv of zeros is its bias, per channel) as a constant, [1, 1, 1, C] when it is the same at
    every position (ADD broadcasts it), else whole."""
    q = t.q[:1]
    if np.all(q == q[:, :1, :1]):
      q = q[:, :1, :1]
    return self.m.tensor(q.shape, t.scale, t.zero_point, name, q.astype(np.int8))

  def relu(self, t, path):
    out = super().relu(t, path)
    if self.m is not None and _live(t):
      self._new(out, '/'.join(map(str, path)) + '/relu')
      self.m.op('RELU', [t.tid], [out.tid])
    return out

  def pool(self, t, path, size):
    out = super().pool(t, path, size)
    if self.m is not None and _live(t):
      self._new(out, '/'.join(map(str, path)) + '/pool')
      stride, padding = (1, 'same') if size == 3 else (2, 'valid')
      self.m.op('AVERAGE_POOL_2D', [t.tid], [out.tid], size=size, stride=stride,
                padding=padding)
    return out

  def global_pool(self, t, path):
    out = super().global_pool(t, path)
    if self.m is not None and _live(t):
      _, h, w, c = t.q.shape
      pooled = self.m.tensor((1, 1, 1, c), t.scale, t.zero_point, 'gap')
      self.m.op('AVERAGE_POOL_2D', [t.tid], [pooled], size=h, stride=1, padding='valid')
      self._new(out, 'gap/reshape')
      # batch -1: LiteRT may run the model on a resized batch
      shape = self.m.tensor((2,), 0.0, 0, 'gap/shape', np.array([-1, c], np.int32), 'int32')
      self.m.op('RESHAPE', [pooled, shape], [out.tid], shape=(-1, c))
    return out


def to_tflite(variables, ops, config: NB201Config, rounding='tflm',
              description='zeronas-mcu NB201 int8') -> tuple[bytes, integer.IntNetwork]:
  """(flatbuffer bytes of a batch-1 int8 model, the integer reference it equals)."""
  ex = _Exporter(variables, ops, config, rounding)
  x = np.zeros((1, config.input_size, config.input_size, config.in_channels), np.float32)
  out = nb201_net.network(ex, ex.ops, x, config)
  if not _live(out):
    raise ValueError('this arch is disconnected: its logits do not depend on the input (no '
                     'path of non-none ops from input to output), so there is nothing to export')
  return ex.m.pack([ex.input_tid], [out.tid], description), ex

"""The TFLite int8 quantization scheme as pure functions: fake-quant for training, integer math.

Scheme (TFLite / TFLite-Micro int8, Jacob et al. 2018):
  * weights: symmetric, per output channel, int8 in [-127, 127], zero point 0;
  * activations: asymmetric, per tensor, int8 in [-128, 127] with an integer zero point; the
    range always contains 0 so that zero padding and ReLU are exact;
  * biases: int32 with scale = input scale * weight scale (per channel), zero point 0;
  * BatchNorm is folded into the preceding convolution before its weights are quantized;
  * rescaling between scales uses a fixed-point multiplier (int32, Q31) and a power-of-two shift
    (`quantize_multiplier`, `multiply_by_quantized_multiplier`), as TFLite-Micro does.

The fake-quant functions round in the forward pass and pass gradients straight through (inside
the clipping range; zero outside it), so a float model trains against the int8 grid.

Why not a library: AQT (google/aqt, the JAX quantization library) injects quantization into the
operands of dot_general/conv for accelerator training and serving; it has no BatchNorm folding,
no TFLite int32 biases and no TFLite-Micro fixed-point requantization, and the scheme here must
match the integer reference (`engine.quant.graph_int`) in everything
but rounding ties. So it is written out (about a hundred lines).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

QMIN, QMAX = -128, 127          # int8 activations
WMAX = 127                      # int8 weights: symmetric [-127, 127] (TFLite leaves out -128)
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1
EPS = 1e-8                      # smallest scale, for all-zero tensors and channels


# ----------------------------------------------------------------------------- fake quant

@jax.custom_vjp
def _round_ste(x):
  return jnp.round(x)


_round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def fake_quant(x, scale, zero_point, qmin=QMIN, qmax=QMAX):
  """Quantize-dequantize on the grid scale * (q - zero_point), q in [qmin, qmax].

  Straight-through: the gradient is 1 where x lies inside the representable range and 0 where
  it was clipped (so clipped activations stop pulling the range outwards through the weights).
  `scale`/`zero_point` broadcast against x (per-tensor scalars or per-channel vectors) and get
  no gradient: ranges are tracked, not learned.
  """
  scale = jax.lax.stop_gradient(scale)
  zero_point = jax.lax.stop_gradient(zero_point)
  q = _round_ste(x / scale) + zero_point
  q = jnp.clip(q, qmin, qmax)  # clip's gradient is 0 outside [qmin, qmax]: the clipped STE
  return (q - zero_point) * scale


def activation_qparams(lo, hi):
  """Per-tensor asymmetric (scale, zero_point) for the float range [lo, hi], as TFLite nudges it.

  The range is widened to contain 0 and the zero point is rounded to an integer in [-128, 127],
  so that real 0 is exactly representable.
  """
  lo = jnp.minimum(lo, 0.0)
  hi = jnp.maximum(hi, 0.0)
  scale = jnp.maximum((hi - lo) / (QMAX - QMIN), EPS)
  zero_point = jnp.clip(jnp.round(QMIN - lo / scale), QMIN, QMAX)
  return scale, zero_point


def weight_scales(w, axis=-1):
  """Per-output-channel symmetric scales max|w| / 127, the channel axis being `axis`."""
  reduce = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
  return jnp.maximum(jnp.max(jnp.abs(w), axis=reduce) / WMAX, EPS)


def fake_quant_weights(w, axis=-1):
  """Per-channel symmetric int8 fake-quant of a kernel (HWIO or [in, out]); returns (w, scales)."""
  s = weight_scales(jax.lax.stop_gradient(w), axis)
  shape = [1] * w.ndim
  shape[axis] = -1
  return fake_quant(w, s.reshape(shape), 0.0, -WMAX, WMAX), s


def fake_quant_bias(b, scale):
  """int32 bias on the grid scale = input scale * weight scale (TFLite's bias scale)."""
  return fake_quant(b, scale, 0.0, INT32_MIN, INT32_MAX)


def fold_batch_norm(kernel, gamma, beta, mean, var, eps):
  """Conv(x, k) then BN(mean, var) == Conv(x, k * a) + (beta - mean * a), a = gamma/sqrt(var+eps).

  The kernel's last axis is the output channel. Returns (folded kernel, folded bias).
  """
  a = gamma * jax.lax.rsqrt(var + eps)
  return kernel * a, beta - mean * a


def update_range(lo, hi, count, x, momentum):
  """Tracked activation range: the running mean of batch min/max for the first 1/(1-momentum)
  batches (so a few calibration batches weigh equally), an EMA with `momentum` after that."""
  rate = jnp.maximum(1.0 / (count + 1.0), 1.0 - momentum)
  x = jax.lax.stop_gradient(x)
  return lo + rate * (jnp.min(x) - lo), hi + rate * (jnp.max(x) - hi), count + 1.0


# ----------------------------------------------------------------------------- integer math

def quantize(x, scale, zero_point, qmin=QMIN, qmax=QMAX, dtype=np.int8):
  """Float -> integer on the grid (numpy, round half to even like the fake-quant)."""
  q = np.round(np.asarray(x, np.float64) / scale) + zero_point
  return np.clip(q, qmin, qmax).astype(dtype)


def quantize_multiplier(m):
  """Real multiplier(s) m > 0 -> (int32 Q31 significand in [2^30, 2^31), shift), m ~ q * 2^shift.

  TFLite's QuantizeMultiplier: frexp, round the significand to 31 bits, renormalise on overflow.
  Vectorised over numpy arrays (per-channel multipliers).
  """
  m = np.asarray(m, np.float64)
  if np.any(m <= 0):
    raise ValueError('requantization multipliers must be positive')
  frac, shift = np.frexp(m)
  q = np.round(frac * (1 << 31)).astype(np.int64)
  over = q == (1 << 31)
  q = np.where(over, q // 2, q)
  shift = np.where(over, shift + 1, shift)
  return q.astype(np.int64), shift.astype(np.int64)


def _namespace(x):
  """numpy for numpy inputs, jax.numpy for jax arrays and tracers (the integer kernels run in
  both: numpy is the reference, XLA the fast path, `engine.quant.graph_int`)."""
  if isinstance(x, jax.Array):
    if not jax.config.jax_enable_x64:
      raise RuntimeError('integer kernels on jax arrays need 64-bit types: run them inside '
                         '`with jax.enable_x64(True):`')
    return jnp
  return np


def _int32_overflow(v, what, flags):
  """numpy: raise on values outside int32; jax (no exceptions in compiled code): append a
  boolean to `flags` for the caller to raise on."""
  if isinstance(v, jax.Array):
    if flags is None:
      raise ValueError('integer kernels on jax arrays cannot raise on int32 overflow: pass '
                       'flags=[] and check the flags they append')
    flags.append(jnp.any((v > INT32_MAX) | (v < -INT32_MAX)))
  elif v.size and (v.max() > INT32_MAX or v.min() < -INT32_MAX):
    raise OverflowError(f'requantization input overflows int32{what}')


def multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding=True, flags=None):
  """int32 x times the real number multiplier * 2^(shift - 31), as TFLite-Micro computes it.

  single_rounding=True is TFLite's TFLITE_SINGLE_ROUNDING path (CMSIS-NN has the same option):
  one 64-bit product, rounded half up once; LiteRT's desktop XNNPACK kernels compute this.
  False is the default gemmlowp path: a rounding doubling high multiply (round(x * m / 2^31),
  ties away from zero), then a rounding right shift (ties away from zero); TFLite Micro's
  reference kernels (the `tflite-micro` build) compute this. The two differ by one step on a
  few values, and such steps compound through a deep network, so the integer reference takes
  the setting of the runtime it is checked against.

  Branch-free on int64, numpy or jax arrays (multiplier and shift are numpy constants). With
  s = sign mask (0 or -1) of the product p, (|p| + 2^30 + s) >> 31 is C++'s truncating
  division of (p + nudge) by 2^31 for either sign; (v + 2^(e-1) - [v < 0]) >> e rounds a
  right shift half away from zero (an arithmetic shift floors). Multipliers are positive, so
  gemmlowp's one saturating case (both factors INT32_MIN) cannot occur. Values outside int32
  raise in numpy and are flagged into `flags` in jax.
  """
  xp = _namespace(x)
  x = xp.asarray(x, xp.int64)
  multiplier = np.asarray(multiplier, np.int64)
  shift = np.asarray(shift, np.int64)
  if np.any(multiplier <= 0):
    raise ValueError('requantization multipliers must be positive')
  _int32_overflow(x, '', flags)
  if single_rounding:
    total = 31 - shift
    return (x * multiplier + (np.int64(1) << (total - 1))) >> total
  left = np.maximum(shift, 0)
  right = np.maximum(-shift, 0)
  if np.any(left):
    x = x << left
    _int32_overflow(x, ' after the left shift', flags)
  v = x * multiplier
  sign = v >> 63
  high = ((v ^ sign) + (1 << 30)) >> 31  # v ^ s == |v| + s
  high = (high ^ sign) - sign
  half = (np.int64(1) << right) >> 1
  negative_and_shifted = (high >> 63) & -(right > 0).astype(np.int64)
  return (high + half + negative_and_shifted) >> right


def requantize(acc, multiplier, shift, zero_point, qmin=QMIN, qmax=QMAX, single_rounding=True,
               flags=None):
  """int32 accumulator -> int8 output: scale by the fixed-point multiplier, add the zero point,
  saturate (numpy or jax arrays, like `multiply_by_quantized_multiplier`)."""
  out = multiply_by_quantized_multiplier(acc, multiplier, shift, single_rounding, flags)
  out = out + zero_point
  return _namespace(out).clip(out, qmin, qmax).astype(np.int8)


# ---------------------------------------------------------------- integer kernels
# of the integer reference (`engine.quant.graph_int`)

ADD_LEFT_SHIFT = 20  # TFLite int8 ADD

# How each runtime rounds its requantizations (`quant.multiply_by_quantized_multiplier`):
# kernel kind -> single rounding? ('*': every kind not named). Measured on exported models
# (docs/deploy.md): TFLite Micro rounds twice everywhere (gemmlowp); LiteRT's reference kernels
# (`OpResolverType.BUILTIN_REF`) twice except its per-channel FULLY_CONNECTED, which rounds
# once; 'single' (TFLITE_SINGLE_ROUNDING builds; LiteRT's default XNNPACK kernels on small
# networks, not on large ones, whose fp32 requantization no integer rounding reproduces).
ROUNDINGS = {
    'tflm': {'*': False},
    'litert_reference': {'*': False, 'dense': True},
    'single': {'*': True},
}


# Terms of an int8 x (int8 - zero point) dot product whose float32 sum stays exact: every
# partial sum is an integer of magnitude below 2^24.
EXACT_F32_TERMS = (1 << 24) // (255 * 127)


def int_matmul(a, b):
  """Exact integer a @ b for integer-valued operands (|a| <= 255, |b| <= 127) through float32
  BLAS, the contraction split into chunks short enough to stay exact, summed in int64."""
  xp = _namespace(a)
  a = xp.asarray(a, np.float32)  # no copy when it is float32 already (the im2col matrix)
  b = np.asarray(b, np.float32)
  k = a.shape[-1]
  out = None
  for i in range(0, k, EXACT_F32_TERMS):
    part = xp.rint(a[..., i:i + EXACT_F32_TERMS] @ b[i:i + EXACT_F32_TERMS]).astype(np.int64)
    out = part if out is None else out + part
  return out


def int_round_div(total, count):
  """TFLite's int average: divide with rounding half away from zero."""
  xp = _namespace(total)
  return xp.where(total >= 0, (total + count // 2) // count, -((-total + count // 2) // count))

"""Tests of the int8 scheme: fake-quant, BN folding, scales, requantization, integer inference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import quant
from search_spaces import nb201
from search_spaces.nb201 import integer
from search_spaces.nb201 import qat

ARCH_6111 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|'
# node 1 gets only 'none': a constant-zero node whose convs see zeros (the zero-tensor path)
ARCH_ZERO_NODE = '|none~0|+|skip_connect~0|nor_conv_3x3~1|+|nor_conv_1x1~0|avg_pool_3x3~1|none~2|'
TINY = nb201.NB201Config(C=4, N=1, input_size=8)


def _apply(ops, mode, variables, x, **kw):
  """Jitted apply: one compile beats hundreds of eagerly dispatched small ops."""
  model = qat.QATNetwork(tuple(ops), TINY, mode)
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def test_fake_quant_rounds_to_nearest_grid_point_and_clips():
  scale, zp = 0.5, 3.0
  x = jnp.array([0.0, 0.24, 0.26, -1.1, 1.0, 100.0, -100.0])
  y = quant.fake_quant(x, scale, zp)
  # q = round(x / 0.5) + 3 clipped to [-128, 127]; back to (q - 3) * 0.5
  np.testing.assert_allclose(y, [0.0, 0.0, 0.5, -1.0, 1.0, (127 - 3) * 0.5, (-128 - 3) * 0.5])
  grid = (jnp.arange(-128, 128) - zp) * scale
  np.testing.assert_array_equal(quant.fake_quant(grid, scale, zp), grid)  # idempotent on the grid


def test_fake_quant_gradient_is_straight_through_inside_range_only():
  g = jax.grad(lambda x: jnp.sum(quant.fake_quant(x, 0.1, 0.0)))(jnp.array([0.123, -3.0, 50.0]))
  np.testing.assert_array_equal(g, [1.0, 1.0, 0.0])  # 50 / 0.1 = 500 is clipped to 127


def test_activation_qparams_represent_zero_exactly():
  for lo, hi in [(-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5), (0.0, 0.0)]:
    scale, zp = quant.activation_qparams(jnp.float32(lo), jnp.float32(hi))
    assert float(zp) == round(float(zp)) and quant.QMIN <= float(zp) <= quant.QMAX
    assert float(quant.fake_quant(jnp.float32(0.0), scale, zp)) == 0.0
    # the (widened) range is covered to within one step
    assert float(quant.fake_quant(jnp.float32(min(lo, 0.0)), scale, zp)) == pytest.approx(
        min(lo, 0.0), abs=float(scale))
  scale, zp = quant.activation_qparams(jnp.float32(0.2), jnp.float32(5.0))
  assert float(zp) == quant.QMIN and float(scale) == pytest.approx(5.0 / 255)


def test_per_channel_weight_scales():
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 5)) * jnp.array([1e-3, 0.1, 1.0, 10.0, 0.0])
  wq, s = quant.fake_quant_weights(w)
  assert s.shape == (5,)
  np.testing.assert_allclose(s[:4], jnp.max(jnp.abs(w[..., :4]), (0, 1, 2)) / 127, rtol=1e-6)
  q = wq[..., :4] / s[:4]
  np.testing.assert_allclose(q, jnp.round(q), atol=1e-3)           # integers
  np.testing.assert_allclose(jnp.max(jnp.abs(q), (0, 1, 2)), 127, atol=1e-3)  # max hits 127
  assert jnp.all(wq[..., 4] == 0)                                    # all-zero channel survives
  # every channel keeps ~7 bits of its own range: a per-tensor scale would zero the small one
  rel = jnp.max(jnp.abs(wq - w), (0, 1, 2))[:4] / jnp.max(jnp.abs(w), (0, 1, 2))[:4]
  assert jnp.all(rel <= 0.5 / 127 + 1e-6)


def test_bn_folding_equals_conv_then_bn():
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(k1, (2, 8, 8, 3))
  kernel = jax.random.normal(k2, (3, 3, 3, 6))
  gamma, beta, mean, var = jax.random.uniform(k3, (4, 6), minval=0.5, maxval=2.0)
  y = qat.conv2d(x, kernel)
  ref = (y - mean) / jnp.sqrt(var + 1e-5) * gamma + beta
  w, b = quant.fold_batch_norm(kernel, gamma, beta, mean, var, 1e-5)
  np.testing.assert_allclose(qat.conv2d(x, w) + b, ref, rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _variables(arch: str):
  """Variables of a tiny network with non-trivial BN running statistics (a few fp32 train-mode
  passes) and activation ranges calibrated on the inputs `_inputs` draws; cached per arch."""
  ops = nb201.parse_arch_str(arch)
  v = qat.init_variables(jax.random.key(0), ops, TINY)
  model = qat.QATNetwork(tuple(ops), TINY, 'fp32')
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1])
  for i in range(3):
    v = {**v, 'batch_stats': step(v, _inputs(16, seed=10 + i))['batch_stats']}
  x = _inputs(64)
  return ops, qat.calibrate(v, ops, TINY, [x[:32], x[32:]])


def _inputs(n, seed=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 8, 8, 3)) * 2 + 0.5).astype(np.float32)


def test_folded_network_equals_fp32_network():
  ops, v = _variables(ARCH_6111)
  x = _inputs(8, seed=5)
  fp32 = _apply(ops, 'fp32', v, x)
  folded = _apply(ops, 'folded', v, x)
  np.testing.assert_allclose(folded, fp32, rtol=1e-4, atol=1e-4)


def test_quantize_multiplier_represents_the_real_multiplier():
  m = np.array([1e-6, 3.7e-4, 0.01, 0.4999, 0.5, 0.99999999999, 1.0, 3.0, 1234.5])
  q, shift = quant.quantize_multiplier(m)
  assert np.all((q >= 2 ** 30) & (q < 2 ** 31))
  np.testing.assert_allclose(q * 2.0 ** (shift - 31), m, rtol=2 ** -30)


@pytest.mark.parametrize('single_rounding', [True, False])
def test_requantization_matches_float_reference(single_rounding):
  rng = np.random.default_rng(0)
  acc = rng.integers(-2 ** 20, 2 ** 20, 20000)
  m = np.exp(rng.uniform(np.log(1e-5), np.log(0.5), 20000))
  zp = rng.integers(-20, 20, 20000)
  q, shift = quant.quantize_multiplier(m)
  got = quant.requantize(acc, q, shift, zp, single_rounding=single_rounding).astype(np.int64)
  exact = acc * (q * 2.0 ** (shift - 31))  # the represented multiplier, in float64
  ref = np.clip(np.floor(exact + 0.5) + zp, -128, 127)
  if single_rounding:  # one rounding, half up: bit-exact against float64
    np.testing.assert_array_equal(got, ref)
  else:  # gemmlowp's double rounding: off by one step at some values, never more
    assert np.max(np.abs(got - ref)) <= 1
    assert np.mean(got != ref) < 0.05
  inside = (ref > -128) & (ref < 127)
  assert np.all(np.abs(got - (exact + zp))[inside] <= 0.5 + 1)


def test_int_matmul_is_exact():
  rng = np.random.default_rng(1)
  for k in (72, 2000):  # one float32 chunk, and a contraction split into chunks
    a = rng.integers(-255, 256, (50, k))
    b = rng.integers(-127, 128, (k, 7))
    np.testing.assert_array_equal(quant.int_matmul(a, b), a @ b)


@pytest.mark.parametrize('arch', [ARCH_6111, ARCH_ZERO_NODE])
def test_integer_inference_agrees_with_fake_quant(arch):
  ops, v = _variables(arch)
  x = _inputs(64)
  fq = np.asarray(_apply(ops, 'quant', v, x))
  # rounding once (LiteRT's XNNPACK) is the fake-quant's exact rounding; TFLite Micro's double
  # rounding (the default) moves a few values a step, which a deep network compounds
  tflm = integer.IntNetwork(v, ops, TINY)(x)
  assert np.mean(np.argmax(tflm.q, -1) == np.argmax(fq, -1)) >= 0.9
  net = integer.IntNetwork(v, ops, TINY, rounding='single')
  out = net(x)
  assert out.q.dtype == np.int32 and out.q.min() >= -128 and out.q.max() <= 127
  steps = (out.q - out.zero_point) * out.scale
  # the same int8 logits, but for rare near-ties that float rounding in the fake-quant graph
  # resolves the other way (a one-step difference, which may grow a step downstream)
  assert np.max(np.abs(steps - fq)) <= 2.01 * out.scale
  assert np.mean(np.abs(steps - fq) < out.scale / 2) >= 0.98
  assert np.mean(np.argmax(out.q, -1) == np.argmax(fq, -1)) >= 0.98


@pytest.mark.parametrize('rounding', ['tflm', 'single'])
@pytest.mark.parametrize('arch', [ARCH_6111, ARCH_ZERO_NODE])
def test_compiled_integer_network_equals_the_numpy_reference(arch, rounding):
  ops, v = _variables(arch)
  x = _inputs(70, seed=7)
  net = integer.IntNetwork(v, ops, TINY, rounding=rounding)
  want = net(x).q
  # batch 32 over 70 images: two full batches and a padded last one, one compiled program
  got = net.logits(x, batch_size=32)
  assert got.dtype == np.int8 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(net.predict(x[:5]), np.argmax(want[:5], -1))


@pytest.mark.parametrize('channels,zero_point', [(120, -128), (120, 127), (16, 5)])
def test_xla_int_conv_is_exact(channels, zero_point):
  # 3x3 over 120 input channels is 1,080 terms: two float32 chunks of 60 channels
  rng = np.random.default_rng(2)
  q = rng.integers(-128, 128, (2, 5, 5, channels))
  q[0, :2] = -128  # extreme products
  w = rng.integers(-127, 128, (3, 3, channels, 4)).astype(np.int8)
  w[..., 0] = 127
  with jax.enable_x64(True):
    got = np.asarray(integer._xla_int_conv(jnp.asarray(q), zero_point, w, 3, 2))
  cols = integer._im2col((q - zero_point).astype(np.int64), 3, 2)
  np.testing.assert_array_equal(got, cols @ w.reshape(-1, 4).astype(np.int64))


def test_int32_overflow_raises_in_numpy_and_is_flagged_in_jax():
  m, shift = quant.quantize_multiplier(np.array([0.5]))
  big = np.array([2 ** 31 + 5, 7])
  with pytest.raises(OverflowError, match='overflows int32'):
    quant.requantize(big, m, shift, 0)
  flags = []
  with jax.enable_x64(True):
    quant.requantize(jnp.asarray(big), m, shift, 0, flags=flags)
    quant.requantize(jnp.asarray(big[1:]), m, shift, 0, flags=flags)
    assert [bool(f) for f in flags] == [True, False]
    with pytest.raises(ValueError, match='flags'):
      quant.requantize(jnp.asarray([1, 2]), m, shift, 0)
  with pytest.raises(RuntimeError, match='enable_x64'):
    quant.requantize(jnp.asarray([1, 2]), m, shift, 0, flags=[])


@pytest.mark.parametrize('arch', [ARCH_6111, ARCH_ZERO_NODE])
def test_int8_weight_bytes_equal_hardware_model(arch):
  from hardware import graph as graph_lib
  from search_spaces.nb201 import graph as nb201_graph
  ops, v = _variables(arch)
  net = integer.IntNetwork(v, ops, TINY)
  counts = net.weight_counts()
  stats = graph_lib.node_stats(nb201_graph.lower(ops, TINY))
  # conv + dense int8 weights (1 byte each) and int32 biases: exactly the hardware model's,
  # except for convs whose input is a constant zero node, which its lowering drops as dead code
  # (ARCH_ZERO_NODE: edge 2's 3x3 conv on the empty node 1, in each of the 3 cells)
  dead = sum((TINY.C * 2 ** s) ** 2 * 9 for s in range(3)) if arch == ARCH_ZERO_NODE else 0
  dead_biases = sum(TINY.C * 2 ** s for s in range(3)) if arch == ARCH_ZERO_NODE else 0
  assert counts['weights'] == int(stats.weights.sum()) + dead
  assert counts['biases'] == int(stats.biases.sum()) + dead_biases
  # the head BN (no conv to fold into) is a depthwise affine the hardware model leaves out
  assert counts['head_bn_weights'] == counts['head_bn_biases'] == TINY.C * 4
  assert all(l.weight.dtype == np.int8 for l in net.layers.values())
  assert all(l.bias is None or l.bias.dtype == np.int64 for l in net.layers.values())


def _gemmlowp_scalar(x, m, shift):
  """TFLite's MultiplyByQuantizedMultiplier (double rounding), transcribed line by line."""
  left, right = max(shift, 0), max(-shift, 0)
  ab = (x * (1 << left)) * m
  nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
  v = ab + nudge
  high = v // (1 << 31) if v >= 0 else -((-v) // (1 << 31))  # C++ truncates
  mask = (1 << right) - 1
  threshold = (mask >> 1) + (1 if high < 0 else 0)
  return (high >> right) + (1 if (high & mask) > threshold else 0)


def test_branch_free_double_rounding_equals_the_scalar_definition():
  rng = np.random.default_rng(5)
  x = np.concatenate([np.arange(-40, 40), rng.integers(-2 ** 22, 2 ** 22, 3000)])
  m, shift = quant.quantize_multiplier(rng.uniform(1e-6, 4.0, 6))
  got = quant.multiply_by_quantized_multiplier(x[:, None], m, shift, single_rounding=False)
  want = np.array([[_gemmlowp_scalar(int(v), int(mm), int(s)) for mm, s in zip(m, shift)]
                   for v in x])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('k,stride,size', [(3, 1, 8), (3, 2, 8), (1, 1, 8), (5, 2, 7)])
def test_im2col_equals_padded_slices(k, stride, size):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = (size + 2 * pad - k) // stride + 1
  want = np.concatenate([xp[:, dy:dy + stride * (out - 1) + 1:stride,
                            dx:dx + stride * (out - 1) + 1:stride]
                         for dy in range(k) for dx in range(k)], axis=-1)
  np.testing.assert_array_equal(integer._im2col(x, k, stride), want)

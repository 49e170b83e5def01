"""Tests of the int8 scheme: fake-quant, BN folding, scales, requantization, integer inference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.quant import graph_int
from engine.quant import graph_qat
from engine.quant import quant
from hardware import graph as graph_lib
from search_spaces import kernels
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from search_spaces.nb201 import space as nb201_space

ARCH_6111 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|'
# node 1 gets only 'none': a constant-zero node whose convs see zeros (the zero-tensor path)
ARCH_ZERO_NODE = '|none~0|+|skip_connect~0|nor_conv_3x3~1|+|nor_conv_1x1~0|avg_pool_3x3~1|none~2|'
TINY = nb201.NB201Config(C=4, N=1, input_size=8)
# node 1 gets only 'none' and feeds two 3x3 convs: constants of the ADDs of nodes 2 and 3
ARCH_CONST_CONVS = ('|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|'
                    'nor_conv_3x3~2|')


@functools.lru_cache(maxsize=None)
def _graph(arch: str):
  """NB201's graph of `arch` at TINY, its constants kept: what trains and exports."""
  return nb201_graph.train_graph(nb201.parse_arch_str(arch), TINY, name=arch)


def _model(arch, mode):
  return graph_qat.GraphNetwork(_graph(arch), mode, nb201_space.TRAIN_INITS)


def _apply(arch, mode, variables, x, **kw):
  """Jitted apply: one compile beats hundreds of eagerly dispatched small ops."""
  model = _model(arch, mode)
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
  y = kernels.conv(x, kernel, 1)
  ref = (y - mean) / jnp.sqrt(var + 1e-5) * gamma + beta
  w, b = quant.fold_batch_norm(kernel, gamma, beta, mean, var, 1e-5)
  np.testing.assert_allclose(kernels.conv(x, w, 1) + b, ref, rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _variables(arch: str):
  """Variables of a tiny network with non-trivial BN running statistics (a few fp32 train-mode
  passes) and activation ranges calibrated on the inputs `_inputs` draws; cached per arch."""
  graph = _graph(arch)
  v = graph_qat.init_variables(jax.random.key(0), graph, nb201_space.TRAIN_INITS)
  model = _model(arch, 'fp32')
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1])
  for i in range(3):
    v = {**v, 'batch_stats': step(v, _inputs(16, seed=10 + i))['batch_stats']}
  x = _inputs(64)
  return arch, graph_qat.calibrate(v, graph, [x[:32], x[32:]])


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
  tflm = graph_int.IntGraph(v, _graph(arch)).reference_logits(x)
  assert np.mean(np.argmax(tflm, -1) == np.argmax(fq, -1)) >= 0.9
  net = graph_int.IntGraph(v, _graph(arch), rounding='single')
  out = net.reference_logits(x)
  scale, zero_point = net.act(len(net.graph.nodes) - 1)
  assert out.dtype == np.int8
  steps = (out.astype(np.int32) - zero_point) * scale
  # the same int8 logits, but for rare near-ties that float rounding in the fake-quant graph
  # resolves the other way (a one-step difference, which may grow a step or two downstream;
  # on this draw of weights 14 of 640 logits, the largest by 3 steps)
  assert np.max(np.abs(steps - fq)) <= 3.01 * scale
  assert np.mean(np.abs(steps - fq) < scale / 2) >= 0.97
  assert np.mean(np.argmax(out, -1) == np.argmax(fq, -1)) >= 0.98


@pytest.mark.parametrize('rounding', ['tflm', 'single'])
@pytest.mark.parametrize('arch', [ARCH_6111, ARCH_ZERO_NODE])
def test_compiled_integer_network_equals_the_numpy_reference(arch, rounding):
  ops, v = _variables(arch)
  x = _inputs(70, seed=7)
  net = graph_int.IntGraph(v, _graph(arch), rounding=rounding)
  want = net.reference_logits(x)
  # batch 32 over 70 images: two full batches and a padded last one, one compiled program
  got = net.logits(x, batch_size=32)
  assert got.dtype == np.int8 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(net.predict(x[:5]), np.argmax(want[:5], -1))


def _conv_node(op, channels, padding, stride=2, k=3, size=5):
  out = -(-size // stride) if padding == 'same' else (
      (size + 2 * (k // 2) - k) // stride + 1 if padding == 'symmetric' else (size - k) // stride + 1)
  return graph_lib.Node('c', op, (0,), (out, out, 4 if op == 'conv2d' else channels), (k, k),
                        (stride, stride), padding=padding)


@pytest.mark.parametrize('op,channels,zero_point,padding', [
    ('conv2d', 120, -128, 'symmetric'), ('conv2d', 120, 127, 'same'), ('conv2d', 16, 5, 'valid'),
    ('depthwise_conv2d', 16, -7, 'same'), ('depthwise_conv2d', 8, 127, 'symmetric')])
def test_xla_int_conv_is_exact(op, channels, zero_point, padding):
  # 3x3 over 120 input channels is 1,080 terms: two float32 chunks of 60 channels
  rng = np.random.default_rng(2)
  q = rng.integers(-128, 128, (2, 5, 5, channels))
  q[0, :2] = -128  # extreme products
  node = _conv_node(op, channels, padding)
  c_out = node.shape[2]
  w = rng.integers(-127, 128, (c_out if op == 'conv2d' else 1, 3, 3,
                               channels if op == 'conv2d' else c_out)).astype(np.int8)
  w[0] = 127
  with jax.enable_x64(True):
    got = np.asarray(graph_int._xla_conv(jnp.asarray(q), zero_point, w, node, (5, 5, channels)))
  win = graph_int._windows((q - zero_point).astype(np.int64), node, (5, 5, channels))
  want = (np.einsum('nhwijc,oijc->nhwo', win, w.astype(np.int64)) if op == 'conv2d' else
          np.einsum('nhwijc,ijc->nhwc', win, w[0].astype(np.int64)))
  np.testing.assert_array_equal(got, want)


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


@pytest.mark.parametrize('arch', [ARCH_6111, ARCH_ZERO_NODE, ARCH_CONST_CONVS])
def test_int8_weight_bytes_equal_hardware_model(arch):
  _, v = _variables(arch)
  net = graph_int.IntGraph(v, _graph(arch))
  counts = net.weight_counts()
  stats = graph_lib.node_stats(nb201_graph.lower(nb201.parse_arch_str(arch), TINY))
  # conv + dense int8 weights (1 byte each) and int32 biases of the layers that run: exactly the
  # hardware model's (ARCH_ZERO_NODE: edge 2's 3x3 conv on the empty node 1 feeds node 2, which
  # reaches nothing, so it is not in the graph; the pool of node 1 is, as a constant.
  # ARCH_CONST_CONVS: the convs of node 1 are in it, as constants, which store no weights)
  assert counts['weights'] == int(stats.weights.sum())
  assert counts['biases'] == int(stats.biases.sum())
  assert all(net.live) == (arch == ARCH_6111)
  constant_layers = sum(not net.live[i] for i in net.layers)
  assert constant_layers == (3 * 2 if arch == ARCH_CONST_CONVS else 0)
  # the head BN (no conv to fold into) is a depthwise affine the hardware model leaves out
  assert counts['batchnorm_affine'] == {'weights': TINY.C * 4, 'biases': TINY.C * 4}
  assert all(l.weight.dtype == np.int8 for l in net.layers.values())
  assert all(l.bias.dtype == np.int32 for l in net.layers.values())


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
@pytest.mark.parametrize('padding', ['symmetric', 'same'])
def test_windows_equal_padded_slices(k, stride, size, padding):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  if padding == 'symmetric':  # PyTorch's k // 2 on every side
    before = after = k // 2
  else:  # TF's SAME: the odd one after
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    before, after = total // 2, total - total // 2
  xp = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
  out = (size + before + after - k) // stride + 1
  want = np.stack([xp[:, dy:dy + stride * (out - 1) + 1:stride,
                      dx:dx + stride * (out - 1) + 1:stride]
                   for dy in range(k) for dx in range(k)], axis=3)
  node = _conv_node('conv2d', 3, padding, stride, k, size)
  assert node.shape[:2] == (out, out)
  got = graph_int._windows(x, node, (size, size, 3))
  np.testing.assert_array_equal(got.reshape(2, out, out, k * k, 3), want)

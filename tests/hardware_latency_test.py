"""Latency/energy: gradients vs finite differences, batching, calibration, registries."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hardware
from hardware import devices
from hardware import graph as G
from hardware import latency
from hardware import template as T
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from search_spaces import tinycnn

SMALL = nb201.NB201Config(C=4, N=1, input_size=8)


def _soft_cost_fn(key, t, device='stm32f746', runtime='cmsis-nn'):
  dev, rt = hardware.get_device(device), hardware.get_runtime(runtime)
  cycles = jnp.asarray(devices.coefficients(dev, rt), jnp.float32)

  def f(gates=None, widths=None):
    return hardware._single_cost(t, dev, rt, gates, widths, cycles)[key]

  return jax.jit(f)


def _directional_fd(f, x, v, eps):
  return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize('key', ['latency_ms', 'energy_mj', 'flash_bytes', 'macs'])
def test_gate_gradient_matches_finite_differences(key):
  t = nb201_graph.template(SMALL)
  rng = np.random.default_rng(0)
  gates = jnp.asarray(rng.uniform(0.2, 0.9, 30), jnp.float32)
  f = _soft_cost_fn(key, t)
  grad = jax.jit(jax.grad(f))(gates)
  for _ in range(3):
    v = jnp.asarray(rng.normal(size=30), jnp.float32)
    fd = _directional_fd(f, gates, v, 1e-3)
    np.testing.assert_allclose(grad @ v, fd, rtol=2e-2, atol=1e-4 * abs(float(f(gates))))
  assert float(jnp.abs(grad).sum()) > 0


def test_width_gradient_matches_finite_differences():
  t = T.compile_template(tinycnn.width_template(3, (3, 5, 3)))
  widths = jnp.array([0.4, 0.7, 0.55])
  for key in ('latency_ms', 'flash_bytes', 'params', 'sram_bytes'):
    g = _soft_cost_fn(key, t)
    f = lambda w: g(None, w)
    grad = jax.jit(jax.grad(f))(widths)
    fd = np.array([_directional_fd(f, widths, jnp.eye(3)[i], 1e-3) for i in range(3)])
    np.testing.assert_allclose(grad, fd, rtol=2e-2, err_msg=key)
    assert np.all(np.asarray(grad) >= 0), key


def test_width_template_matches_concrete_graph():
  t = tinycnn.width_template(2, (3, 5), 'swish', 'avg')
  soft = hardware.cost(t, widths=np.array([0.5, 0.25]))
  hard = hardware.concrete_cost(tinycnn.lower('f16k3-f8k5-swish-avg'))
  for key in ('latency_ms', 'flash_bytes', 'sram_bytes', 'macs', 'params'):
    np.testing.assert_allclose(soft[key], hard[key], rtol=1e-5, err_msg=key)


class CostVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_batched_cost_equals_single(self):
    t = nb201_graph.template(SMALL)
    dev, rt = hardware.get_device('nrf52840'), hardware.get_runtime('tflm')
    cycles = jnp.asarray(devices.coefficients(dev, rt), jnp.float32)
    fn = self.variant(jax.vmap(lambda g: hardware._single_cost(t, dev, rt, g, None, cycles)))
    gates = jnp.asarray(np.random.default_rng(1).random((4, 30)), jnp.float32)
    out = fn(gates)
    chex.assert_shape(out['latency_ms'], (4,))
    chex.assert_shape(out['features'], (4, len(G.FEATURES)))
    single = hardware._single_cost(t, dev, rt, gates[3], None, cycles)
    np.testing.assert_allclose(out['latency_ms'][3], single['latency_ms'], rtol=1e-5)


def test_energy_is_power_times_latency():
  g = tinycnn.lower('f16k3-relu-max')
  for name in ('stm32f746', 'rp2040', 'esp32-s3'):
    r = hardware.concrete_cost(g, name, 'cmsis-nn')
    power = hardware.get_device(name).active_power_mw
    assert r['energy_mj'] == pytest.approx(r['latency_ms'] * power / 1e3)


def test_optimised_runtimes_are_faster():
  g = tinycnn.lower('f32k5-f32k3-relu-max')
  lat = {rt: hardware.concrete_cost(g, 'nucleo-l4r5zi', rt)['latency_ms']
         for rt in devices.list_runtimes()}
  assert lat['tflm'] > 2 * lat['cmsis-nn'] > 2 * lat['tinyengine'] * 0.5
  assert lat['cmsis-nn'] > lat['x-cube-ai'] > lat['tinyengine']


def test_concrete_cost_equals_jax_cost():
  g = nb201_graph.lower('|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|'
                        'skip_connect~2|', SMALL)
  a, b = hardware.concrete_cost(g), hardware.cost(g)
  for key in hardware.COST_KEYS:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def test_calibration_recovers_known_coefficients():
  rng = np.random.default_rng(0)
  p = len(G.FEATURES)
  true = rng.uniform(0.5, 3.0, p) * np.logspace(0, 3, p)
  features = rng.uniform(0.1, 1.0, (60, p)) * np.logspace(4, 1, p)
  clock = 100.0
  measured = features @ true / (clock * 1e3)
  fitted = latency.calibrate(features, measured, np.ones(p) * true.mean(), clock, steps=3000,
                             learning_rate=0.05)
  np.testing.assert_allclose(fitted, true, rtol=0.03)


def test_fit_shared_recovers_group_scales():
  rng = np.random.default_rng(1)
  coeffs = np.array([1.0, 4.0, 0.5])
  feats = rng.uniform(1, 10, (40, 3))
  groups = np.repeat(np.arange(4), 10)
  scale = np.array([1.0, 2.0, 0.5, 3.0])
  y = scale[groups] * (feats @ coeffs)
  c, s, hist = latency.fit_shared(feats, y, np.ones(3), groups, steps=3000)
  pred = np.asarray(s)[groups] * (feats @ np.asarray(c))
  np.testing.assert_allclose(pred, y, rtol=1e-2)
  assert hist[-1] < hist[0]


def test_calibrate_from_csv(tmp_path):
  graphs = {n: tinycnn.lower(n) for n in ('f8k3-relu-max', 'f32k5-relu-max', 'f16k3-f16k5-swish-avg',
                                          'f32k5-f32k5-f32k5-relu-avg', 'f8k5-f16k3-swish-max')}
  feats = {n: hardware.concrete_cost(g)['features'] for n, g in graphs.items()}
  prior = devices.coefficients('stm32f746', 'cmsis-nn')
  true = prior * 1.7
  path = tmp_path / 'lat.csv'
  path.write_text('model,latency_ms\n' + ''.join(
      f'{n},{float(f @ true) / 216e3}\n' for n, f in feats.items()))
  fitted = latency.calibrate_from_csv(str(path), feats, prior, 216.0, prior_weight=1.0)
  for n, f in feats.items():
    assert float(f @ fitted) == pytest.approx(float(f @ true), rel=0.02)


def test_unknown_names_fail_with_one_line_listing():
  with pytest.raises(ValueError) as e:
    hardware.get_device('arduino-uno')
  msg = str(e.value)
  assert '\n' not in msg and 'stm32f746' in msg and 'rp2040' in msg
  with pytest.raises(ValueError) as e:
    hardware.get_runtime('onnx')
  assert '\n' not in str(e.value) and 'cmsis-nn' in str(e.value) and 'tinyengine' in str(e.value)
  assert hardware.get_device(' STM32F746 ').clock_mhz == 216


def test_catalog_has_required_devices_and_table():
  required = {'stm32f746', 'stm32h743', 'stm32h7a3', 'nucleo-l4r5zi', 'nrf52840', 'rp2040',
              'esp32-s3'}
  assert required <= set(devices.list_devices())
  assert {'tflm', 'cmsis-nn', 'x-cube-ai', 'tinyengine', 'zeronas-c'} == set(devices.list_runtimes())
  table = devices.list_devices_table()
  for name in required:
    assert name in table
  f7 = hardware.get_device('stm32f746')
  assert (f7.core, f7.clock_mhz, f7.sram_kb, f7.flash_kb) == ('cortex-m7', 216, 320, 1024)
  l4 = hardware.get_device('nucleo-l4r5zi')
  assert (l4.core, l4.clock_mhz, l4.sram_kb, l4.flash_kb) == ('cortex-m4', 120, 640, 2048)
  assert hardware.get_device('rp2040').core == 'cortex-m0plus'

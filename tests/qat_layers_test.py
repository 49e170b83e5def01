"""The quantization-aware layers every trainable network is made of (engine/quant/qat_layers.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.quant import qat_layers
from engine.quant import quant


def test_round_div_rounds_ties_away_from_zero_as_the_integer_kernel_does():
  totals = np.arange(-40, 41)
  for count in (1, 2, 4, 9):
    got = np.asarray(qat_layers.round_div(jnp.asarray(totals, jnp.float32), count))
    want = quant.int_round_div(totals.astype(np.int64), count)
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(qat_layers.round_div(jnp.array([2., -2., 6., -6.]), 4),
                                [1., -1., 2., -2.])  # 0.5 and 1.5 away from zero


def test_pooled_on_grid_is_the_integer_mean_with_the_float_pools_gradient():
  scale, zp = 0.1, -3
  q = jnp.array([[1., 2.], [2., 4.]])  # integer values on the grid; window sum 9, mean 2.25
  x = ((q - zp) * scale)[None, :, :, None]
  total = lambda v: jnp.sum(v, (1, 2), keepdims=True)
  pool = lambda x: qat_layers.pooled_on_grid(jnp.mean(x, (1, 2), keepdims=True), x,
                                             (scale, zp), total, 4)
  # the integer kernel: the window sum of the int8 values / 4, rounded, on the input's grid
  q_in = np.round(np.asarray(x) / scale) + zp
  want = (quant.int_round_div(np.int64(q_in.sum()), 4) - zp) * scale
  np.testing.assert_allclose(float(pool(x).squeeze()), want, rtol=1e-6)
  grad = jax.grad(lambda x: pool(x).sum())(x)
  np.testing.assert_allclose(grad, np.full(x.shape, 0.25))


def test_check_mode_names_the_modes():
  qat_layers.check_mode('quant')
  with pytest.raises(ValueError, match='fp32, folded, quant'):
    qat_layers.check_mode('int8')


class _ConvBN(nn.Module):
  mode: str

  @nn.compact
  def __call__(self, x, train=False):
    ctx = qat_layers.Ctx(self.mode, train)
    kernel = self.param('kernel', nn.initializers.normal(1.0), (x.shape[-1], 3))
    gamma = self.param('scale', nn.initializers.ones, (3,))
    beta = self.param('bias', nn.initializers.zeros, (3,))
    if self.mode == 'fp32':
      return qat_layers.batch_norm(self, x @ kernel, gamma, beta, ctx, (0,))
    return qat_layers.folded_layer(self, lambda x, w: x @ w, x, (1.0, 0), kernel,
                                   (gamma, beta), None, ctx)


def test_folded_equals_float_evaluation_with_the_running_statistics():
  x = jax.random.normal(jax.random.key(0), (64, 5)) * 2 + 1
  v = _ConvBN('fp32').init(jax.random.key(1), x)
  _, upd = _ConvBN('fp32').apply(v, x, train=True, mutable=['batch_stats'])
  v = {**v, **upd}  # running statistics moved towards the batch's
  assert not np.allclose(v['batch_stats']['mean'], 0)
  np.testing.assert_allclose(_ConvBN('folded').apply(v, x), _ConvBN('fp32').apply(v, x),
                             rtol=1e-5, atol=1e-5)

"""tinycnn's relaxation (`tinycnn.RELAXATION`): rows <-> archs one to one, the supernet at a
one-hot mask is the space's masked network, the relaxed cost at a one-hot mask is the lowered
arch's, and both are differentiable in the mask (gradients against finite differences)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hardware
from search_spaces import registry
from search_spaces import tinycnn

SPACE = registry.get('tinycnn')
RELAX = SPACE.relax
SHAPE = (16, 16, 3)  # the networks' input (tiny); the costs use the space's default (32, 32, 3)
COST_KEYS = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params')
DEVICE, RUNTIME = 'stm32f746', 'cmsis-nn'
KEY = jax.random.PRNGKey(1)
X = jax.random.normal(jax.random.PRNGKey(0), (2,) + SHAPE)
ARCHS = ('f8k3-relu-max', 'f16k5-f8k3-swish-avg', 'f32k5-f16k3-f8k5-relu-avg',
         'f8k5-f32k3-f16k3-swish-max')


def _one_hot(rows):
  """Option indices [..., 9] -> masks [..., 9, 3] (0 past a slot's own options)."""
  masks = np.eye(3, dtype=np.float32)[np.asarray(rows)]
  assert np.all(masks[..., np.arange(3) >= np.array(RELAX.slots(()))[:, None]] == 0)
  return jnp.asarray(masks)


@pytest.fixture(scope='module')
def nets():
  return SPACE.net((), SHAPE, 10), RELAX.net((), SHAPE, 10)


@pytest.fixture(scope='module')
def probes(nets):
  net = nets[1]
  params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), net.example_row))
  ones, tree = jax.tree_util.tree_flatten(net.probes(params, X.shape[0]))
  keys = jax.random.split(jax.random.PRNGKey(2), len(ones))
  return jax.tree_util.tree_unflatten(tree, [
      jax.random.uniform(k, one.shape, minval=0.5, maxval=1.5) for k, one in zip(keys, ones)])


def test_rows_and_archs_map_one_to_one():
  assert RELAX.slots(()) == (3, 3, 3, 3, 2, 2, 2, 2, 2)
  archs = SPACE.sample(np.random.default_rng(0), 50)
  rows = RELAX.to_rows(archs)
  assert rows.shape == (50, 9) and rows.dtype.kind == 'i'
  assert np.all((rows >= 0) & (rows < np.array(RELAX.slots(()))))
  assert RELAX.from_rows((), rows) == archs
  everything = SPACE.enumerate()
  assert len({tuple(r) for r in RELAX.to_rows(everything)}) == len(everything)
  # any index row is an arch; to_rows gives its canonical row (an unused layer's slots at 0)
  raw = np.random.default_rng(1).integers(0, np.array(RELAX.slots(())), (50, 9))
  canonical = RELAX.to_rows(RELAX.from_rows((), raw))
  np.testing.assert_array_equal(RELAX.to_rows(RELAX.from_rows((), canonical)), canonical)
  for r, q in zip(raw, canonical):
    used = np.ones(9, bool)
    for i in range(r[0] + 1, tinycnn.MAX_LAYERS):
      used[[1 + i, 4 + i]] = False
    np.testing.assert_array_equal(q[used], r[used])
    np.testing.assert_array_equal(q[~used], 0)


@pytest.mark.parametrize('bn', ['batch', 'identity'])
def test_relaxed_net_at_one_hot_is_the_space_net(nets, probes, bn):
  net, relaxed = nets
  archs = [SPACE.decode(a) for a in ARCHS]
  rows, masks = jnp.asarray(SPACE.to_array(archs)), _one_hot(RELAX.to_rows(archs))
  params = jax.vmap(lambda r: net.init(KEY, r))(rows)
  relaxed_params = jax.vmap(lambda m: relaxed.init(KEY, m))(masks)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), relaxed_params, params)
  want = jax.vmap(lambda p, r: net.apply(p, r, X, probes, bn))(params, rows)
  got = jax.vmap(lambda p, m: relaxed.apply(p, m, X, probes, bn))(params, masks)
  for field in ('logits', 'features', 'bn_log_sigma'):
    np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-5, atol=1e-7,
                               err_msg=field)
  np.testing.assert_array_equal(got.piecewise_linear, want.piecewise_linear)
  np.testing.assert_array_equal(got.piecewise_linear, [True, False, True, False])
  for (pre, units), (pre_want, units_want) in zip(got.codes, want.codes):
    np.testing.assert_allclose(pre, pre_want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(units, units_want)
  for m, r in zip(masks, rows):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 relaxed.fan_in(m), net.fan_in(r))


def test_multi_hot_mask_is_the_sum_of_its_options(nets):
  relaxed = nets[1]
  base = RELAX.to_rows([SPACE.decode('f16k3-f8k3-relu-max')])[0]
  multi = _one_hot(base).at[7, :2].set(1.0).at[8, :2].set(1.0)  # relu + swish, max + avg
  members = np.stack([base] * 4)
  members[:, 7], members[:, 8] = [0, 0, 1, 1], [0, 1, 0, 1]
  params = relaxed.init(KEY, multi)
  out = relaxed.apply(params, multi, X)
  # layer 0's activation and pooling are the sums of the options' (same weights)
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 4, 4, 32), minval=-1.0, maxval=1.0)
  backend = tinycnn._MaskedBackend(params, multi, None, SHAPE)
  swish = x * jax.nn.sigmoid(x)
  np.testing.assert_allclose(backend.activation(x, 0), jax.nn.relu(x) + swish, rtol=1e-6)
  pooled = x.reshape(2, 2, 2, 2, 2, 32)
  np.testing.assert_allclose(backend.pool(x, 0), pooled.max((2, 4)) + pooled.mean((2, 4)),
                             rtol=1e-6)
  # filters {8, 16} and kernels {3, 5} of layer 0: the sums of their channel and tap masks
  several = multi.at[1, :2].set(1.0).at[4, :2].set(1.0)
  conv = lambda m: tinycnn._masks(m, SHAPE)['conv0']
  singles = [multi.at[1].set(jnp.eye(3)[f]).at[4].set(jnp.eye(3)[k]) for f in (0, 1)
             for k in (0, 1)]
  np.testing.assert_array_equal(conv(several), sum(conv(m) for m in singles))
  assert not out.piecewise_linear
  for member in _one_hot(members):
    logits = relaxed.apply(params, member, X).logits
    assert not np.allclose(out.logits, logits, rtol=1e-3)


def test_network_gradient_matches_finite_differences(nets):
  """d sum(logits^2) / d mask at a soft mask (jax.grad) against central differences, in float32:
  under x64 the engine's custom convolution gradient (`kernels.conv`) returns NaN. At eps 1e-2
  float32 rounding costs ~1e-5 of the loss and the few ReLU / max-pool kinks crossed a little
  more: rtol 2e-2. The activation slot is (relu 1, swish 0), its gradient still taken through
  the swish branch: with a nonzero swish weight this program's gradient is NaN when compiled at
  the conftest's XLA level 0 (finite at the engine's level 1 and eagerly)."""
  rng = np.random.default_rng(5)
  soft = rng.dirichlet(np.ones(3), 9) * (np.arange(3) < np.array(RELAX.slots(()))[:, None])
  soft = jnp.asarray(soft, jnp.float32).at[7].set(jnp.array([1.0, 0.0, 0.0]))
  relaxed = nets[1]
  params = relaxed.init(KEY, soft)
  loss = lambda m: jnp.sum(relaxed.apply(params, m, X).logits ** 2)
  grad = np.asarray(jax.jit(jax.grad(loss))(soft))
  assert np.all(np.isfinite(grad))
  coords = [(0, 0), (1, 2), (4, 0), (7, 1), (8, 1)]
  eps = 1e-2
  units = [jnp.zeros((9, 3)).at[c].set(eps) for c in coords]
  values = jax.jit(jax.vmap(loss))(jnp.stack([soft + u for u in units] + [soft - u for u in units]))
  fd = (values[:5] - values[5:]) / (2 * eps)
  np.testing.assert_allclose([grad[c] for c in coords], fd, rtol=2e-2,
                             atol=1e-3 * np.abs(grad).max())
  assert np.all(np.abs([grad[c] for c in coords]) > 0)


def test_relaxed_cost_at_one_hot_equals_the_lowered_arch():
  """Max relative error measured on all 1,032 archs, 3 runtimes: 0 for sram, flash, MACs and
  params, 2e-7 (float32) for latency and energy."""
  archs = SPACE.sample(np.random.default_rng(4), 12)
  got = RELAX.cost((), _one_hot(RELAX.to_rows(archs)), DEVICE, RUNTIME)
  want = hardware.cost_rows({a.encode(): SPACE.lower(a) for a in archs}, DEVICE, RUNTIME)
  for key in COST_KEYS:
    assert got[key].shape == (12,)
    np.testing.assert_allclose(got[key], [r[key] for r in want], rtol=1e-5, err_msg=key)


def test_relaxed_cost_gradient_matches_finite_differences():
  """d cost / d mask at a soft mask against central differences: float32 inside `hardware`;
  latency is piecewise linear in each coordinate (Goedel logic; filter slots enter linearly
  as width multipliers), so central differences are exact up to rounding: rtol 1e-2."""
  rng = np.random.default_rng(6)
  soft = rng.dirichlet(np.ones(3), 9) * (np.arange(3) < np.array(RELAX.slots(()))[:, None])
  soft = jnp.asarray(soft, jnp.float32)
  cost = lambda m: RELAX.cost((), m, DEVICE, RUNTIME)
  jac = jax.jacrev(lambda m: jnp.stack([cost(m[None])[k][0] for k in COST_KEYS]))(soft)
  assert np.all(np.isfinite(jac)) and np.all(np.any(jac != 0, (1, 2)))
  grad = np.asarray(jac[COST_KEYS.index('latency_ms')])
  coords = [np.unravel_index(i, grad.shape) for i in np.argsort(-np.abs(grad).reshape(-1))[:4]]
  coords += [(1, 2), (7, 1)]
  units = [jnp.zeros((9, 3)).at[c].set(1.0) for c in coords]
  eps = 1e-3
  latency = cost(jnp.stack([soft + eps * u for u in units] + [soft - eps * u for u in units]))
  latency = np.asarray(latency['latency_ms'], np.float64)
  n = len(coords)
  fd = (latency[:n] - latency[n:]) / (2 * eps)
  np.testing.assert_allclose([grad[c] for c in coords], fd, rtol=1e-2,
                             atol=1e-4 * latency.mean())
  assert np.all(np.abs([grad[c] for c in coords[:4]]) > 1e-3 * latency.mean())

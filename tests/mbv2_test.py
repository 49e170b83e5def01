"""mbv2's relaxation (`mbv2.RELAXATION`): rows <-> archs one to one, the supernet at a one-hot
mask is the space's masked network, the relaxed cost at a one-hot mask is the lowered arch's,
and both are differentiable in the mask (gradients against finite differences).

On CPU compiling dominates (the padded network is 20 blocks of 7 x 7 depthwise taps), so each
program is compiled once (module fixtures, fixed batch sizes) and shared by the tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hardware
from search_spaces import mbv2
from search_spaces import registry

SPACE = registry.get('mbv2')
RELAX = SPACE.relax
GROUP = (0.5, 96)
COST_KEYS = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params')
DEVICE, RUNTIME = 'stm32f746', 'cmsis-nn'
BATCH = 4  # archs per call of the compiled network programs
KEY = jax.random.PRNGKey(1)
X = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))  # tiny: 1 x 1 after the last stage


def _archs(n, seed):
  return [mbv2.MBV2Arch(*GROUP, a.blocks) for a in SPACE.sample(np.random.default_rng(seed), n)]


def _one_hot(rows):
  return jnp.asarray(np.eye(mbv2.NUM_OPTIONS, dtype=np.float32)[np.asarray(rows)])


def _assert_trees_close(a, b, rtol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7), a, b)


@pytest.fixture(scope='module')
def nets():
  return SPACE.net(GROUP), RELAX.net(GROUP, None, 10)


@pytest.fixture(scope='module')
def probes(nets):
  net = nets[1]
  params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), net.example_row))
  ones, tree = jax.tree_util.tree_flatten(net.probes(params, X.shape[0]))
  keys = jax.random.split(jax.random.PRNGKey(2), len(ones))
  return jax.tree_util.tree_unflatten(tree, [
      jax.random.uniform(k, one.shape, minval=0.5, maxval=1.5) for k, one in zip(keys, ones)])


@pytest.fixture(scope='module')
def init_both(nets):
  """(rows [B, D], masks [B, S, O]) -> (the space net's params, the supernet's), one compile
  (the random draws are shared, so XLA computes them once)."""
  net, relaxed = nets
  return jax.jit(jax.vmap(lambda r, m: (net.init(KEY, r), relaxed.init(KEY, m))))


@pytest.fixture(scope='module')
def apply_relaxed(nets, probes):
  """(params [B, ...], masks [B, S, O]) -> the supernet's Outputs [B, ...]."""
  return jax.jit(jax.vmap(lambda p, m: nets[1].apply(p, m, X, probes)))


def test_rows_and_archs_map_one_to_one():
  assert RELAX.slots(GROUP) == (3,) * 45
  archs = SPACE.sample(np.random.default_rng(0), 50)
  by_group = {}
  for a in archs:
    by_group.setdefault(SPACE.group(a), []).append(a)
  for group, members in by_group.items():
    rows = RELAX.to_rows(members)
    assert rows.shape == (len(members), 45) and rows.dtype.kind == 'i'
    assert np.all((rows >= 0) & (rows < np.array(RELAX.slots(group))))
    assert RELAX.from_rows(group, rows) == members
  # any index row is an arch; to_rows gives its canonical row (an unused block's slots at 0)
  raw = np.random.default_rng(1).integers(0, 3, (50, 45))
  archs = RELAX.from_rows(GROUP, raw)
  rows = RELAX.to_rows(archs)
  np.testing.assert_array_equal(RELAX.to_rows(RELAX.from_rows(GROUP, rows)), rows)
  for a, r, q in zip(archs, raw, rows):
    for s, blocks in enumerate(a.blocks):
      assert len(blocks) == mbv2.DEPTHS[r[s]] and q[s] == r[s]
      for j in range(mbv2.MAX_DEPTH):
        slots = [mbv2._kernel_slot(s, j), mbv2._expand_slot(s, j)]
        np.testing.assert_array_equal(q[slots], r[slots] if j < len(blocks) else 0)
  assert len({tuple(r) for r in rows}) == len({a.encode() for a in archs})


@pytest.mark.slow  # the space's net is the relaxed net at one_hot(row) by construction now; the
# masked network is held against independent references in search_space_interface_test.py
def test_relaxed_net_at_one_hot_is_the_space_net(nets, probes, init_both, apply_relaxed):
  net, relaxed = nets
  archs = _archs(BATCH, 2)
  rows, masks = jnp.asarray(SPACE.to_array(archs)), _one_hot(RELAX.to_rows(archs))
  params, relaxed_params = init_both(rows, masks)
  _assert_trees_close(relaxed_params, params)
  want = jax.jit(jax.vmap(lambda p, r: net.apply(p, r, X, probes)))(params, rows)
  got = apply_relaxed(params, masks)
  for field in ('logits', 'features', 'bn_log_sigma'):
    np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-5, atol=1e-6,
                               err_msg=field)
  np.testing.assert_array_equal(got.piecewise_linear, want.piecewise_linear)
  assert len(got.codes) == len(want.codes)
  for (pre, units), (pre_want, units_want) in zip(got.codes, want.codes):
    np.testing.assert_allclose(pre, pre_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(units, units_want)
  _assert_trees_close(relaxed.fan_in(masks[1]), net.fan_in(rows[1]))
  assert not np.allclose(got.logits[0], got.logits[1])  # the archs are really different


def test_multi_hot_mask_is_the_sum_of_its_options(nets, init_both, apply_relaxed):
  arch = _archs(1, 3)[0]
  base = RELAX.to_rows([arch])[0]
  kernel = mbv2._kernel_slot(0, 0)
  multi = _one_hot(base).at[kernel].set(1.0)  # block (0, 0) with kernels 3, 5 and 7
  members = np.stack([base] * 3)
  members[:, kernel] = [0, 1, 2]
  # the supernet's masks: its depthwise taps are the sum of the members' tap masks
  dw = lambda m: mbv2._relaxed_masks(m, GROUP)['s0b0_dw'].mask
  np.testing.assert_array_equal(dw(multi), sum(dw(m) for m in _one_hot(members)))
  # ... its project input channels the sum of the expand options' channel masks, a block's
  # gate the summed weight of the depth options that include it
  stage, expand = 1, mbv2._expand_slot(1, 2)
  several = multi.at[expand].set(1.0).at[stage].set(1.0)
  layers = mbv2._relaxed_masks(several, GROUP)
  ci = mbv2.channels(40, GROUP[0])
  channels = np.sum([np.arange(ci * 6) < ci * e for e in mbv2.EXPANDS], 0)
  np.testing.assert_array_equal(layers['s1b2_project'].mask.reshape(-1), channels)
  assert [float(layers[f's1b{j}_expand'].gate) for j in range(4)] == [1.0, 3.0, 2.0, 1.0]
  # and its output differs from every member's (same params: the supernet's)
  masks = jnp.concatenate([multi[None], _one_hot(members)])
  params = init_both(jnp.asarray(SPACE.to_array([arch] * BATCH)), jnp.stack([multi] * BATCH))[1]
  logits = apply_relaxed(params, masks).logits
  for i in range(1, BATCH):
    assert not np.allclose(logits[0], logits[i], rtol=1e-3), i


def test_network_gradient_matches_finite_differences(nets, init_both):
  """d sum(logits^2) / d mask at a soft mask, in float64, by forward mode (jvp: the gradient's
  coordinates; reverse mode's compile alone would take ~20 s here) against central differences.
  BN is off: batch statistics of a 2-sample batch are so curved in the mask that differences
  converge only below eps ~1e-7; kaiming-scaled weights keep the logits O(1) without it."""
  rng = np.random.default_rng(5)
  soft = rng.dirichlet(np.ones(3), 45)
  params = init_both(jnp.asarray(SPACE.to_array(_archs(BATCH, 0))),
                     jnp.asarray(np.stack([soft] * BATCH), jnp.float32))[1]
  with jax.enable_x64(True):
    # U(+-1/sqrt(fan_in)) * sqrt(6) has kaiming's variance 2 / fan_in
    params = jax.tree.map(lambda a: a[0].astype(jnp.float64) * np.sqrt(6.0), params)
    x = X.astype(jnp.float64)
    loss = lambda m: jnp.sum(mbv2.relaxed_apply(params, m, x, bn='identity',
                                                group_key=GROUP).logits ** 2)
    coords = [(int(rng.integers(45)), int(rng.integers(3))) for _ in range(3)]
    units = [jnp.zeros((45, 3)).at[c].set(1.0) for c in coords]
    eps = 1e-6
    masks = jnp.stack([soft] * 3 + [soft + eps * u for u in units] + [soft - eps * u for u in units])
    values, grads = jax.jit(jax.vmap(lambda m, u: jax.jvp(loss, (m,), (u,))))(
        masks, jnp.stack(units * 3))
    fd = (values[3:6] - values[6:]) / (2 * eps)
    np.testing.assert_allclose(grads[:3], fd, rtol=1e-5, atol=1e-9 * float(values[0]))
    assert np.all(np.abs(grads[:3]) > 0)


def test_relaxed_cost_at_one_hot_equals_the_lowered_arch():
  """Max relative error measured over 50 archs of 9 groups and 3 runtimes: 0 for sram, flash,
  MACs and params, 2e-7 (float32) for latency and energy."""
  archs = _archs(10, 4)
  got = RELAX.cost(GROUP, _one_hot(RELAX.to_rows(archs)), DEVICE, RUNTIME)
  want = hardware.cost_rows({a.encode(): SPACE.lower(a) for a in archs}, DEVICE, RUNTIME)
  for key in COST_KEYS:
    assert got[key].shape == (10,)
    np.testing.assert_allclose(got[key], [r[key] for r in want], rtol=1e-5, err_msg=key)


def test_relaxed_cost_gradient_matches_finite_differences():
  """d cost / d mask at a soft mask against central differences. The cost is float32 inside
  `hardware` (so no float64 check); the template's Goedel logic makes latency piecewise linear
  in each coordinate, so central differences are exact up to rounding (~1e-4 of the latency at
  eps 1e-3) unless a kink lies within eps: rtol 1e-2. Coordinates: the 3 with the largest
  gradient (the options that bind, see `mbv2.relaxed_cost`) and 2 random ones."""
  rng = np.random.default_rng(6)
  soft = jnp.asarray(rng.dirichlet(np.ones(3), 45), jnp.float32)
  cost = lambda m: RELAX.cost(GROUP, m, DEVICE, RUNTIME)
  jac = jax.jacrev(lambda m: jnp.stack([cost(m[None])[k][0] for k in COST_KEYS]))(soft)
  assert np.all(np.isfinite(jac)) and np.all(np.any(jac != 0, (1, 2)))
  grad = np.asarray(jac[COST_KEYS.index('latency_ms')])
  flat = list(np.argsort(-np.abs(grad).reshape(-1))[:3]) + list(rng.integers(0, 45 * 3, 2))
  coords = [np.unravel_index(i, grad.shape) for i in flat]
  units = [jnp.zeros((45, 3)).at[c].set(1.0) for c in coords]
  eps = 1e-3
  latency = cost(jnp.stack([soft + eps * u for u in units] + [soft - eps * u for u in units]))
  latency = np.asarray(latency['latency_ms'], np.float64)
  fd = (latency[:5] - latency[5:]) / (2 * eps)
  np.testing.assert_allclose([grad[c] for c in coords], fd, rtol=1e-2,
                             atol=1e-4 * latency.mean())
  assert np.all(np.abs([grad[c] for c in coords[:3]]) > 1e-3 * latency.mean())

"""Zero-cost proxies: batched == one at a time, synflow stays finite, hand-checked references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import proxies, scoring
from engine import zero_cost as zc
from search_spaces import nb201, nb201_net

# Tiny proxy network (compile time rules on 2 CPU cores): stem, one cell, one reduction block and
# the head; 4 channels, 8x8 inputs, batch 8.
SETTINGS = proxies.ScoreSettings(zc_batch=8, zc_width=4, zc_cells=1, zc_input_size=8, zc_depth=2)
NAMES = list(zc.PROXIES)
OPS = np.array([[3, 2, 4, 1, 3, 0], [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], [4, 0, 2, 0, 0, 3]])


@pytest.fixture(scope='module')
def batched():
  scorer = scoring.Scorer(NAMES, SETTINGS, seed=5, batch_candidates=4, devices=jax.devices()[:1])
  return scorer.score_ops(OPS)


def _tiny(seed=0):
  config = SETTINGS.zc_config()
  params = nb201_net.init_params(jax.random.PRNGKey(seed), config)
  x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, 8, 8, 3))
  labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (8,), 0, config.num_classes)
  return config, params, x, labels


def test_registered_with_labels_in_inputs():
  for name in NAMES:
    p = proxies.REGISTRY[name]
    assert (p.kind, p.needs, p.higher_is_better) == ('network', 'zc', True)
  inputs = proxies.make_inputs(proxies.get(NAMES), SETTINGS, 0, None)
  assert inputs['zc'].shape == (8, 8, 8, 3)
  assert inputs['zc_labels'].shape == (8,) and inputs['zc_labels'].dtype == np.int32
  assert 0 <= inputs['zc_labels'].min() and inputs['zc_labels'].max() < 10


def test_batched_scores_are_finite_and_equal_one_at_a_time(batched):
  for name in NAMES:
    assert np.all(np.isfinite(batched[name])), name
    assert not batched[name + '_flag'].any(), name
  single = scoring.Scorer(NAMES, SETTINGS, seed=5, batch_candidates=1,
                          devices=jax.devices()[:1]).score_ops(OPS)
  for name in batched:
    np.testing.assert_allclose(batched[name], single[name], rtol=1e-4, err_msg=name)


def test_more_convs_score_higher_on_gradient_proxies(batched):
  skips, convs = 1, 2  # rows of OPS: all skip_connect vs all nor_conv_3x3
  for name in ('grad_norm', 'snip', 'synflow'):
    assert batched[name][convs] > batched[name][skips], name


def test_grad_norm_and_snip_match_direct_gradient():
  config, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))

  def loss(p):
    logits = nb201_net.apply(p, mask, x, config)[0]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

  g = jax.jit(jax.grad(loss))(params)
  assert set(params) == {'stem', 'stage0', 'reduce1', 'head'}
  layers = [g['stem']['conv'], g['reduce1']['conv_a'], g['reduce1']['conv_b'],
            g['reduce1']['shortcut'], g['head']['fc']]
  for kind in ('conv1', 'conv3'):
    layers += [g['stage0'][kind][0, e] for e in range(6)]
  expected_norm = sum(float(jnp.linalg.norm(l.ravel())) for l in layers)
  value, flag = jax.jit(zc.grad_norm, static_argnums=4)(params, mask, x, labels, config)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected_norm, rtol=1e-5)

  pairs = [(params['stem']['conv'], g['stem']['conv']), (params['head']['fc'], g['head']['fc'])]
  pairs += [(params['reduce1'][k], g['reduce1'][k]) for k in ('conv_a', 'conv_b', 'shortcut')]
  pairs += [(params['stage0'][k], g['stage0'][k]) for k in ('conv1', 'conv3')]
  expected_snip = sum(float(jnp.sum(jnp.abs(w * d))) for w, d in pairs)
  value, _ = jax.jit(zc.snip, static_argnums=4)(params, mask, x, labels, config)
  np.testing.assert_allclose(float(value), expected_snip, rtol=1e-5)


def test_synflow_matches_plain_sum_on_a_tiny_net():
  config, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  value, flag = jax.jit(zc.synflow, static_argnums=4)(params, mask, x, labels, config)
  # Plain synflow without rescaling: |params|, BN as identity, ones input.
  abs_params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1, 8, 8, 3))
  stats = zc._identity_stats(abs_params, mask, ones, config)
  g = jax.jit(jax.grad(lambda p: nb201_net.apply(p, mask, ones, config, stats)[0].sum()))(
      abs_params)
  leaves = jax.tree_util.tree_flatten_with_path(abs_params)[0]
  plain = sum(float(jnp.sum(w * d)) for (path, w), d in zip(leaves, jax.tree.leaves(g))
              if str(path[-1].key) in zc.LAYER_WEIGHTS)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), np.log(plain), rtol=1e-5)


def test_synflow_stays_finite_on_the_full_network():
  config = proxies.ScoreSettings().zc_config()  # C=16, N=5, 32x32
  params = nb201_net.init_params(jax.random.PRNGKey(0), config)
  mask = jnp.asarray(nb201.ops_to_mask((3,) * 6))
  x = jnp.zeros((1, 32, 32, 3))
  value, flag = jax.jit(zc.synflow, static_argnums=4)(params, mask, x, None, config)
  assert int(flag) == 0 and np.isfinite(float(value))
  # The plain float32 sum overflows here: R itself is beyond float32's range (log 3.4e38 = 88.7).
  assert float(value) > np.log(np.finfo(np.float32).max)


def test_synflow_of_a_disconnected_net_is_flagged():
  config, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask((0,) * 6))  # all 'none': no path through the cells
  value, flag = jax.jit(zc.synflow, static_argnums=4)(params, mask, x, labels, config)
  assert float(value) == -np.inf and int(flag) == zc.SINGULAR


def test_nwot_equals_numpy_slogdet_of_the_codes():
  config, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  blocks = nb201_net.relu_blocks(params, mask, x, config)
  codes = np.concatenate([np.asarray(pre) > 0 for pre, active in blocks if bool(active)], axis=1)
  assert codes.shape[1] < sum(pre.shape[1] for pre, _ in blocks)  # inactive convs dropped
  c = codes.astype(np.float64)
  _, expected = np.linalg.slogdet(c @ c.T + (1 - c) @ (1 - c).T)
  value, flag = jax.jit(zc.nwot, static_argnums=4)(params, mask, x, labels, config)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def test_labels_are_the_sampled_images_labels():
  # Image i is filled with the value of its label, so each sampled input names its own label.
  labels = np.arange(50) % 10
  images = np.broadcast_to(labels[:, None, None, None] * 20, (50, 32, 32, 3)).astype(np.uint8)
  image_set = proxies.data_lib.ImageSet(images, labels, 'synthetic')
  settings = dataclasses.replace(SETTINGS, zc_input_size=32)
  inputs = proxies.make_inputs(proxies.get('nwot'), settings, 0, image_set)
  centre = inputs['zc'][:, 16, 16, 0] * proxies.data_lib.CIFAR_STD[0] + proxies.data_lib.CIFAR_MEAN[0]
  np.testing.assert_array_equal(np.rint(centre * 255 / 20).astype(int), inputs['zc_labels'])

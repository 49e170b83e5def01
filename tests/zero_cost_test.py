"""Zero-cost proxies: batched == one at a time, synflow stays finite, hand-checked references."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.train import data as data_lib
from engine import proxies, scoring
from engine.proxies import zero_cost as zc
from search_spaces import nb201, registry
from search_spaces.nb201 import net as nb201_net
from search_spaces.nb201 import space as nb201_space

# Tiny proxy network (compile time rules on 2 CPU cores): stem, one cell, one reduction block and
# the head; 4 channels, 8x8 inputs, batch 8.
SETTINGS = proxies.ScoreSettings(zc_batch=8, zc_width=4, zc_cells=1, zc_input_size=8, zc_depth=2)
NAMES = list(zc.PROXIES)
OPS = np.array([[3, 2, 4, 1, 3, 0], [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], [4, 0, 2, 0, 0, 3]])
NB201 = registry.get('nb201')


def _scorer(names, settings=SETTINGS, k=4):
  return scoring.Scorer(NB201, names, settings, seed=5, batch_candidates=k,
                        devices=jax.devices()[:1])


def _jit(fn, net, **kw):
  """fn(net, ...) compiled for one network (a Net is closed over, not passed)."""
  return jax.jit(functools.partial(fn, net, **kw))


@pytest.fixture(scope='module')
def scorer():
  return _scorer(NAMES)


@pytest.fixture(scope='module')
def batched(scorer):
  return scorer.score_archs((), OPS)


def _tiny(seed=0, settings=SETTINGS):
  """(the zc network's config, its Net, params, x, labels)."""
  config = nb201_space.proxy_configs(settings)['zc']
  params = nb201_net.init_params(jax.random.PRNGKey(seed), config)
  x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, 8, 8, 3))
  labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (8,), 0, config.num_classes)
  return config, nb201_space.make_net(config), params, x, labels


def test_registered_with_labels_in_inputs():
  for name in NAMES:
    p = proxies.REGISTRY[name]
    assert (p.kind, p.needs, p.higher_is_better) == ('network', 'zc', True)
  inputs = proxies.make_inputs(proxies.get(NAMES), SETTINGS, 0, None,
                               NB201.proxy_nets((), SETTINGS))
  assert inputs['zc'].shape == (8, 8, 8, 3)
  assert inputs['zc_labels'].shape == (8,) and inputs['zc_labels'].dtype == np.int32
  assert 0 <= inputs['zc_labels'].min() and inputs['zc_labels'].max() < 10


def test_batched_scores_are_finite_and_equal_one_at_a_time(batched):
  for name in NAMES:
    assert np.all(np.isfinite(batched[name])), name
    assert not batched[name + '_flag'].any(), name
  single = _scorer(NAMES, k=1).score_archs((), OPS)
  for name in batched:
    np.testing.assert_allclose(batched[name], single[name], rtol=1e-4, err_msg=name)


def test_more_convs_score_higher_on_gradient_proxies(batched):
  skips, convs = 1, 2  # rows of OPS: all skip_connect vs all nor_conv_3x3
  for name in ('grad_norm', 'snip', 'synflow'):
    assert batched[name][convs] > batched[name][skips], name


def test_grad_norm_and_snip_match_direct_gradient():
  config, net, params, x, labels = _tiny()
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
  value, flag = _jit(zc.grad_norm, net)(params, mask, x, labels)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected_norm, rtol=1e-5)

  pairs = [(params['stem']['conv'], g['stem']['conv']), (params['head']['fc'], g['head']['fc'])]
  pairs += [(params['reduce1'][k], g['reduce1'][k]) for k in ('conv_a', 'conv_b', 'shortcut')]
  pairs += [(params['stage0'][k], g['stage0'][k]) for k in ('conv1', 'conv3')]
  expected_snip = sum(float(jnp.sum(jnp.abs(w * d))) for w, d in pairs)
  value, _ = _jit(zc.snip, net)(params, mask, x, labels)
  np.testing.assert_allclose(float(value), expected_snip, rtol=1e-5)


def test_synflow_matches_plain_sum_on_a_tiny_net():
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  value, flag = _jit(zc.synflow, net)(params, mask, x, labels)
  # Plain synflow without rescaling: |params|, BN as identity, ones input.
  abs_params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1, 8, 8, 3))
  stats = nb201_space._identity_stats(abs_params, mask, ones, config)
  g = jax.jit(jax.grad(lambda p: nb201_net.apply(p, mask, ones, config, stats)[0].sum()))(
      abs_params)
  leaves = jax.tree_util.tree_flatten_with_path(abs_params)[0]
  plain = sum(float(jnp.sum(w * d)) for (path, w), d in zip(leaves, jax.tree.leaves(g))
              if str(path[-1].key) in nb201_net.LAYER_WEIGHTS)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), np.log(plain), rtol=1e-5)


def test_synflow_stays_finite_on_the_full_network():
  config = nb201_space.proxy_configs(proxies.ScoreSettings())['zc']  # C=16, N=5, 32x32
  params = nb201_net.init_params(jax.random.PRNGKey(0), config)
  ops = jnp.full(6, 3, jnp.int32)  # op indices: the single path scoring runs (and compiles fast)
  x = jnp.zeros((1, 32, 32, 3))
  value, flag = _jit(zc.synflow, nb201_space.make_net(config))(params, ops, x, None)
  assert int(flag) == 0 and np.isfinite(float(value))
  # The plain float32 sum overflows here: R itself is beyond float32's range (log 3.4e38 = 88.7).
  assert float(value) > np.log(np.finfo(np.float32).max)


def test_synflow_of_a_disconnected_net_is_flagged():
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask((0,) * 6))  # all 'none': no path through the cells
  value, flag = _jit(zc.synflow, net)(params, mask, x, labels)
  assert float(value) == -np.inf and int(flag) == zc.SINGULAR


def test_nwot_equals_numpy_slogdet_of_the_codes():
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  blocks = nb201_net.relu_blocks(params, mask, x, config)
  codes = np.concatenate([np.asarray(pre) > 0 for pre, active in blocks if bool(active)], axis=1)
  assert codes.shape[1] < sum(pre.shape[1] for pre, _ in blocks)  # inactive convs dropped
  c = codes.astype(np.float64)
  _, expected = np.linalg.slogdet(c @ c.T + (1 - c) @ (1 - c).T)
  value, flag = _jit(zc.nwot, net)(params, mask, x, labels)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def test_labels_are_the_sampled_images_labels():
  # Image i is filled with the value of its label, so each sampled input names its own label.
  labels = np.arange(50) % 10
  images = np.broadcast_to(labels[:, None, None, None] * 20, (50, 32, 32, 3)).astype(np.uint8)
  image_set = data_lib.ImageSet(images, labels, 'synthetic')
  settings = dataclasses.replace(SETTINGS, zc_input_size=32)
  inputs = proxies.make_inputs(proxies.get('nwot'), settings, 0, image_set,
                               NB201.proxy_nets((), settings))
  centre = inputs['zc'][:, 16, 16, 0] * data_lib.CIFAR_STD[0] + data_lib.CIFAR_MEAN[0]
  np.testing.assert_array_equal(np.rint(centre * 255 / 20).astype(int), inputs['zc_labels'])


# ----------------------------------------------------------------------------- fisher, grasp, zico, zen

def test_new_proxies_registered_with_their_settings():
  assert proxies.ScoreSettings().zico_splits == 2
  for name in ('fisher', 'grasp', 'zico', 'zen'):
    assert proxies.REGISTRY[name].higher_is_better, name
  with pytest.raises(proxies.ProxyError, match='zico_splits'):
    bad = dataclasses.replace(SETTINGS, zico_splits=3)
    nets = NB201.proxy_nets((), bad)
    proxies.REGISTRY['zico'].fn(jax.random.PRNGKey(0), jnp.asarray(nb201.ops_to_mask(OPS[0])),
                                proxies.make_inputs(proxies.get('zico'), bad, 0, None, nets), bad,
                                nets)


@pytest.fixture(scope='module')
def fused_tiny():
  """gradient_proxies (all four from one pass) on the tiny net, OPS[0]: compiled once."""
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  return _jit(zc.gradient_proxies, net, names=zc.GRADIENT_GROUP)(params, mask, x, labels)


def test_fused_gradient_proxies_equal_the_separate_ones_and_probes_keep_the_logits(fused_tiny):
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  probed = nb201_net.apply(params, mask, x, config, probes=net.probes(params, 8))[0]
  np.testing.assert_allclose(probed, nb201_net.apply(params, mask, x, config)[0], atol=1e-5)
  # grad_norm and snip alone run nb201_net.apply; fisher alone skips the linearisation.
  for name in ('grad_norm', 'snip', 'fisher'):
    value, flag = _jit(zc.PROXIES[name], net)(params, mask, x, labels)
    assert int(flag) == int(fused_tiny[name][1]) == 0, name
    np.testing.assert_allclose(float(fused_tiny[name][0]), float(value), rtol=1e-4, err_msg=name)


def test_fisher_matches_a_direct_per_activation_sum():
  # Stem and head only: the hooked activations are the stem conv's output and the logits.
  config = nb201_space.proxy_configs(dataclasses.replace(SETTINGS, zc_depth=0))['zc']
  params = nb201_net.init_params(jax.random.PRNGKey(3), config)
  x = jax.random.normal(jax.random.PRNGKey(4), (8, 8, 8, 3))
  labels = jnp.arange(8) % 10
  stem, head = params['stem'], params['head']

  def from_stem(a):  # stem conv output -> logits
    h = nb201_net.batch_norm(a, stem['bn_scale'], stem['bn_bias'])[0]
    h = nb201_net.batch_norm(h, head['bn_scale'], head['bn_bias'])[0]
    return jnp.mean(jax.nn.relu(h), (1, 2)) @ head['fc'] + head['fc_bias']

  a = nb201_net._conv(x, stem['conv'], 1)
  logits = from_stem(a)
  g_a = jax.grad(lambda a: zc.cross_entropy(from_stem(a), labels))(a)
  g_z = jax.grad(lambda z: zc.cross_entropy(z, labels))(logits)
  per_stem = np.sum(np.asarray(a * g_a), axis=(1, 2))       # [B, C]
  per_fc = np.asarray(logits * g_z)                         # [B, classes]
  expected = (3 * 3 * 3 * 0.5 * np.sum(np.mean(per_stem ** 2, 0))
              + 4 * 0.5 * np.sum(np.mean(per_fc ** 2, 0)))
  value, flag = _jit(zc.fisher, nb201_space.make_net(config))(params, None, x, labels)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def test_grasp_matches_a_second_backward_pass_through_plain_convolutions(monkeypatch,
                                                                        fused_tiny):
  # zero-cost-nas's route: H g as the gradient of g . dL/dW (g held constant), here through XLA's
  # own convolution (twice differentiable in reverse mode); grasp uses forward mode over the
  # backward pass and nb201_net.conv's own gradient rules.
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  value, flag = fused_tiny['grasp']  # zc.grasp is this same linearised pass, grasp alone
  monkeypatch.setattr(nb201_net, 'conv', lambda x, w, stride=1: nb201_net._conv(x, w, stride))
  weights, rest = zc.split_layer_weights(net, params)
  probes = net.probes(params, 8)
  loss = lambda w: zc.cross_entropy(
      nb201_net.apply(zc._merge(w, rest), mask, x, config, probes=probes)[0], labels)
  dot = lambda a, b: sum(jnp.sum(u * v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  @jax.jit
  def reference(w):
    g = jax.lax.stop_gradient(jax.grad(loss)(w))
    hg = jax.grad(lambda w: dot(g, jax.grad(loss)(w)))(w)
    return -dot(w, hg)

  assert int(flag) == 0
  np.testing.assert_allclose(float(value), float(reference(weights)), rtol=1e-4)


def test_zico_matches_numpy_on_the_two_half_batches():
  config, net, params, x, labels = _tiny()
  mask = jnp.asarray(nb201.ops_to_mask(OPS[0]))
  loss_grads = _jit(zc.loss_grads, net)
  halves = [loss_grads(params, mask, x[i:i + 4], labels[i:i + 4])[1] for i in (0, 4)]
  layers = []
  flat = [jax.tree_util.tree_flatten_with_path(h)[0] for h in halves]
  for (path, g0), (_, g1) in zip(*flat):
    g = np.stack([np.asarray(g0), np.asarray(g1)]).astype(np.float64)
    if str(path[-1].key) in ('conv1', 'conv3'):  # [2, cells, edges, ...]: one layer per cell edge
      layers += [g[:, i, e] for i in range(g.shape[1]) for e in range(g.shape[2])]
    else:
      layers.append(g)
  expected = 0.0
  for g in layers:
    std, mean_abs = g.std(0), np.abs(g).mean(0)
    total = np.sum(mean_abs[std > 0] / std[std > 0])
    expected += np.log(total) if total > 0 else 0.0
  value, flag = _jit(zc.zico, net)(params, mask, x, labels)
  assert int(flag) == 0
  # float32 gradients: mean / std is sensitive where the two halves' gradients nearly agree.
  np.testing.assert_allclose(float(value), expected, rtol=1e-3)


@pytest.mark.parametrize('ops, live_edges', [
    (OPS[0], (0, 1, 4)),  # nor_conv_3x3, nor_conv_1x1, avg_pool, skip, nor_conv_3x3, none
    # node 1 is fed by `none` only: the convs on edges 2 and 4 read a zero tensor (variance 0);
    # the architecture (and its lowering) has no such layers.
    ((0, 3, 3, 1, 2, 3), (1, 5)),
])
def test_zen_counts_the_bn_layers_of_the_architecture_only(ops, live_edges):
  config, net, _, x, labels = _tiny()
  params = nb201_net.init_params(jax.random.PRNGKey(7), config, 'kaiming_normal')
  mask = jnp.asarray(nb201.ops_to_mask(ops))
  unit = zc.unit_gaussian_weights(net, params, mask)
  assert abs(float(jnp.std(unit['stage0']['conv3'])) - 1) < 0.05
  np.testing.assert_array_equal(unit['stage0']['bn3_scale'], params['stage0']['bn3_scale'])
  key = jax.random.PRNGKey(11)
  k_x, k_eps = jax.random.split(key)
  x0 = jax.random.normal(k_x, x.shape)
  x1 = x0 + zc.ZEN_ALPHA * jax.random.normal(k_eps, x.shape)

  def pre_gap(inputs):
    feats = []
    stats = nb201_net.apply(unit, mask, inputs, config, hook=lambda a: feats.append(a) or a)[1]
    h = nb201_net.batch_norm(feats[-1], unit['head']['bn_scale'], unit['head']['bn_bias'])[0]
    return jax.nn.relu(h), stats

  (f0, stats), (f1, _) = pre_gap(x0), pre_gap(x1)
  variances = [stats['stem'][1], stats['reduce1/a'][1], stats['reduce1/b'][1],
               stats['head'][1]]
  kinds = {nb201.CONV1: 'conv1', nb201.CONV3: 'conv3'}
  variances += [stats[f'stage0/0/{e}/{kinds[ops[e]]}'][1] for e in live_edges]
  dead = [e for e, op in enumerate(ops) if op in kinds and e not in live_edges]
  assert all(float(jnp.max(stats[f'stage0/0/{e}/{kinds[ops[e]]}'][1])) == 0 for e in dead)
  expected = (np.log(np.mean(np.sum(np.abs(np.asarray(f0 - f1)), (1, 2, 3))))
              + sum(0.5 * np.log(np.mean(np.asarray(v))) for v in variances))
  value, flag = _jit(zc.zen, net, key=key)(params, mask, x, labels)
  assert int(flag) == 0
  np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def test_non_finite_values_are_flagged():
  names = ('fisher', 'grasp', 'zico', 'zen')
  scorer = _scorer(names)
  masks = np.asarray(nb201.ops_to_mask(OPS), np.float32)
  masks[0, 0, nb201.CONV3] = np.nan  # poisons every activation after the first edge
  out = scorer.score_masks((), masks)
  for name in names:
    assert int(out[name + '_flag'][0]) == zc.NONFINITE and not np.isfinite(out[name][0]), name
    assert not out[name + '_flag'][1:].any(), name


# every proxy, NTK variants and linear regions included, in four groups (compiled separately,
# so the test processes share the work)
@pytest.mark.parametrize('names', [
    list(zc.GRADIENT_GROUP), [n for n in NAMES if n not in zc.GRADIENT_GROUP],
    # the NTK groups (23-26 s cold each) in the slow suite: the default suite stays <= 10 min
    pytest.param(['ntk_cond'], marks=pytest.mark.slow),
    pytest.param(['ntk_cond_independent', 'linear_regions'], marks=pytest.mark.slow)],
    ids=['gradient', 'other', 'ntk', 'ntk_independent'])
def test_single_path_fast_path_equals_the_dense_supernet(names):
  # sparse: one-hot candidates go in as op indices (switch per edge, scan over cells, custom
  # VJPs); each proxy must equal the dense walk.
  # one cell per stage: the scan over several cells is held by the full-network synflow test
  settings = dataclasses.replace(SETTINGS, single_path=True, ntk_batch=8, ntk_width=4,
                                 ntk_cells=1, ntk_repeats=1)
  dense_settings = dataclasses.replace(settings, single_path=False)
  # the NTKs' dense walk runs slowly at the tests' LLVM -O0: two archs (one with `none` edges)
  ops = OPS[[0, 3]] if 'ntk' in names[0] else OPS
  fast = _scorer(names, settings, k=2).score_archs((), ops)
  dense = _scorer(names, dense_settings, k=len(ops)).score_archs((), ops)
  for name in names:
    np.testing.assert_array_equal(fast[name + '_flag'], dense[name + '_flag'], err_msg=name)
    np.testing.assert_allclose(fast[name], dense[name], rtol=2e-3, atol=1e-5, err_msg=name)


def _jacob_cov_float64(jac):
  """NASLib's definition in float64: -sum(log(v + k) + 1 / (v + k)), v the eigenvalues of the
  rows' correlation matrix."""
  v = np.linalg.eigvalsh(np.corrcoef(np.asarray(jac, np.float64).reshape(len(jac), -1)))
  return -np.sum(np.log(v + zc.JACOB_COV_K) + 1.0 / (v + zc.JACOB_COV_K))


def test_jacob_cov_matches_a_float64_reference_near_singular_too():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(60, 3, 16, 16))
  near_copies = base[:4] + 1e-4 * rng.normal(size=(4, 3, 16, 16))  # 4 eigenvalues ~1e-8
  for jac in (rng.normal(size=(64, 3, 16, 16)), np.concatenate([base, near_copies]),
              rng.normal(size=(8, 5))):  # fewer entries (5) than samples (8): 3 zero eigenvalues
    jac = jac.astype(np.float32)
    value, flag = jax.jit(zc.jacob_cov_value)(jnp.asarray(jac))
    assert int(flag) == zc.OK
    # float32 eigvalsh of the correlation matrix was ~1% off on the near-singular case
    np.testing.assert_allclose(float(value), _jacob_cov_float64(jac), rtol=1e-5)
  constant = np.ones((4, 10), np.float32)  # a row with no variance: correlation undefined
  value, flag = zc.jacob_cov_value(jnp.asarray(constant))
  assert np.isnan(float(value)) and int(flag) == zc.NONFINITE

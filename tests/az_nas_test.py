"""AZ-NAS's terms (engine/proxies/az_nas.py): each against a float64 numpy computation of its
definition on a tiny hand-written network, batched scoring equal to one at a time, the identity
and absent-block rules, and runs on NB201, tinycnn and mbv2 through `Outputs.stage_features`."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import proxies, scoring
from engine.proxies import aggregate, az_nas, ntk
from search_spaces import interface, registry

KEY = jax.random.PRNGKey(3)
X = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 3)))


# ----------------------------------------------------------------------------- a tiny network

def _pool(t):
  b, h, w, c = t.shape
  return t.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))


def _toy_net(blocks=('linear', 'relu_linear', 'relu_pool_linear'), absent=()):
  """Per-pixel blocks: 'linear' x @ W, 'relu_linear' relu(x) @ W, 'relu_pool_linear'
  pool2x2(relu(x)) @ W (halves the resolution), 'identity' x; blocks in `absent` are marked not
  live (and must be identities)."""
  widths = {'linear': 3, 'relu_linear': 3, 'relu_pool_linear': 3}  # full rank: no nan entropy

  def init(key, row=None, kind=None):
    params, cin = [], 3
    for i, b in enumerate(blocks):
      cout = widths.get(b, cin)
      params.append(jax.random.normal(jax.random.fold_in(key, i), (cin, cout)) / np.sqrt(cin))
      cin = cout
    return params

  def apply(params, row, x, stage_features=False, stage_shifts=None, **_):
    t, feats = x, []
    for i, (b, w) in enumerate(zip(blocks, params)):
      if b == 'linear':
        t = t @ w
      elif b == 'relu_linear':
        t = jax.nn.relu(t) @ w
      elif b == 'relu_pool_linear':
        t = _pool(jax.nn.relu(t)) @ w
      feats.append((t, jnp.bool_(i not in absent)))
      if stage_shifts is not None:
        t = jax.lax.stop_gradient(t) + stage_shifts[i]
    return interface.Outputs(jnp.zeros((x.shape[0], 2)), stage_features=tuple(feats))

  return interface.Net(init=init, apply=apply, fan_in=lambda row: {}, input_shape=(4, 4, 3),
                       num_classes=2)


def _entropy64(f):
  f = np.asarray(f, np.float64).reshape(-1, f.shape[-1])
  f = f - f.mean(0)
  s = np.linalg.eigvalsh(f.T @ f / f.shape[0])
  p = s / s.sum()
  return float(np.sum(-p * np.log(p + 1e-8)))


def _unshuffle_torch_order(g, r):
  """PixelUnshuffle on NHWC: channel c * r * r + i * r + j, as PyTorch orders it."""
  b, h, w, c = g.shape
  return g.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 5, 2, 4).reshape(
      b, h // r, w // r, c * r * r)


def _reference(params, x, blocks):
  """float64 numpy: (expressivity, progressivity, trainability) with the same Rademacher draws."""
  ws = [np.asarray(w, np.float64) for w in params]
  t, feats, ins = np.asarray(x, np.float64), [], []
  for b, w in zip(blocks, ws):
    ins.append(t)
    if b == 'linear':
      t = t @ w
    elif b == 'relu_linear':
      t = np.maximum(t, 0) @ w
    elif b == 'relu_pool_linear':
      bb, h, ww, c = t.shape
      t = np.maximum(t, 0).reshape(bb, h // 2, 2, ww // 2, 2, c).mean((2, 4)) @ w
    feats.append(t)
  ent = np.array([_entropy64(f) for f in feats])
  keys = jax.random.split(KEY, len(feats))
  scores = []
  for i in range(1, len(feats)):
    g_out = np.asarray(jax.random.rademacher(keys[i], feats[i].shape, jnp.float32), np.float64)
    pre = ins[i]
    if blocks[i] == 'relu_linear':
      g_in = (g_out @ ws[i].T) * (pre > 0)
    elif blocks[i] == 'relu_pool_linear':
      g_h = g_out @ ws[i].T
      g_in = np.repeat(np.repeat(g_h, 2, 1), 2, 2) / 4 * (pre > 0)
    else:  # identity
      g_in = g_out
    if g_in.shape == g_out.shape and np.all(g_in == g_out):
      scores.append(-np.inf)
      continue
    if g_in.shape[1] != g_out.shape[1]:
      g_in = _unshuffle_torch_order(g_in, g_in.shape[1] // g_out.shape[1])
    a, b_ = g_in.reshape(-1, g_in.shape[-1]), g_out.reshape(-1, g_out.shape[-1])
    s = np.linalg.svd(a.T @ b_ / b_.shape[0], compute_uv=False).max()
    scores.append(-s - 1 / (s + 1e-6) + 2)
  return ent.sum(), np.min(ent[1:] - ent[:-1]), np.mean(scores)


def _terms(net, params, x=X):
  out = jax.jit(lambda p: az_nas.az_terms(net, p, None, x, KEY))(params)
  return {k: (float(v), int(f)) for k, (v, f) in out.items()}


def test_terms_match_float64_reference():
  blocks = ('linear', 'relu_linear', 'relu_pool_linear', 'relu_linear')
  net = _toy_net(blocks)
  params = net.init(jax.random.PRNGKey(1))
  want = _reference(params, X, blocks)
  got = _terms(net, params)
  for name, value in zip(az_nas.TERMS, want):
    assert got[name][1] == 0, name
    np.testing.assert_allclose(got[name][0], value, rtol=2e-4, atol=1e-5, err_msg=name)


def test_one_term_alone_equals_all_together():
  net = _toy_net()
  params = net.init(jax.random.PRNGKey(1))
  together = _terms(net, params)
  for name in az_nas.TERMS:
    alone = jax.jit(lambda p: az_nas.az_terms(net, p, None, X, KEY, (name,)))(params)[name]
    np.testing.assert_allclose(float(alone[0]), together[name][0], rtol=1e-6)


def test_identity_block_makes_trainability_minus_inf():
  blocks = ('linear', 'relu_linear', 'identity')
  net = _toy_net(blocks)
  params = net.init(jax.random.PRNGKey(1))
  got = _terms(net, params)
  assert got['az_trainability'] == (-np.inf, int(ntk.SINGULAR))
  assert np.isneginf(_reference(params, X, blocks)[2])
  assert got['az_expressivity'][1] == 0


def test_absent_blocks_are_left_out():
  """An absent block (identity, unit mask False) between two present ones changes nothing."""
  with_gap = _toy_net(('linear', 'relu_linear', 'identity', 'relu_pool_linear'), absent=(2,))
  without = _toy_net(('linear', 'relu_linear', 'relu_pool_linear'))
  p = with_gap.init(jax.random.PRNGKey(1))
  got, want = _terms(with_gap, p), _terms(without, [p[0], p[1], p[3]])
  for name in ('az_expressivity', 'az_progressivity'):
    np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-6, err_msg=name)
  # trainability draws its projections per block index, so only its structure is comparable
  assert got['az_trainability'][1] == 0 and np.isfinite(got['az_trainability'][0])


def test_space_without_stage_features_gets_one_line_error():
  def apply(params, row, x, **_):
    return interface.Outputs(jnp.zeros((x.shape[0], 2)))
  net = interface.Net(init=lambda *a, **k: {}, apply=apply, fan_in=lambda row: {},
                      input_shape=(4, 4, 3), num_classes=2)
  with pytest.raises(proxies.ProxyError, match='stage_features') as err:
    az_nas.az_terms(net, {}, None, X, KEY)
  assert '\n' not in str(err.value)


def test_az_nas_aggregate_is_the_logrank_of_the_four_terms():
  named = aggregate.parse('az_nas')
  spelled = aggregate.parse('agg:az_expressivity+az_progressivity+az_trainability+flops:logrank')
  assert (named.components, named.method) == (spelled.components, spelled.method)
  cols = {'az_expressivity': [1., 3., 2.], 'az_progressivity': [0., -1., 2.],
          'az_trainability': [-2., -1., -np.inf], 'flops': [10., 30., 20.]}
  score, flagged = aggregate.compute(named, cols)
  n = 3.
  want = (np.log(np.array([1, 3, 2]) / n) + np.log(np.array([2, 1, 3]) / n)
          + np.log(np.array([2, 3, 1]) / n) + np.log(np.array([1, 3, 2]) / n))
  np.testing.assert_allclose(score, want)
  assert flagged == [[], [], ['az_trainability']]


# ----------------------------------------------------------------------------- spaces

# 16 x 16 inputs: the last stage's 16 channels see 4 x 4 x 4 positions, a full-rank covariance
# (at 8 x 8 they see 16, and its rounding-level eigenvalues may come out negative: nan entropy)
SMALL = proxies.ScoreSettings(zc_batch=4, zc_width=4, zc_cells=1, zc_input_size=16)
NAMES = 'az_expressivity,az_progressivity,az_trainability'
# conv-heavy, all-skip, an identity cell (node 3 <- skip from the input only), pools
OPS = np.array([[3, 2, 4, 1, 3, 0], [1, 1, 1, 1, 1, 1], [3, 3, 3, 1, 0, 0], [4, 0, 2, 0, 4, 3]])


@pytest.mark.slow  # (cold on 2 cores: 25-40 s; the default suite must stay under 10 min)
def test_nb201_batched_equals_one_at_a_time():
  """vmap over 4 candidates (the dense supernet at one-hot masks, one jitted call) equals each
  arch alone on its own single path (lax.switch per edge, scan over cells)."""
  space = registry.get('nb201')
  one_device = jax.devices()[:1]
  batched = scoring.Scorer(space, NAMES, dataclasses.replace(SMALL, single_path=False), seed=5,
                           batch_candidates=4, devices=one_device).score_archs((), OPS)
  single = scoring.Scorer(space, NAMES, SMALL, seed=5, batch_candidates=1,
                          devices=one_device).score_archs((), OPS)
  assert batched.keys() == single.keys()
  for name in batched:
    np.testing.assert_allclose(batched[name], single[name], rtol=1e-4, atol=1e-6, err_msg=name)
  flags = batched['az_trainability_flag']
  assert list(flags[[0, 1, 3]]) == [0, 0, 0] and flags[2] == ntk.SINGULAR
  assert np.isneginf(batched['az_trainability'][2])


def test_nb201_stage_features_are_the_block_outputs():
  """Stem, cells and reductions in order; shifts leave the values and every other output as
  they were, and the shift gradient is each block's own Jacobian (a skip-only cell: identity)."""
  space = registry.get('nb201')
  net = space.proxy_nets((), dataclasses.replace(SMALL, zc_cells=2))['zc']
  row = jnp.asarray([3, 3, 3, 1, 0, 0])
  params = net.init(jax.random.PRNGKey(0), row, 'kaiming_normal')
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  assert jax.eval_shape(lambda: net.apply(params, row, x)).stage_features == ()
  shapes = [f.shape for f, _ in jax.eval_shape(
      lambda: net.apply(params, row, x, stage_features=True)).stage_features]
  assert shapes == [(2, 8, 8, 4)] * 3 + [(2, 4, 4, 8)] * 3 + [(2, 2, 2, 16)] * 3
  shifts = tuple(jnp.zeros(s) for s in shapes)
  f = lambda sh: [m for m, _ in net.apply(params, row, x, stage_features=True,
                                          stage_shifts=sh).stage_features]
  g = [jnp.zeros(s) for s in shapes]
  g[2] = jnp.ones(shapes[2])  # cell 2 of stage 0 is the identity: J^T g = g on shift 1 only

  @jax.jit
  def run(shifts, g):
    plain = net.apply(params, row, x)
    out = net.apply(params, row, x, stage_features=True)
    feats, pullback = jax.vjp(f, shifts)
    return plain.logits, out, feats, pullback(g)[0]

  plain_logits, out, feats, grads = run(shifts, g)
  np.testing.assert_array_equal(out.logits, plain_logits)
  for a, (b, _) in zip(feats, out.stage_features):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(grads[1], g[2])
  assert all(float(jnp.abs(d).max()) == 0 for i, d in enumerate(grads) if i != 1)


def test_tinycnn_runs_and_skips_layers_past_its_depth():
  space = registry.get('tinycnn')
  archs = space.sample(np.random.default_rng(0), 3)
  s = dataclasses.replace(SMALL, zc_batch=4)
  got = scoring.Scorer(space, NAMES, s, seed=1, batch_candidates=3,
                       devices=jax.devices()[:1]).score_archs((), archs)
  for name in NAMES.split(','):
    assert np.all(got[name + '_flag'] == 0), (name, archs)
    assert np.all(np.isfinite(got[name])), name
  # a 1-layer arch has no pair of blocks: progressivity and trainability are undefined
  one = [a for a in space.enumerate() if len(a.filters) == 1][:1]
  got = scoring.Scorer(space, NAMES, s, seed=1, batch_candidates=1,
                       devices=jax.devices()[:1]).score_archs((), one)
  assert got['az_expressivity_flag'][0] == 0
  assert got['az_progressivity_flag'][0] == got['az_trainability_flag'][0] == ntk.NONFINITE


def _mbv2_case():
  space = registry.get('mbv2')
  arch = dataclasses.replace(space.sample(np.random.default_rng(0), 1)[0], width=0.5,
                             resolution=96)
  net = space.net(space.group(arch))
  row = jnp.asarray(space.to_array([arch])[0])
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  return space, arch, net, row, x


def test_mbv2_fills_stage_features_with_absent_blocks_marked():
  """Traced only (compiling the padded MBV2 takes about a minute on 2 cores: test_mbv2_runs)."""
  space, arch, net, row, x = _mbv2_case()
  params = jax.eval_shape(lambda: net.init(KEY, row, 'kaiming_normal'))
  live = []

  def f(p):
    out = net.apply(p, row, x, stage_features=True)
    live.extend(out.stage_features)
    return az_nas.az_terms(net, p, row, x, KEY)

  shapes = jax.eval_shape(f, params)
  assert set(shapes) == set(az_nas.TERMS)
  assert len(live) == 1 + 5 * 4  # stem, then MAX_DEPTH blocks per stage
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  units = jax.jit(lambda r: [u for _, u in net.apply(zeros, r, x, stage_features=True)
                             .stage_features])(row)
  present = [bool(u) for u in units]
  assert present == [True] + [j < len(b) for b in arch.blocks for j in range(4)]


@pytest.mark.slow
def test_mbv2_runs():
  _, _, net, row, x = _mbv2_case()
  out = jax.jit(lambda r: az_nas.az_terms(net, net.init(KEY, r, 'kaiming_normal'), r, x, KEY))(row)
  for name, (value, flag) in out.items():
    assert int(flag) == 0 and np.isfinite(float(value)), name

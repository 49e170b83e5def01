"""The plug-in search-space interface: tinycnn's network contracts, batched == single scoring,
one-line errors, and a toy space registered here that scores, costs and searches with no code
outside this file."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hardware
from engine.proxies import ntk as ntk_lib
from engine import proxies, scoring, search
from engine.proxies import zero_cost as zc
from hardware import graph as graph_lib
from search_spaces import interface as space_lib
from search_spaces import registry
from search_spaces import tinycnn

ARCHS = ('f8k3-relu-max', 'f16k5-f8k3-swish-avg', 'f32k5-f16k3-f8k5-relu-avg')
SMALL = proxies.ScoreSettings(zc_batch=8, ntk_batch=4, ntk_repeats=1, lr_segments=2)


def _score(space, archs, names):
  """({name: values}, {name: flags}) of `archs` (one group) in batches of 2."""
  out = scoring.Scorer(space, names, SMALL, 0, None, batch_candidates=2,
                       devices=jax.devices()[:1]).score_archs((), archs)
  return ({n: out[n] for n in names},
          {n: out.get(n + '_flag', np.zeros(len(archs), np.int32)) for n in names})


def _x(n=4, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, 32, 32, 3))


@pytest.mark.parametrize('code', ARCHS)
def test_tinycnn_masked_equals_concrete(code):
  space = registry.get('tinycnn')
  arch = space.decode(code)
  row = space.to_array([arch])[0]
  params = tinycnn.init(jax.random.PRNGKey(1), row)
  masked = tinycnn.apply(params, row, _x())
  concrete = tinycnn.apply_concrete(tinycnn.concrete_params(params, arch), arch, _x())
  np.testing.assert_allclose(masked.logits, concrete.logits, rtol=1e-5, atol=1e-5)
  assert tinycnn.from_array(row) == arch


@pytest.mark.parametrize('code', ARCHS)
def test_tinycnn_lowering_counts_equal_network(code):
  """The lowered graph's params and MACs are those of the arch's own network."""
  arch = tinycnn.decode(code)
  init, apply = tinycnn.train_net(arch)
  params = init(jax.random.PRNGKey(0))
  stats = graph_lib.node_stats(tinycnn.lower(arch))
  assert stats.params.sum() == sum(v.size for v in jax.tree.leaves(params))
  macs = 0
  size = 32
  for i, (f, k) in enumerate(zip(arch.filters, arch.kernels)):
    cin = 3 if i == 0 else arch.filters[i - 1]
    macs += size * size * k * k * cin * f
    size //= 2
  macs += size * size * arch.filters[-1] * 10
  assert stats.macs.sum() == macs
  assert apply(params, _x(2)).shape == (2, 10)


@pytest.mark.slow  # (cold on 2 cores: 25-40 s; the default suite must stay under 10 min)
def test_masked_proxies_equal_concrete_reference():
  """Each proxy on the padded, masked network equals the same proxy on the arch's own network."""
  space = registry.get('tinycnn')
  arch = space.decode('f16k5-f8k3-relu-avg')
  row = jnp.asarray(space.to_array([arch])[0])
  net = space.net()
  params = net.init(jax.random.PRNGKey(2), row)
  own = tinycnn.concrete_params(params, arch)
  concrete = space_lib.Net(
      init=lambda key, r, kind='torch_default': tinycnn.concrete_params(
          tinycnn.init(key, row, kind), arch),
      apply=lambda p, r, x, probes=None, bn='batch', **_: tinycnn.apply_concrete(
          p, arch, x, probes),
      fan_in=lambda r: {'conv0': 75, 'conv1': 9 * 16, 'fc': 64 * 8},
      input_shape=(32, 32, 3), num_classes=10, example_row=row)
  x = _x(8)
  labels = jnp.arange(8) % 10
  fast = zc.gradient_proxies(net, params, row, x, labels)
  ref = zc.gradient_proxies(concrete, own, row, x, labels)
  for name in zc.GRADIENT_GROUP:
    np.testing.assert_allclose(fast[name][0], ref[name][0], rtol=2e-4, err_msg=name)
  for fn in (zc.synflow, zc.jacob_cov, zc.nwot):
    np.testing.assert_allclose(fn(net, params, row, x)[0], fn(concrete, own, row, x)[0],
                               rtol=2e-4, err_msg=fn.__name__)
  kappa = lambda n, p: ntk_lib.condition_number(ntk_lib.ntk_gram(n, p, row, x[:4]))[0]
  np.testing.assert_allclose(kappa(net, params), kappa(concrete, own), rtol=2e-3)


def test_batched_scores_equal_one_at_a_time():
  space = registry.get('tinycnn')
  names = ['params', 'grad_norm', 'snip', 'synflow', 'nwot', 'zen', 'linear_regions']
  together, flags = _score(space, list(ARCHS), names)
  for i, code in enumerate(ARCHS):
    one, _ = _score(space, [code], names)
    for n in names:
      np.testing.assert_allclose(together[n][i], one[n][0], rtol=1e-5, equal_nan=True,
                                 err_msg=f'{n} {code}')
  # linear regions are undefined on the swish arch: nan and flagged, never a number
  assert np.isnan(together['linear_regions'][1]) and flags['linear_regions'][1] != 0
  assert np.isfinite(together['linear_regions'][[0, 2]]).all()


@pytest.mark.parametrize('bad', ['f8k9-relu-max', 'f16k3-tanh-max', 'nonsense', ''])
def test_bad_encodings_are_one_line_errors(bad):
  space = registry.get('tinycnn')
  with pytest.raises(ValueError) as err:
    space.decode(bad)
  assert '\n' not in str(err.value) and 'expected' in str(err.value)


def test_unknown_space_names_the_registered_ones():
  with pytest.raises(registry.SpaceError, match='tinycnn'):
    registry.get('nope')


# ----------------------------------------------------------------------------- a toy space
# A one-hidden-layer MLP on 8x8 grey images, hidden width 4 or 8: everything it needs is here.

WIDTHS = (4, 8)


def _toy_lower(arch, input_shape=(8, 8, 1), num_classes=10):
  b = graph_lib.GraphBuilder(f'mlp{arch}')
  x = b.reshape(b.input(input_shape), name='flatten')
  b.dense(b.dense(x, arch, activation='relu', name='hidden'), num_classes, name='fc')
  return b.build()


def _toy_net(group=(), input_shape=(8, 8, 1), num_classes=10):
  def init(key, row, kind='torch_default'):
    k1, k2 = jax.random.split(key)
    live = jnp.arange(8) < row[0]
    w1 = jax.random.uniform(k1, (64, 8), minval=-1, maxval=1) / 8.0
    w2 = jax.random.uniform(k2, (8, num_classes), minval=-1, maxval=1) / jnp.sqrt(row[0])
    return {'hidden': {'w': w1 * live, 'b': jnp.zeros(8)},
            'fc': {'w': w2 * live[:, None], 'b': jnp.zeros(num_classes)}}

  def apply(params, row, x, probes=None, bn='batch', **_):
    live = jnp.arange(8) < row[0]
    pre = x.reshape(x.shape[0], -1) @ (params['hidden']['w'] * live) + params['hidden']['b']
    if probes is not None:
      pre = pre * probes['hidden']['w']
    h = jax.nn.relu(pre)
    logits = h @ (params['fc']['w'] * live[:, None]) + params['fc']['b']
    if probes is not None:
      logits = logits * probes['fc']['w']
    return space_lib.Outputs(logits, ((pre, live),), jnp.asarray(True), h, jnp.zeros(()))

  return space_lib.Net(init, apply, lambda row: {'hidden': 64, 'fc': row[0]}, input_shape,
                       num_classes, example_row=np.array([8], np.int32))


@pytest.fixture
def toy_space():
  space = registry.register(space_lib.SearchSpace(
      name='toy_mlp', summary='test only', decode=lambda s: int(s.removeprefix('mlp')),
      encode=lambda a: f'mlp{a}', sample=lambda rng, n: list(rng.choice(WIDTHS, n)),
      enumerate=lambda: list(WIDTHS), to_array=lambda archs: np.array([[a] for a in archs],
                                                                      np.int32),
      net=_toy_net, lower=_toy_lower, input_shape=(8, 8, 1),
      mutate=lambda a, rng: 8 if a == 4 else 4))
  yield space
  registry.unregister('toy_mlp')


def test_toy_space_scores_costs_and_searches(toy_space, tmp_path):
  values, flags = _score(toy_space, ['mlp4', 'mlp8'],
                         ['params', 'grad_norm', 'nwot', 'synflow'])
  assert values['params'].tolist() == [64 * 4 + 4 + 4 * 10 + 10, 64 * 8 + 8 + 8 * 10 + 10]
  assert np.isfinite(values['grad_norm']).all() and (flags['grad_norm'] == 0).all()
  rows = hardware.cost_rows({'mlp4': toy_space.lower(4)}, 'stm32f746', 'cmsis-nn')
  # the MLP 64 -> 4 -> 10 costs its own MACs and params (not a bound: the exact counts)
  assert rows[0]['macs'] == 64 * 4 + 4 * 10 and rows[0]['params'] == values['params'][0]
  assert rows[0]['latency_ms'] < hardware.cost_rows({'mlp8': toy_space.lower(8)}, 'stm32f746',
                                                    'cmsis-nn')[0]['latency_ms']
  # the one searcher library serves a space with no relaxation: rerank, random, evolution
  table = search.build_table(toy_space, search.Constraints(), toy_space.enumerate(),
                             toy_space.input_shape, toy_space.num_classes)
  config = types.SimpleNamespace(
      dataset='cifar10', init='torch_default', zc_batch=8, ntk_batch=4, repeats=1,
      ntk_width=16, ntk_cells=5, zc_width=16, zc_cells=5, cotangent_chunk=0, sparse=False,
      single_path=True, zico_splits=2, batch_candidates=2, candidate_chunk=1)
  problem = search.Problem(table, search.make_scorer(toy_space, ['synflow'], config, 0, None),
                           'synflow', search.Weights())
  options = search.Options(batch=2, pool=2, random_samples=2, population=2, tournament=1,
                           evolution_samples=2)
  best = search.search('rerank', problem, 0, options)
  assert best.arch in (4, 8) and best.scored == 2
  evolved = search.search('evolution', problem, 0, options)
  assert evolved.scored == 2  # the start and its one mutant
  assert evolved.arch == best.arch  # both saw the whole space
  with pytest.raises(search.SearchError, match='relaxed toy_mlp'):
    search.check('prune', problem)


# ----------------------------------------------------------------------------- MobileNetV2

MBV2 = ('w0.5-r96-k3e6.k5e3-k7e4.k3e3.k3e3-k3e3.k3e3-k5e6.k5e6-k3e4.k7e3',
        'w0.5-r96-k7e3.k3e6.k5e4.k7e6-k3e3.k3e3-k5e4.k5e4.k3e3-k7e6.k7e6-k3e3.k3e3.k5e6.k7e4')


@pytest.mark.parametrize('code', MBV2)
def test_mbv2_lowering_weights_equal_the_masked_network(code):
  from search_spaces import mbv2
  space = registry.get('mbv2')
  arch = space.decode(code)
  assert space.encode(arch) == code
  row = jnp.asarray(space.to_array([arch])[0])
  masks = mbv2._arch_masks(row, space.group(arch))
  shapes = mbv2.padded_shapes(space.group(arch))
  live = 0
  for name, (mask, _, active) in masks.items():
    if bool(active):
      full = np.ones(shapes[name]['w'], bool)
      live += int(full.sum() if mask is None else np.broadcast_to(mask, full.shape).sum())
  assert graph_lib.node_stats(space.lower(arch)).weights.sum() == live


@pytest.mark.slow  # (cold on 2 cores: 25-40 s; the default suite must stay under 10 min)
def test_mbv2_batched_proxies_equal_one_at_a_time():
  """The scorer's compiled batch (lax.map over rows) equals each arch alone, on a small group."""
  from search_spaces import mbv2
  space = registry.get('mbv2')
  net = mbv2.make_net((0.5, 32))
  rows = jnp.asarray(space.to_array([space.decode(c) for c in MBV2]))
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  inputs = {'zc': x, 'zc_labels': jnp.arange(8) % 10,
            'zc_init': jax.random.split(jax.random.PRNGKey(0), 1)}
  names = ['nwot', 'synflow']
  fn = jax.jit(scoring.batch_score_fn(proxies.get(names), SMALL, {'zc': net},
                                      devices=jax.devices()[:1]))
  keys = scoring.row_keys(0, np.asarray(rows))
  together = fn(rows, keys, inputs)
  for i in range(len(MBV2)):
    pick = jnp.array([i, i])
    alone = fn(rows[pick], keys[pick], inputs)  # the same compiled shape, this arch alone
    for n in names:
      np.testing.assert_allclose(together[n][i], alone[n][0], rtol=1e-5, err_msg=n)
  assert not np.allclose(together['nwot'][0], together['nwot'][1])


@pytest.mark.parametrize('bad', ['w0.3-r96-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3',
                                 'w0.5-r96-k3e3', 'w0.5-r96-k9e3.k3e3-k3e3.k3e3-k3e3.k3e3-'
                                 'k3e3.k3e3-k3e3.k3e3', 'junk'])
def test_mbv2_bad_encodings_are_one_line_errors(bad):
  with pytest.raises(ValueError) as err:
    registry.get('mbv2').decode(bad)
  assert '\n' not in str(err.value) and 'expected' in str(err.value)


@pytest.mark.parametrize('code', MBV2)
def test_mbv2_tflm_arena_matches_the_prediction(code):
  """The arch's graph written as an int8 .tflite (random weights) and run in TFLite Micro: its
  arena is within 5% of the memory model's prediction."""
  from deploy import graph_tflite
  from deploy import runtimes
  from hardware import memory
  graph = registry.get('mbv2').lower(code)
  model = graph_tflite.to_tflite(graph)
  measured = runtimes.tflm_arena(model, np.zeros((1,) + graph.nodes[0].shape, np.int8))
  predicted = memory.tflm_arena(graph)
  assert abs(measured['total'] / predicted['total'] - 1) < 0.05
  assert measured['head'] == predicted['planned']


@pytest.mark.parametrize('name', ['tinycnn', 'mbv2'])
def test_archs_come_from_strings_files_and_random_draws(name, tmp_path):
  space = registry.get(name)
  archs = space.sample(np.random.default_rng(0), 3)
  codes = [space.encode(a) for a in archs]
  assert [space.encode(a) for a in space.parse(','.join(codes))] == codes
  listed = tmp_path / 'archs.txt'
  listed.write_text(f'# picked by hand\n{codes[0]}\n\n  {codes[1]}  \n{codes[2]}\n')
  assert [space.encode(a) for a in space.parse(str(listed))] == codes
  drawn = [space.encode(a) for a in space.parse('random:3', seed=5)]
  assert drawn == [space.encode(a) for a in space.parse('random:3', seed=5)] and len(drawn) == 3
  listed.write_text(f'{codes[0]}\nnot-an-arch\n')
  with pytest.raises(ValueError, match=r'archs.txt:2: '):
    space.parse(str(listed))
  listed.write_text('# nothing\n')
  with pytest.raises(ValueError, match='lists no archs'):
    space.parse(str(listed))
  with pytest.raises(ValueError, match='no such file'):
    space.parse(str(tmp_path / 'missing.txt'))
  for bad in ('random:0', 'random:x', 'random:-2'):
    with pytest.raises(ValueError, match='random:N with N a positive integer'):
      space.parse(bad)

"""VKDNW (engine.proxies.vkdnw): a float64 numpy reference, invariances, batching, other spaces."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import proxies, scoring
from engine.proxies import ntk
from engine.proxies import vkdnw as vk
from search_spaces import nb201, registry
from search_spaces.nb201 import space as nb201_space

# stem, one cell and the head; 4 channels, 6x6 inputs (compile time rules on 2 CPU cores)
SETTINGS = proxies.ScoreSettings(zc_batch=6, zc_width=4, zc_cells=1, zc_input_size=6, zc_depth=1)
# conv-heavy with every conv reachable; all-conv3; all-skip (convs of the reduction only); mixed
OPS = np.array([[3, 2, 4, 1, 3, 2], [3, 3, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1], [4, 0, 2, 0, 4, 3]])
NB201 = registry.get('nb201')


@functools.lru_cache(maxsize=None)
def _tiny():
  config = nb201_space.proxy_configs(SETTINGS)['zc']
  net = nb201_space.make_net(config)
  params = net.init(jax.random.PRNGKey(0), None, 'kaiming_normal')
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 6, 6, 3))
  return config, net, params, x


@functools.lru_cache(maxsize=None)
def _score_fn():
  _, net, _, _ = _tiny()
  return jax.jit(lambda p, r, x: vk.vkdnw(net, p, r, x))


def _reference(ops):
  """Per-sample gradients of each logit w.r.t. all parameters (jax, float32), then in float64
  numpy: the first element of each PyTorch parameter tensor the arch has (conv weights, BN
  scales and shifts, the classifier's weight and bias; a conv that cannot reach the output
  included) -> J_n -> FIM -> eigenvalues -> deciles -> entropy."""
  _, net, params, x = _tiny()
  row = jnp.asarray(ops, jnp.int32)
  classes = net.num_classes
  grad = jax.jit(lambda xi, c: jax.grad(
      lambda p: net.apply(p, row, xi[None], bn='identity').logits[0, c])(params))
  rows = []
  for n in range(x.shape[0]):
    per_class = []
    for c in range(classes):
      g = grad(x[n], c)
      cols = [g['stem']['conv'][0, 0, 0, 0], g['stem']['bn_scale'][0], g['stem']['bn_bias'][0]]
      for e, op in enumerate(ops):  # the cell's convs: the conv its edge's op is, with its BN
        if op in (nb201.CONV1, nb201.CONV3):
          k = '1' if op == nb201.CONV1 else '3'
          cell = g['stage0']
          cols += [cell['conv' + k][0, e, 0, 0, 0, 0], cell[f'bn{k}_scale'][0, e, 0],
                   cell[f'bn{k}_bias'][0, e, 0]]
      head = g['head']
      cols += [head['bn_scale'][0], head['bn_bias'][0], head['fc'][0, 0], head['fc_bias'][0]]
      per_class.append(np.array(cols, np.float64))
    rows.append(np.stack(per_class))
  jac = np.stack(rows)  # [B, C, P]
  logits = np.asarray(net.apply(params, row, x, bn='identity').logits, np.float64)
  e = np.exp(logits - logits.max(1, keepdims=True))
  p = e / e.sum(1, keepdims=True) * (1 - vk.ALPHA) + vk.ALPHA / classes
  fim = np.mean([j.T @ (np.diag(q) - np.outer(q, q)) @ j for j, q in zip(jac, p)], axis=0)
  lam = np.abs(np.linalg.eigvalsh(fim))
  q = np.quantile(lam, np.arange(1, 10) / 10)
  t = q / (np.abs(q).sum() + 1e-10)
  return -np.sum(t * np.log(t + 1e-10)), jac


# convs on edges 0, 1, 4, 5; [3, 2, 4, 1, 3, 0]: the conv on edge 1 (node 2) cannot reach the
# output (edge 5 is none), its zero eigenvalues count as in the authors' PyTorch network
@pytest.mark.parametrize('ops', [OPS[0], [3, 2, 4, 1, 3, 0], OPS[2]])
def test_matches_float64_reference(ops):
  _, _, params, x = _tiny()
  expected, jac = _reference(list(ops))
  value, flag = _score_fn()(params, jnp.asarray(ops, jnp.int32), x)
  assert int(flag) == ntk.OK
  np.testing.assert_allclose(float(value), expected, rtol=2e-4)
  convs = sum(op in (nb201.CONV1, nb201.CONV3) for op in ops)
  assert jac.shape[-1] == 3 + 3 * convs + 4
  if ops[5] == nb201.NONE:  # columns 6-8: edge 1's conv1 weight, BN scale and shift
    assert np.all(jac[..., 6:9] == 0)


def test_quantiles_are_over_the_active_block_only():
  eig = jnp.asarray([0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0])
  for n in (1, 4):
    np.testing.assert_allclose(vk.quantiles(eig, jnp.int32(n)),
                               np.quantile(np.asarray(eig)[-n:], np.arange(1, 10) / 10),
                               rtol=1e-6)


def test_invariances():
  """Sample order leaves the FIM (a batch mean) as it is; weights of ops the arch does not have
  are not in it."""
  _, _, params, x = _tiny()
  f = _score_fn()
  row = jnp.asarray([4, 0, 3, 0, 4, 3], jnp.int32)  # no nor_conv_1x1 in the cell
  value = float(f(params, row, x)[0])
  np.testing.assert_allclose(float(f(params, row, x[::-1])[0]), value, rtol=1e-5)
  cell = params['stage0']
  other = dict(params, stage0=dict(cell, conv1=cell['conv1'] * 3 + 1,
                                   bn1_scale=cell['bn1_scale'] + 1))
  assert float(f(other, row, x)[0]) == value


def test_spectrum_of_a_repeated_batch_and_of_zero_columns():
  """A batch repeated gives the same FIM; all-zero (inactive) columns only add zeros, which the
  quantiles skip: the score equals that of the active columns alone."""
  rng = np.random.default_rng(0)
  jac = jnp.asarray(rng.standard_normal((5, 10, 7)), jnp.float32)
  logits = jnp.asarray(rng.standard_normal((5, 10)), jnp.float32)
  score = lambda j, l, active: vk.entropy(vk.quantiles(*vk.spectrum(vk.fisher_root(j, l), active)))
  on = jnp.ones(7, bool)
  value = float(score(jac, logits, on))
  twice = float(score(jnp.concatenate([jac, jac]), jnp.concatenate([logits, logits]), on))
  np.testing.assert_allclose(twice, value, rtol=1e-5)
  padded = jnp.concatenate([jac, jnp.zeros((5, 10, 3))], -1)
  np.testing.assert_allclose(float(score(padded, logits, jnp.arange(10) < 7)), value, rtol=1e-5)
  with_zeros = float(score(padded, logits, jnp.ones(10, bool)))  # zeros counted: a lower score
  assert with_zeros < value


def test_batched_equals_one_at_a_time():
  """The scorer's jit + vmap over 4 candidates equals the proxy compiled for one arch."""
  _, net, _, _ = _tiny()
  inputs = proxies.make_inputs(proxies.get('vkdnw'), SETTINGS, 3, None,
                               NB201.proxy_nets((), SETTINGS))
  scorer = scoring.Scorer(NB201, ['vkdnw'], SETTINGS, seed=3, batch_candidates=4,
                          devices=jax.devices()[:1])
  scorer.set_inputs((), inputs)
  batched = scorer.score_archs((), OPS)
  params = net.init(inputs['zc_init'][0], None, 'kaiming_normal')
  single = [float(_score_fn()(params, jnp.asarray(ops, jnp.int32), jnp.asarray(inputs['zc']))[0])
            for ops in OPS]
  np.testing.assert_allclose(batched['vkdnw'], single, rtol=1e-5)
  assert np.all(batched['vkdnw_flag'] == ntk.OK)
  assert len(set(np.round(batched['vkdnw'], 6))) == len(OPS)
  p = proxies.REGISTRY['vkdnw']
  assert (p.kind, p.needs, p.higher_is_better) == ('network', 'zc', True)


def test_vkdnw_dim_counts_the_pytorch_tensors():
  """aleph: 3 (stem) + 3 per conv of the cell (conv, BN scale, BN shift) + 4 (head BN, fc)."""
  got = scoring.Scorer(NB201, ['vkdnw_dim'], SETTINGS, seed=3, batch_candidates=4,
                       devices=jax.devices()[:1]).score_archs((), OPS)
  np.testing.assert_array_equal(got['vkdnw_dim'],
                                [3 + 3 * 4 + 4, 3 + 3 * 6 + 4, 7, 3 + 3 * 2 + 4])


def test_runs_on_tinycnn():
  space = registry.get('tinycnn')
  archs = space.sample(np.random.default_rng(0), 2)
  s = dataclasses.replace(SETTINGS, zc_batch=4)
  got = scoring.Scorer(space, ['vkdnw'], s, seed=1, batch_candidates=2,
                       devices=jax.devices()[:1]).score_archs((), archs)
  assert np.all(got['vkdnw_flag'] == ntk.OK) and np.all(np.isfinite(got['vkdnw']))


@pytest.mark.slow
def test_traces_on_mbv2():
  """Traced only (compiling the padded MBV2 network takes minutes on 2 CPU cores); even the
  trace of its per-sample Jacobians takes ~40-90 s there, so it is in the slow set."""
  space = registry.get('mbv2')
  arch = dataclasses.replace(space.sample(np.random.default_rng(0), 1)[0], width=0.5,
                             resolution=96)
  net = space.net(space.group(arch))
  row = jnp.asarray(space.to_array([arch])[0])
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), row, 'kaiming_normal'))
  value, flag = jax.eval_shape(lambda p, x: vk.vkdnw(net, p, row, x), params, x)
  assert value.shape == flag.shape == ()

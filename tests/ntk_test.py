"""NTK condition number: masked == single path, variants, chunking and flagged edge cases."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from engine.proxies import ntk
from search_spaces import nb201
from engine.quant import graph_qat
from search_spaces.nb201 import net
from search_spaces.nb201 import space as nb201_space
from nb201_net_test import trained_graph, variables_from_supernet

CONFIG = nb201.NB201Config(C=4, N=1, input_size=8)
NET = nb201_space.make_net(CONFIG)
# Jitted: op-by-op (eager) execution of the unrolled supernet's backward passes takes minutes.
_gram = jax.jit(functools.partial(ntk.ntk_gram, NET),
                static_argnames=('variant', 'cotangent_chunk'))
_condition = jax.jit(functools.partial(ntk.ntk_condition, NET),
                     static_argnames=('variant', 'init', 'cotangent_chunk'))
OPS = (3, 2, 4, 1, 3, 0)


def _setup(ops=OPS, batch=6):
  params = net.init_params(jax.random.PRNGKey(0), CONFIG)
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 8, 8, 3))
  return params, jnp.asarray(nb201.ops_to_mask(ops)), x


def _flax_coupled_gram(params, ops, x):
  """Reference: jacrev of the trained network (NB201's graph in `engine.quant.graph_qat`, fp32,
  batch statistics) w.r.t. its kernels and BN scales, holding the supernet's weights."""
  variables = variables_from_supernet(params, ops, CONFIG)
  model = graph_qat.GraphNetwork(trained_graph(ops, CONFIG), 'fp32')
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  chosen = {jax.tree_util.keystr(p): a for p, a in flat if p[-1].key in ('kernel', 'scale')}

  def summed(chosen_now):
    leaves = [chosen_now.get(jax.tree_util.keystr(p), a) for p, a in flat]
    new = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(variables['params']), leaves)
    out, _ = model.apply({**variables, 'params': new}, x, train=True, mutable=['batch_stats'])
    return out.sum(-1)

  jac = jax.jit(jax.jacrev(summed))(chosen)
  rows = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jax.tree.leaves(jac)], axis=1)
  return rows @ rows.T


class NtkTest(chex.TestCase):

  def test_masked_coupled_ntk_equals_single_path_qat_fp32_ntk(self):
    for ops in (OPS, (3, 3, 3, 3, 3, 3), (1, 2, 0, 4, 2, 1)):
      params, mask, x = _setup(ops)
      gram = _gram(params, mask, x, 'coupled')
      np.testing.assert_allclose(gram, _flax_coupled_gram(params, ops, x), rtol=2e-4, atol=1e-5)

  def test_independent_variant_equals_per_sample_loop_with_fixed_stats(self):
    params, mask, x = _setup()
    gram = _gram(params, mask, x, 'independent')
    weights, rest = ntk.split_weights(NET, params)
    _, stats = net.apply(params, mask, x, CONFIG)
    sample_grad = jax.jit(jax.grad(
        lambda w, xi: net.apply(ntk._merge(w, rest), mask, xi, CONFIG, stats)[0].sum()))
    rows = []
    for i in range(x.shape[0]):
      g = sample_grad(weights, x[i:i + 1])
      rows.append(jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)]))
    rows = jnp.stack(rows)
    np.testing.assert_allclose(gram, rows @ rows.T, rtol=2e-4, atol=1e-5)
    coupled = _gram(params, mask, x, 'coupled')
    assert not np.allclose(gram, coupled, rtol=1e-3)  # the BN coupling really changes Theta

  def test_cotangent_chunks_do_not_change_the_gram(self):
    params, mask, x = _setup()
    full = _gram(params, mask, x, 'coupled')
    for chunk in (4, 3):  # 3 does not divide the batch: the largest divisor below it is used
      np.testing.assert_allclose(_gram(params, mask, x, 'coupled', chunk), full,
                                 rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_condition_number_and_flags(self):
    cond = self.variant(ntk.condition_number)
    kappa, flag = cond(jnp.diag(jnp.array([1.0, 2.0, 8.0])))
    np.testing.assert_allclose(kappa, 8.0, rtol=1e-6)
    assert flag == ntk.OK
    kappa, flag = cond(jnp.diag(jnp.array([0.0, 2.0, 8.0])))
    assert np.isinf(kappa) and flag == ntk.SINGULAR
    kappa, flag = cond(jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]]))
    assert np.isnan(kappa) and flag == ntk.NONFINITE

  def test_repeats_average_kappa_and_the_worst_flag_wins(self):
    _, mask, x = _setup()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    batches = jnp.stack([x, x[::-1] * 2.0])
    kappa, flag = _condition(keys, mask, batches)
    each = [_condition(keys[r:r + 1], mask, batches[r:r + 1]) for r in range(2)]
    assert flag == ntk.OK and all(f == ntk.OK for _, f in each)
    np.testing.assert_allclose(kappa, np.mean([k for k, _ in each]), rtol=1e-5)
    kappa, flag = _condition(keys, mask, batches.at[1, 0, 0, 0, 0].set(jnp.nan))
    assert np.isnan(kappa) and flag == ntk.NONFINITE

  def test_disconnected_cell_is_flagged_singular(self):
    _, mask, x = _setup((0, 0, 0, 0, 0, 0))
    kappa, flag = _condition(jax.random.split(jax.random.PRNGKey(0), 2), mask,
                             jnp.stack([x, x]))
    assert np.isinf(kappa) and flag == ntk.SINGULAR

  def test_nonfinite_input_is_flagged(self):
    _, mask, x = _setup()
    x = x.at[0, 0, 0, 0].set(jnp.nan)
    kappa, flag = _condition(jax.random.split(jax.random.PRNGKey(0), 1), mask, x[None])
    assert np.isnan(kappa) and flag == ntk.NONFINITE


def test_auto_cotangent_chunk_fits_the_budget():
  config = nb201_space.make_net(nb201.NB201Config())  # C=16 at 32x32: 64 KiB per sample
  per_row = ntk.LIVE_ACTIVATIONS * 64 * 32 * 32 * 16 * 4
  assert ntk.auto_cotangent_chunk(config, 64) == ntk.FASTEST_COTANGENT_CHUNK == 16
  assert ntk.auto_cotangent_chunk(config, 8) == 8
  assert ntk.auto_cotangent_chunk(config, 64, budget=10 * per_row) == 10
  assert ntk.auto_cotangent_chunk(config, 64, budget=1) == 1

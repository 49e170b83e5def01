"""The masked supernet: its walks against each other and against the QAT network in fp32 mode
(the kernels it shares with other spaces are tested in kernels_test.py)."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from search_spaces import nb201
from search_spaces.nb201 import net
from search_spaces.nb201 import qat
from search_spaces.nb201 import qat_variables

CONFIG = nb201.NB201Config(C=4, N=2, input_size=8)
ARCHS = [(3, 2, 4, 1, 3, 0), (1, 1, 1, 1, 1, 1), (3, 3, 3, 3, 3, 3), (4, 0, 2, 0, 0, 3)]


def _inputs(batch=6, size=8, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


class SupernetTest(chex.TestCase):

  @chex.variants(with_jit=True)  # eager lax.scan/cond over a whole network is minutes slow
  def test_one_hot_supernet_equals_qat_network_in_fp32(self):
    """The contract replacing the old plain Flax model: QATNetwork in fp32 mode with batch
    statistics (train=True) computes the scoring supernet's single path, same weights."""
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    x = _inputs()
    forward = self.variant(lambda p, m, x: net.apply(p, m, x, CONFIG)[0])
    for ops in ARCHS:
      logits = forward(params, jnp.asarray(nb201.ops_to_mask(ops)), x)
      chex.assert_shape(logits, (6, CONFIG.num_classes))
      variables = qat_variables.variables_from_supernet(params, ops, CONFIG)
      model = qat.QATNetwork(ops, CONFIG, 'fp32')
      ref, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          variables, x)
      np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)

  def test_variables_from_supernet_match_qat_init_structure_and_param_count(self):
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    for ops in ARCHS:
      variables = qat_variables.variables_from_supernet(params, ops, CONFIG)
      fresh = jax.eval_shape(lambda: qat.init_variables(jax.random.PRNGKey(1), ops, CONFIG))
      chex.assert_trees_all_equal_shapes_and_dtypes(fresh, variables)
      count = nb201.count_params(nb201.ops_to_mask(ops), CONFIG)
      assert qat.param_count(variables) == qat.param_count(fresh) == count

  def test_multi_hot_edge_sums_its_active_ops(self):
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 8, 8, CONFIG.C))

    def mixed(m, sparse):
      b = net.Supernet(params, sparse)
      terms = [b.gate(m[op], functools.partial(net._edge_op, b, op, x, ('stage0', 0, 2),
                                               CONFIG.C), x) for op in net.EDGE_OPS]
      return b.add(terms, None, x)

    for sparse in (False, True):
      edge = jax.jit(lambda m: mixed(m, sparse))
      full = edge(jnp.ones(5))
      singles = [edge(jnp.eye(5)[o]) for o in range(5)]
      np.testing.assert_allclose(full, sum(singles), atol=1e-5)
      np.testing.assert_allclose(singles[nb201.NONE], 0.0)
      np.testing.assert_allclose(singles[nb201.SKIP], x)
      soft = edge(jnp.array([0.0, 0.5, 0.0, 0.0, 2.0]))
      np.testing.assert_allclose(soft, 0.5 * singles[1] + 2.0 * singles[4], atol=1e-5)

  @pytest.mark.slow  # (24 s cold; the default suite must stay under 10 min)
  def test_dense_sparse_and_single_path_walks_agree_with_gradients(self):
    config = dataclasses.replace(CONFIG, N=1)  # one cell per stage: five compiles, kept short
    params = net.init_params(jax.random.PRNGKey(0), config)
    x = _inputs()
    labels = jnp.arange(6) % config.num_classes

    def loss(p, mask, sparse):
      logits = net.apply(p, mask, x, config, sparse=sparse)[0]
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    traced = jax.jit(jax.value_and_grad(loss), static_argnums=2)
    # (the concrete-ops walk compiles once per arch: one mixed arch and the disconnected one)
    for ops in ARCHS[:1] + [(0, 0, 0, 0, 0, 0)]:
      mask = nb201.ops_to_mask(ops)
      dense = traced(params, jnp.asarray(mask), False)
      sparse = traced(params, jnp.asarray(mask), True)
      static = jax.jit(jax.value_and_grad(lambda p: loss(p, np.asarray(ops), False)))(params)
      for other in (sparse, static):
        chex.assert_trees_all_close(dense, other, atol=2e-5, rtol=2e-4)

  def test_fixed_stats_reproduce_batch_stats_forward(self):
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    mask = jnp.asarray(nb201.ops_to_mask(ARCHS[0]))
    x = _inputs()
    forward = jax.jit(lambda stats: net.apply(params, mask, x, CONFIG, stats))
    logits, stats = forward(None)
    again, _ = forward(stats)
    # Two compiled programs (statistics computed vs passed in) fuse differently: float32
    # round-off of ~1e-6 on logits of order 1.
    np.testing.assert_allclose(logits, again, rtol=1e-5, atol=1e-5)

  def test_unknown_init_is_rejected(self):
    with pytest.raises(ValueError, match='unknown init'):
      net.init_params(jax.random.PRNGKey(0), CONFIG, 'xavier')

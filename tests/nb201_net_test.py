"""The masked supernet: its walks against each other and against the trained network (NB201's
lowered graph in `engine.quant.graph_qat`) in fp32 mode (the kernels it shares with other spaces are
tested in kernels_test.py)."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.quant import graph_qat
from hardware import graph as graph_lib
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from search_spaces.nb201 import net
from search_spaces.nb201 import space as nb201_space

CONFIG = nb201.NB201Config(C=4, N=2, input_size=8)
ARCHS = [(3, 2, 4, 1, 3, 0), (1, 1, 1, 1, 1, 1), (3, 3, 3, 3, 3, 3), (4, 0, 2, 0, 0, 3)]


class _LayerNames(net.Backend):
  """Walks a single path: the trained graph's module name of every layer -> its walk path."""

  def __init__(self, config):
    self.names = nb201_graph.GraphBackend(graph_lib.GraphBuilder(), config)
    self.paths = {}

  def _layer(self, path, part):
    self.paths[self.names._name(path, part).replace('/', '__')] = path  # graph_qat.module_name

  def input(self, x):
    return x

  def conv(self, t, path, features, k, stride=1, bn=True):
    self._layer(path, 'conv')
    return t

  def relu(self, t, path):
    return t

  def pool(self, t, path, size):
    return t

  def add(self, terms, path, like):
    return like

  def head_bn(self, t, path):
    self._layer(path, 'bn')
    return t

  def global_pool(self, t, path):
    return t

  def dense(self, t, path, features):
    self._layer(path, 'fc')
    return t


def trained_graph(ops, config):
  return nb201_graph.train_graph(np.asarray(ops), config)


def variables_from_supernet(params, ops, config) -> dict:
  """`net.init_params` supernet params -> the variables of the network the trainer runs
  (`engine.quant.graph_qat.GraphNetwork` of NB201's graph, constants kept) with the same weights:
  conv kernels, BN scales and biases, classifier. BN running statistics are mean 0, var 1 (the
  supernet keeps none), activation ranges zeros (uncalibrated)."""
  graph = trained_graph(ops, config)
  fresh = jax.eval_shape(lambda: graph_qat.init_variables(jax.random.PRNGKey(0), graph,
                                                          nb201_space.TRAIN_INITS))
  walk = _LayerNames(config)
  net.network(walk, tuple(int(o) for o in ops), None, config)
  out = {'params': {}, 'batch_stats': {}, 'quant': jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), fresh['quant'])}
  for name in fresh['params']:
    path = walk.paths[name]
    if path == ('head',):
      p = params['head']
      out['params'][name] = {'scale': p['bn_scale'], 'bias': p['bn_bias']}
    elif path == ('classifier',):
      out['params'][name] = {'kernel': params['head']['fc'], 'bias': params['head']['fc_bias']}
    else:
      w, scale, bias = net._conv_leaves(params, path)
      out['params'][name] = {'kernel': w} if scale is None else {
          'kernel': w, 'scale': scale, 'bias': bias}
  for name, st in fresh['batch_stats'].items():
    out['batch_stats'][name] = {'mean': jnp.zeros(st['mean'].shape), 'var': jnp.ones(
        st['var'].shape)}
  return out


def _inputs(batch=6, size=8, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


class SupernetTest(chex.TestCase):

  @chex.variants(with_jit=True)  # eager lax.scan/cond over a whole network is minutes slow
  def test_one_hot_supernet_equals_qat_network_in_fp32(self):
    """The network the trainer runs (NB201's lowered graph in `engine.quant.graph_qat`) in fp32 mode
    with batch statistics (train=True) computes the scoring supernet's single path, same
    weights."""
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    x = _inputs()
    forward = self.variant(lambda p, m, x: net.apply(p, m, x, CONFIG)[0])
    for ops in ARCHS:
      logits = forward(params, jnp.asarray(nb201.ops_to_mask(ops)), x)
      chex.assert_shape(logits, (6, CONFIG.num_classes))
      variables = variables_from_supernet(params, ops, CONFIG)
      model = graph_qat.GraphNetwork(trained_graph(ops, CONFIG), 'fp32')
      ref, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          variables, x)
      np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)

  def test_variables_from_supernet_match_the_trained_init_structure_and_param_count(self):
    params = net.init_params(jax.random.PRNGKey(0), CONFIG)
    count = lambda v: int(sum(a.size for a in jax.tree.leaves(v['params'])))
    for ops in ARCHS:
      variables = variables_from_supernet(params, ops, CONFIG)
      graph = trained_graph(ops, CONFIG)
      fresh = jax.eval_shape(lambda: graph_qat.init_variables(jax.random.PRNGKey(1), graph))
      chex.assert_trees_all_equal_shapes_and_dtypes(fresh, variables)
      # the arch's parameters as NB201 counts them, but for edges whose output never reaches
      # the logits (ARCHS[0]: node 2 feeds only a none edge), which the lowering drops
      live = nb201.ops_to_mask(nb201.without_dead_edges(ops))
      assert count(variables) == count(fresh) == nb201.count_params(live, CONFIG)
    assert nb201.count_params(live, CONFIG) == graph_lib.torch_style_params(graph)

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

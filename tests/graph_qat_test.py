"""Every space's int8 path (engine/quant/graph_qat.py, engine/quant/graph_int.py,
engine/train/trainable.py, deploy/graph_tflite.py): the Flax network of a lowered graph in its
modes, its integer reference (numpy, and compiled by XLA), and the .tflite written from it, held
against each other and against TFLite Micro and LiteRT, bit for bit. NB201's graphs:
deploy_test.py, quant_test.py; here also a graph with every kind of node NB201 lowers to, and
folded constants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deploy import graph_tflite
from deploy import runtimes
from engine.quant import graph_int
from engine.quant import graph_qat
from engine.train import trainable
from hardware import graph as graph_lib
from hardware import memory
from search_spaces import registry

TINY_MAX = ('tinycnn', 'f16k3-f32k5-relu-max')
TINY_AVG = ('tinycnn', 'f8k5-f16k3-f8k3-relu-avg')
MBV2 = ('mbv2', 'w0.5-r96-k5e3.k3e3-k7e3.k3e3-k3e3.k3e3-k5e3.k3e3-k7e3.k3e3')


def _graph(space, arch):
  sp = registry.get(space)
  return sp.lower(sp.decode(arch))


def _calibrated(graph, n=16, seed=0, bn_stats=True):
  """Initial weights, BN statistics of `n` noise images (unless not `bn_stats`: the initial
  mean 0, var 1; one compile less), ranges calibrated on them."""
  v = graph_qat.init_variables(jax.random.key(seed), graph)
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((n,) + graph.nodes[0].shape),
                  jnp.float32)
  for _ in range(3 if bn_stats else 0):
    _, upd = graph_qat.GraphNetwork(graph, 'fp32').apply(v, x, train=True,
                                                          mutable=['batch_stats'])
    v = {**v, **upd}
  return graph_qat.calibrate(v, graph, [x]), np.asarray(x)


@pytest.mark.parametrize('space, arch', [TINY_MAX, MBV2])
def test_trainable_parameters_are_the_hardware_graphs_weights(space, arch):
  graph = _graph(space, arch)
  v = graph_qat.init_variables(jax.random.key(0), graph)
  st = graph_lib.node_stats(graph)
  # a folded BN trains a scale and a shift where the graph stores one bias
  bn_extra = sum(n.shape[2] for n in graph.nodes if n.folded_bn)
  params = sum(a.size for a in jax.tree.leaves(v['params']))
  assert params == int(st.weights.sum() + st.biases.sum()) + bn_extra


@pytest.mark.parametrize('space, arch', [TINY_AVG, pytest.param(*MBV2, marks=pytest.mark.slow)])
def test_folded_equals_float_evaluation(space, arch):
  graph = _graph(space, arch)
  v, x = _calibrated(graph)
  fp32 = graph_qat.GraphNetwork(graph, 'fp32').apply(v, x)
  folded = graph_qat.GraphNetwork(graph, 'folded').apply(v, x)
  np.testing.assert_allclose(folded, fp32, rtol=1e-4, atol=1e-4 * float(jnp.abs(fp32).max()))


@pytest.mark.parametrize('space, arch', [TINY_MAX, TINY_AVG, MBV2])
def test_tflm_equals_the_integer_reference_bit_for_bit(space, arch):
  """The .tflite written from the quantized variables runs in TFLite Micro with the integer
  reference's int8 logits on every image; the reference stays near the fake-quant model."""
  graph = _graph(space, arch)
  small = space == 'tinycnn'  # mbv2: two compiles fewer (each a few seconds on 2 cores)
  v, x = _calibrated(graph, n=16 if small else 4, bn_stats=small)
  ref = graph_int.IntGraph(v, graph)
  logits = ref.logits(x)
  assert len(np.unique(logits)) > 10  # not a saturated, trivially equal output
  np.testing.assert_array_equal(ref.reference_logits(x), logits)  # XLA == numpy
  tflm = runtimes.tflm_run(graph_tflite.to_tflite(graph, ref), ref.quantize_input(x).astype(np.int8))
  np.testing.assert_array_equal(tflm.reshape(logits.shape), logits)
  if not small:
    return
  scale, zp = ref.act(len(graph.nodes) - 1)
  fake = np.asarray(graph_qat.GraphNetwork(graph, 'quant').apply(v, x))
  dequantized = (logits.astype(np.float32) - zp) * scale
  # rounding differences compound through an untrained deep net (mbv2): a few grid steps
  assert np.median(np.abs(dequantized - fake)) / scale <= 4
  assert np.corrcoef(dequantized.ravel(), fake.ravel())[0, 1] > 0.95


def test_litert_reference_kernels_equal_the_reference_with_their_rounding():
  graph = _graph(*TINY_MAX)
  v, x = _calibrated(graph)
  model = graph_tflite.to_tflite(graph, graph_int.IntGraph(v, graph))
  ref = graph_int.IntGraph(v, graph, rounding='litert_reference')
  lite = runtimes.litert_run(model, ref.quantize_input(x).astype(np.int8), 'reference')
  np.testing.assert_array_equal(lite, ref.logits(x))


@pytest.mark.slow
def test_trained_graph_arena_in_tflm_is_the_memory_models():
  graph = _graph(*MBV2)
  v, x = _calibrated(graph, n=4)
  model = graph_tflite.to_tflite(graph, graph_int.IntGraph(v, graph))
  measured = runtimes.tflm_arena(model, np.zeros((1,) + graph.nodes[0].shape, np.int8))
  predicted = memory.tflm_arena(graph)
  assert abs(measured['total'] / predicted['total'] - 1) < 0.05
  assert measured['head'] == predicted['planned']


def test_fused_relu6_clamps_as_tflite_computes_them():
  assert graph_int.activation_range(None, 0.1, 3) == (-128, 127)
  assert graph_int.activation_range('relu', 0.1, 3) == (3, 127)
  # 6 / (6 / 255) rounds to 255: the whole grid above the zero point
  assert graph_int.activation_range('relu6', 6 / 255, -128) == (-128, 127)
  assert graph_int.activation_range('relu6', 0.05, -100) == (-100, 20)


def test_an_arch_with_an_op_the_int8_path_lacks_is_one_line():
  with pytest.raises(graph_qat.UnsupportedGraph) as err:
    trainable.trainable('tinycnn', 'f16k3-swish-max')
  assert '\n' not in str(err.value) and 'swish' in str(err.value)
  keep = trainable.int8_exportable('tinycnn')
  space = registry.get('tinycnn')
  archs = space.enumerate()
  kept = [a for a in archs if keep(a)]
  assert 0 < len(kept) < len(archs) and all(a.activation == 'relu' for a in kept)
  assert trainable.int8_exportable('nb201') is None


def _constants_graph():
  """A gated graph whose pruned form has what NB201's graphs have: a PyTorch-padded stride-2
  conv, ReLU nodes, a 3x3 SAME average pool, a 'batchnorm' affine, and an add of three terms of
  which the first two do not depend on the input (a conv of a zero tensor, then a conv of that,
  different at the borders): constants, kept (`prune(constants=True)`) and folded (`prune`)."""
  b = graph_lib.GraphBuilder('constants', num_gates=1)
  x = b.input((8, 8, 3))
  a = b.activation(b.conv2d(x, 8, 3, 2, 'symmetric', bias=False, folded_bn=True), 'relu')
  zero = b.add(b.conv2d(a, 8, 1, bias=False, folded_bn=True, gate=0))  # gated off: zeros
  c1 = b.conv2d(b.activation(zero, 'relu'), 8, 3, padding='symmetric', bias=False,
                folded_bn=True)
  c2 = b.conv2d(b.activation(c1, 'relu'), 8, 3, padding='symmetric', bias=False, folded_bn=True)
  pool = b.pool(a, 'avg', 3, 1, 'same')
  y = b.activation(b.batchnorm(b.add(c1, c2, pool)), 'relu')
  b.dense(b.global_avg_pool(y), 5)
  return b.build()


def test_constants_kept_and_folded_run_bit_for_bit_everywhere():
  template = _constants_graph()
  graph = graph_lib.prune(template, np.zeros(1), constants=True)
  folded = graph_lib.prune(template, np.zeros(1))
  assert graph_lib.prune(graph) == folded  # the hardware graph of the kept one
  (add,) = [n for n in folded.nodes if n.op == 'add']
  assert add.const_slots == (0,)  # the two leading constants fold into one operand
  assert any(n.op == 'add' and not n.inputs for n in graph.nodes)  # the zero tensor
  with pytest.raises(graph_qat.UnsupportedGraph, match='constants'):
    graph_qat.check_graph(folded)
  with pytest.raises(ValueError, match='constants kept'):  # the exporter lacks their values
    graph_tflite.to_tflite(folded)
  v = graph_qat.init_variables(jax.random.key(0), graph)
  # BN shifts away from 0, so that the constants are not zero
  v['params'] = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.5 * jax.random.normal(jax.random.key(len(str(p))), a.shape)
      if p[-1].key == 'bias' else a, v['params'])
  x = jnp.asarray(np.random.default_rng(1).standard_normal((16, 8, 8, 3)), jnp.float32)
  for _ in range(3):
    _, upd = graph_qat.GraphNetwork(graph, 'fp32').apply(v, x, train=True,
                                                          mutable=['batch_stats'])
    v = {**v, **upd}
  v = graph_qat.calibrate(v, graph, [x])
  x = np.asarray(x)
  np.testing.assert_allclose(graph_qat.GraphNetwork(graph, 'folded').apply(v, x),
                             graph_qat.GraphNetwork(graph, 'fp32').apply(v, x), atol=1e-4)
  ref = graph_int.IntGraph(v, graph)
  const_convs = [i for i, n in enumerate(graph.nodes) if n.op == 'conv2d' and not ref.live[i]]
  assert len(const_convs) == 2 and len(ref.partial_consts) == 1
  assert len(np.unique(ref.consts[const_convs[1]][..., 0])) > 1  # differs by position
  logits = ref.reference_logits(x)
  assert len(np.unique(logits, axis=0)) == len(x)
  np.testing.assert_array_equal(ref.logits(x), logits)
  model = graph_tflite.to_tflite(graph, ref)
  np.testing.assert_array_equal(runtimes.tflm_run(model, ref.quantize_input(x).astype(np.int8)),
                                logits)
  fake = np.asarray(graph_qat.GraphNetwork(graph, 'quant').apply(v, x))
  scale, zp = ref.act(len(graph.nodes) - 1)
  assert np.max(np.abs((logits.astype(np.float32) - zp) * scale - fake)) <= 2.01 * scale


def test_a_pool_padded_unlike_tflites_same_is_refused_by_the_exporter_in_one_line():
  """A 3x3 average pool at stride 2 on an even map with PyTorch's padding (1 and 1; TFLite's
  SAME pads 0 and 1) has no TFLite op; the same pool with SAME padding exports."""
  from deploy import graph_tflite
  for padding, ok in (('symmetric', False), ('same', True)):
    b = graph_lib.GraphBuilder('pool')
    x = b.input((8, 8, 4))
    b.pool(x, 'avg', 3, 2, padding)
    graph = b.build()
    assert graph_lib.unlike_same(graph.nodes[1], (8, 8, 4)) != ok
    if ok:
      assert graph_tflite.to_tflite(graph)
    else:
      with pytest.raises(ValueError, match='no int8 TFLite pool for symmetric padding') as err:
        graph_tflite.to_tflite(graph)
      assert '\n' not in str(err.value)

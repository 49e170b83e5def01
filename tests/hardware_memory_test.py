"""Memory planner on hand-computed graphs; soft template == exact planner at 0/1 gates."""

import itertools

import chex
import numpy as np
import pytest

import hardware
import hardware_fixtures
from hardware import graph as G
from hardware import memory
from hardware import template as T


def _chain():
  b = G.GraphBuilder('chain')
  x = b.input((8, 8, 4))                 # 256 B
  c = b.conv2d(x, 8, 3, name='conv')     # 512 B
  r = b.activation(c, 'relu', name='relu')
  p = b.global_avg_pool(r, name='gap')   # 8 B
  b.dense(p, 10, name='fc')              # 10 B
  return b.build()


def _residual():
  b = G.GraphBuilder('residual')
  x = b.input((8, 8, 4))
  c = b.conv2d(x, 4, 3, name='conv')
  s = b.add(x, c, name='add')
  p = b.global_avg_pool(s, name='gap')
  b.dense(p, 10, name='fc')
  return b.build()


def _alias_residual():
  b = G.GraphBuilder('alias')
  x = b.input((8, 8, 4))
  i = b.identity(x, name='skip')
  c1 = b.conv2d(x, 4, 3, name='conv1')
  c2 = b.conv2d(c1, 4, 3, name='conv2')
  b.add(i, c2, name='add')
  return b.build()


def test_chain_hand_computed():
  plan = memory.plan_arena(_chain())
  # steps: input | input+conv | conv->relu in place | relu+gap | gap+fc
  np.testing.assert_allclose(plan.live_bytes, [256, 768, 512, 520, 18])
  assert plan.peak_bytes == 768 and plan.peak_step == 1
  assert plan.live_tensors[1] == ('input', 'conv')


def test_chain_im2col_scratch():
  plan = memory.plan_arena(_chain(), im2col=True)
  assert plan.peak_bytes == 768 + 2 * 3 * 3 * 4 * 2


def test_residual_branch_stays_alive():
  plan = memory.plan_arena(_residual())
  # the input lives until the add; the add overwrites a dying input in place
  np.testing.assert_allclose(plan.live_bytes, [256, 512, 512, 260, 14])


def test_alias_extends_lifetime():
  plan = memory.plan_arena(_alias_residual())
  np.testing.assert_allclose(plan.live_bytes, [256, 256, 512, 768, 512])
  assert 'input' in plan.live_tensors[3]


def test_breakdown_marks_peak():
  g = _chain()
  text = memory.plan_arena(g).breakdown(g)
  assert '<- peak' in text.splitlines()[2]


@pytest.mark.parametrize('make', [_chain, _residual, _alias_residual])
def test_soft_equals_planner_on_concrete_graphs(make):
  g = make()
  t = T.compile_template(g)
  act = T.soft_activity(t)
  np.testing.assert_allclose(memory.soft_live_bytes(t, act, im2col=True),
                             memory.plan_arena(g, im2col=True).live_bytes, atol=1e-3)


@pytest.mark.parametrize('gates', list(itertools.product([0, 1], repeat=4)))
def test_soft_template_exact_at_hard_gates(gates):
  g = hardware_fixtures.gated_graph()
  gates = np.array(gates, np.float32)
  soft = hardware.cost(g, gates)
  hard = hardware.concrete_cost(G.prune(g, gates))
  for key in ('arena_bytes', 'sram_bytes', 'flash_bytes', 'latency_ms', 'macs', 'params'):
    np.testing.assert_allclose(soft[key], hard[key], rtol=1e-5, atol=1e-3, err_msg=key)


def test_soft_memory_is_between_hard_corners():
  g = hardware_fixtures.gated_graph()
  lo = float(hardware.cost(g, np.array([0, 0, 0, 1.]))['arena_bytes'])
  hi = float(hardware.cost(g, np.array([0, 1, 0, 1.]))['arena_bytes'])
  mid = float(hardware.cost(g, np.array([0, 0.5, 0, 1.]))['arena_bytes'])
  assert lo < mid < hi


def test_flash_formula():
  g = _chain()
  rt = hardware.get_runtime('tflm')
  r = hardware.concrete_cost(g, runtime=rt)
  weights, biases, channels, kernels = 3 * 3 * 4 * 8 + 8 * 10, 8 + 10, 8 + 10, 4
  expected = (weights + 4 * biases + rt.quant_bytes_per_channel * channels
              + rt.flash_bytes_per_kernel * kernels + rt.model_flash_bytes + rt.code_flash_bytes)
  assert r['flash_bytes'] == pytest.approx(expected)
  assert r['sram_bytes'] == pytest.approx(768 + rt.persistent_bytes_per_channel * channels
                                          + rt.sram_overhead_bytes)


def test_soft_memory_batches_with_vmap():
  g = hardware_fixtures.gated_graph()
  gates = np.random.default_rng(0).random((5, 4)).astype(np.float32)
  out = hardware.cost(g, gates)
  chex.assert_shape(out['sram_bytes'], (5,))
  chex.assert_shape(out['features'], (5, len(G.FEATURES)))
  single = hardware.cost(g, gates[2])
  np.testing.assert_allclose(out['arena_bytes'][2], single['arena_bytes'], rtol=1e-6)


def test_tflm_greedy_planner_places_largest_first_in_gaps():
  # a 96 B (steps 0-1), b and c 64 B (1-2, 2-3), d 40 B -> 48 aligned (step 3)
  buffers = memory.TflmBuffers(sizes=np.array([96, 64, 64, 40]), first=np.array([0, 1, 2, 3]),
                               last=np.array([1, 2, 3, 3]), num_ops=4)
  # a at 0; c (the later of the tied pair goes first) at 0, a being dead by then; b overlaps
  # both -> after them at 96; d overlaps c only -> at 64. Peak 96 + 64.
  assert memory.tflm_greedy_arena(buffers) == 160


# an NB201 arch with no constant (every op live), a sampled mbv2 arch (its stem: a 3x3 conv at
# stride 2, 'same' padding) and a tinycnn ReLU arch
@pytest.mark.parametrize('space, arch', [
    ('nb201', '|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|'
              'skip_connect~2|'),
    ('mbv2', None), ('tinycnn', 'f32k5-relu-max')])
def test_the_arena_model_runs_the_exported_models_ops(space, arch):
  """`tflm_buffers` has the ops and arena tensors the exported .tflite has: a PAD only where the
  export writes one (NB201's symmetric stride-2 convs; before, every strided k x k conv2d had
  one, so mbv2's SAME-padded stem got a PAD tensor its .tflite does not have), and a tensor for
  a graph's own reshape, which the export writes as a RESHAPE (tinycnn's flatten; before, the
  model took it for an alias)."""
  from deploy import graph_tflite
  from search_spaces import registry
  from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
  s = registry.get(space)
  a = s.sample(np.random.default_rng(0), 1)[0] if arch is None else s.decode(arch)
  graph = s.lower(a, s.shape_of(s.group(a)), s.num_classes)
  model = schema.ModelT.InitFromPackedBuf(graph_tflite.to_tflite(graph), 0)
  ops = [model.operatorCodes[o.opcodeIndex].builtinCode for o in model.subgraphs[0].operators]
  buffers = memory.tflm_buffers(graph)
  assert len(ops) == buffers.num_ops
  arena = [int(np.prod(t.shape)) for t in model.subgraphs[0].tensors
           if model.buffers[t.buffer].data is None or not len(model.buffers[t.buffer].data)]
  assert sorted(arena) == sorted(buffers.sizes.tolist())
  pads = ops.count(schema.BuiltinOperator.PAD)
  strided = [n for n in graph.nodes if n.op == 'conv2d' and n.stride[0] > 1 and n.kernel[0] > 1]
  assert (strided or space == 'tinycnn') and pads == (len(strided) if space == 'nb201' else 0)

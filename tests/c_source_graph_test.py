"""Generated C (deploy.c_source) of the plug-in spaces' exports (deploy.graph_tflite: tinycnn and
mbv2), bit for bit against TFLite Micro, on the host and on an emulated Cortex-M4.

graph_tflite's random weights (int8 in [-127, 127], scale 0.01 on a 0.05 activation grid) make
accumulators far larger than the int8 range, so most outputs saturate and a wrong kernel could
hide behind the clamp. Each model is therefore checked twice: as graph_tflite writes it, and
"tamed" (weights drawn in a range scaled by 1/sqrt(fan-in), random biases, a nonzero activation
zero point), whose outputs spread over the int8 range (asserted) while ReLU and ReLU6 still
clip (at the zero point, and at zero point + round(6 / 0.05))."""
import numpy as np
import pytest

from deploy import c_source
from deploy import graph_tflite
from deploy import mcu
from deploy import runtimes
from deploy import tflite
from hardware import graph as graph_lib
from hardware import memory
from search_spaces import registry
from c_source_test import _need

TINY_MAX = 'f16k3-f32k5-relu-max'
TINY_AVG = 'f32k3-f16k3-f8k5-relu-avg'
# the smallest mbv2 group (w0.5, r96), depth 2; strided blocks with k 5, 7, 3 and 7 (stage 4:
# k7 stride 2 on a 6x6 map pads 2 before, 3 after), stage 3's first block k5 at stride 1
MBV2 = 'w0.5-r96-k5e3.k3e3-k7e3.k3e3-k3e3.k3e3-k5e3.k3e3-k7e3.k3e3'
CASES = [('tinycnn', TINY_MAX), ('tinycnn', TINY_AVG), ('mbv2', MBV2)]
IMAGES = 4


def _odd_graph():
  """What the spaces do not reach: a non-square odd map (SAME pads differ per axis at stride 2),
  a depthwise window larger than its map, VALID average pool 3x3 stride 2, a fused ReLU on ADD
  and on the dense layer."""
  b = graph_lib.GraphBuilder('odd')
  t = b.input((32, 29, 8))
  t = b.conv2d(t, 16, 3, 2, activation='relu6', name='conv_s2')      # 16x15, pads (0, 1)
  t = b.pool(t, 'avg', 3, 2, 'valid', name='avg3')                    # 7x7
  t = b.depthwise_conv2d(t, 5, 2, activation='relu', name='dw5_s2')   # 4x4, pads (2, 2)
  y = b.depthwise_conv2d(t, 7, 1, activation='relu6', name='dw7')     # pads 3 on a 4x4 map
  y = b.conv2d(y, 16, 1, name='pw')
  t = b.add(y, t, activation='relu', name='add')
  t = b.pool(t, 'max', 2, 2, 'valid', name='max2')                    # 2x2
  t = b.global_avg_pool(t, name='gap')
  t = b.dense(b.reshape(t, name='flatten'), 32, activation='relu', name='fc_relu')
  b.dense(t, 10, name='fc')
  return b.build()


def _model(space, arch, seed=0):
  graph = _odd_graph() if space == 'odd' else registry.get(space).lower(arch)
  return graph, graph_tflite.to_tflite(graph, seed=seed)


def _tame(model: bytes, seed: int = 0, zero_point: int = -5) -> bytes:
  """The model with weights in +-round(320 / sqrt(fan-in)) (the classifier's 100 / sqrt),
  biases in +-500 and every activation tensor's zero point set to `zero_point` (scales
  unchanged): most layers then hit both ends of a ReLU6 (zero point, zero point + 120) and few
  values saturate."""
  import flatbuffers
  s = tflite.schema()
  m = s.ModelT.InitFromPackedBuf(model, 0)
  g = m.subgraphs[0]
  rng = np.random.default_rng(seed)
  weighted = {s.BuiltinOperator.CONV_2D, s.BuiltinOperator.DEPTHWISE_CONV_2D,
              s.BuiltinOperator.FULLY_CONNECTED}
  for op in g.operators:
    code = m.operatorCodes[op.opcodeIndex].builtinCode
    if code not in weighted:
      continue
    w_t, b_t = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]]
    shape = tuple(int(d) for d in w_t.shape)
    fan_in = int(np.prod(shape[1:3] if code == s.BuiltinOperator.DEPTHWISE_CONV_2D else shape[1:]))
    # the classifier reads pooled, mostly positive features: a smaller range keeps it unsaturated
    r = max(1, round((100 if code == s.BuiltinOperator.FULLY_CONNECTED else 320) / np.sqrt(fan_in)))
    w = rng.integers(-r, r + 1, shape).astype(np.int8)
    b = rng.integers(-500, 501, int(b_t.shape[0])).astype(np.int32)
    m.buffers[w_t.buffer].data = np.frombuffer(w.tobytes(), np.uint8)
    m.buffers[b_t.buffer].data = np.frombuffer(b.tobytes(), np.uint8)
  for t in g.tensors:
    data = m.buffers[t.buffer].data
    if t.type == s.TensorType.INT8 and (data is None or len(data) == 0):  # an activation
      t.quantization.zeroPoint = np.array([zero_point], np.int64)
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(m.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def _inputs(graph, n=IMAGES, seed=0):
  return np.random.default_rng(seed).integers(-128, 128, (n, *graph.nodes[0].shape),
                                              dtype=np.int8)


def _check(tmp_path, model, x, target):
  project = c_source.generate(model, tmp_path)
  mcu.build(project.out_dir, target)
  got = mcu.run(project.out_dir, x, target).logits
  want = runtimes.tflm_run(model, x).reshape(got.shape)
  np.testing.assert_array_equal(got, want)
  return project, want


def _assert_spread(y):
  """Outputs that can tell kernels apart: many distinct values, most not at an int8 bound, and
  not the same for every image."""
  y = np.asarray(y, np.int32)
  assert len(np.unique(y)) >= 10, np.unique(y)
  assert np.mean((y == -128) | (y == 127)) < 0.25, y
  assert np.count_nonzero(np.ptp(y, axis=0)) >= y.shape[1] // 2, y


@pytest.mark.parametrize('space, arch', CASES + [('odd', None)])
def test_host_build_equals_tflm(tmp_path, space, arch):
  _need('host')
  graph, model = _model(space, arch, seed=1)
  x = _inputs(graph)
  project, _ = _check(tmp_path / 'raw', model, x, 'host')
  # the arena is TFLite Micro's own plan of this model (its recorded head: planned buffers)
  assert project.arena_bytes == runtimes.tflm_arena(model, x)['head']
  if space != 'odd':  # and the hardware model's (its RESHAPE / PAD bookkeeping gives the same)
    assert project.arena_bytes == memory.tflm_greedy_arena(memory.tflm_buffers(graph))
  tamed = _tame(model, seed=2)
  _, want = _check(tmp_path / 'tamed', tamed, x, 'host')
  _assert_spread(want)


def test_generated_kernels_and_activation_ranges(tmp_path):
  graph, model = _model('mbv2', MBV2)
  project = c_source.generate(model, tmp_path)
  kernels = {layer.kernel for layer in project.layers}
  assert {'conv', 'pointwise', 'depthwise', 'add', 'global_pool', 'copy', 'dense'} <= kernels
  source = (tmp_path / 'model.c').read_text()
  assert 'zn_depthwise(&L' in source and 'zn_max_pool' not in source
  # stem: 3x3 stride 2 on 96x96 pads 0 before, 1 after; ReLU6 on scale 0.05, zero point 0
  stem = next(line for line in source.splitlines() if line.startswith('static const zn_conv_t L0'))
  assert stem.endswith(', 96, 96, 3, 48, 48, 16, 3, 2, 0, 0, 0, 0, 0, 120};'), stem
  _, tiny = _model('tinycnn', TINY_MAX)
  c_source.generate(tiny, tmp_path / 'tiny')
  assert 'zn_max_pool(&L' in (tmp_path / 'tiny' / 'model.c').read_text()
  assert c_source.activation_range(0, 0.05, 3) == (-128, 127)
  assert c_source.activation_range(1, 0.05, -5) == (-5, 127)
  assert c_source.activation_range(3, 0.05, -5) == (-5, 115)
  assert c_source.activation_range(3, 0.01, 10) == (10, 127)   # 6 / 0.01 is past int8
  assert c_source.activation_range(1, 0.05, -130) == (-128, 127)
  assert c_source.activation_range(3, 0.048, 0) == (0, 125)     # 6 / 0.048 = 125
  assert c_source.activation_range(3, 0.0472, 0) == (0, 127)    # 127.1 rounds to 127
  assert c_source.activation_range(4, 0.05, 0) is None          # TANH is no clamp


@pytest.mark.slow
@pytest.mark.parametrize('space, arch', [('tinycnn', TINY_AVG), ('mbv2', MBV2), ('odd', None)])
def test_emulated_cortex_m4_equals_tflm(tmp_path, space, arch):
  _need('m4')
  graph, model = _model(space, arch, seed=3)
  x = _inputs(graph, 3, seed=1)
  _check(tmp_path / 'raw', model, x, 'm4')
  _, want = _check(tmp_path / 'tamed', _tame(model, seed=4), x, 'm4')
  _assert_spread(want)

"""Lowering of nb201, tinycnn and the MLPerf Tiny reference models to the hardware graph."""

import csv
import hashlib
import os
import pathlib

import numpy as np
import pytest

import hardware
from hardware import graph as G
from hardware import memory
from search_spaces import mlperf_tiny
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from search_spaces import tinycnn

CFG = nb201.NB201Config()
SMALL = nb201.NB201Config(C=4, N=2, input_size=8)


def _data_dir() -> pathlib.Path:
  env = os.environ.get('ZERONAS_DATA_DIR')
  return pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    if os.environ.get('CI'):
      pytest.fail(f'required data missing in CI: {path}')
    pytest.skip(f'data not found: {path}')
  return path


def test_nb201_counts_match_reference_counters():
  ops = nb201.sample_ops(np.random.default_rng(0), 40)
  masks = nb201.ops_to_mask(ops)
  params = nb201.count_params(masks, CFG)
  flops = nb201.count_flops(masks, CFG, 'nb201')
  for i in range(len(ops)):
    macs, torch_params = nb201_graph.count_without_dce(ops[i], CFG)
    assert torch_params == params[i]
    assert macs + CFG.num_classes == flops[i]  # NB201 also counts the classifier bias adds


# Template fingerprints taken from nb201_graph's own walk before the template moved onto
# nb201_net.network: sha256 (first 16 hex digits) of every node in order (name, op, inputs,
# shape, kernel, stride, groups, bias, folded_bn, activation, gate, width, params, MACs),
# with the node count and total params / MACs for a readable failure.
TEMPLATE_SNAPSHOTS = [
    (CFG, 'ac2c68f620c25442', 605, 1_692_490, 243_712_640),
    (SMALL, 'dc2fe5149b2492eb', 254, 45_802, 404_384),
    (nb201.NB201Config(C=8, N=1, num_classes=100, input_size=16, depth=4),
     'ce72758b204ecb82', 98, 41_028, 2_483_328),
    (nb201.NB201Config(C=3, N=1, depth=1, use_stem=False), '12152b43dc43c36b', 44, 616, 552_990),
]


def _fingerprint(g: G.Graph):
  st = G.node_stats(g)
  rows = [(g.name, g.num_gates, g.num_widths)] + [
      (n.name, n.op, n.inputs, n.shape, n.kernel, n.stride, n.groups, n.bias, n.folded_bn,
       n.activation, n.gate, n.width, int(st.params[i]), int(st.macs[i]))
      for i, n in enumerate(g.nodes)]
  digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
  return digest, len(g), int(st.params.sum()), int(st.macs.sum())


@pytest.mark.parametrize('snapshot', TEMPLATE_SNAPSHOTS,
                         ids=['C16N5', 'C4N2', 'depth4', 'no_stem'])
def test_nb201_template_graph_unchanged(snapshot):
  config, *expected = snapshot
  digest, nodes, params, macs = _fingerprint(nb201_graph.template_graph(config))
  assert (nodes, params, macs) == tuple(expected[1:])
  assert digest == expected[0]


def test_nb201_template_walk_visits_every_op_with_its_gate():
  from search_spaces.nb201 import net as nb201_net
  walked = nb201_net.edge_choices(nb201_graph.gate_index)
  assert walked == [[(op, e * 5 + op) for op in (nb201.SKIP, nb201.CONV1, nb201.CONV3, nb201.POOL)]
                    for e in range(6)]
  # arrays keep their meaning: a one-hot mask walks its single op as a plain term
  assert nb201_net.edge_choices(nb201.ops_to_mask([3] * 6)) == [[(3, None)]] * 6
  g = nb201_graph.template_graph(SMALL)
  cell_gates = {n.gate for n in g.nodes if n.name.startswith('layer0_cell/e')}
  assert cell_gates == {e * 5 + op for e in range(6) for op in range(1, 5)}
  assert all(n.gate == -1 for n in g.nodes if 'cell/e' not in n.name)


def _live_archs():
  """Op indices whose every op is live (no dead code for the lowering to remove): all ops but
  'none', plus chains through 'none' edges that still reach every op."""
  ops = nb201.sample_ops(np.random.default_rng(5), 200)
  ops = ops[(ops != nb201.NONE).all(1)][:6]
  chains = [nb201.parse_arch_str('|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|'
                                 'avg_pool_3x3~2|'),
            nb201.parse_arch_str('|skip_connect~0|+|nor_conv_3x3~0|none~1|+|none~0|'
                                 'nor_conv_1x1~1|nor_conv_3x3~2|')]
  return np.concatenate([ops, np.array(chains)])


@pytest.mark.parametrize('config', [CFG, SMALL], ids=['C16N5', 'C4N2'])
def test_nb201_lowered_counts_equal_network_counts(config):
  # The contract: the graph `lower` builds has the network's params (PyTorch style) and its
  # conv + classifier MACs (NB201's FLOPs less the classifier bias adds), one-hot and multi-hot.
  ops = _live_archs()
  multi = (np.random.default_rng(6).random((4, 6, 5)) < 0.5).astype(np.float32)
  multi[..., nb201.NONE] = 0
  multi[..., nb201.CONV3] = 1  # every edge keeps at least one op
  masks = np.concatenate([nb201.ops_to_mask(ops), multi])
  params = nb201.count_params(masks, config)
  flops = nb201.count_flops(masks, config, 'nb201')
  for i, m in enumerate(masks):
    g = nb201_graph.lower(m, config)
    assert G.torch_style_params(g) == params[i]
    assert G.node_stats(g).macs.sum() + config.num_classes == flops[i]


def test_nb201_largest_arch():
  g = nb201_graph.lower('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|'
                        'nor_conv_3x3~1|nor_conv_3x3~2|')
  assert G.torch_style_params(g) == 1_531_546  # 1.5315 M in NAS-Bench-Suite-Zero (cifar10)
  assert 220e6 < G.node_stats(g).macs.sum() < 221e6


def test_nb201_dead_code_elimination():
  # node 1 feeds nothing live: its conv is dead; the cell output is a pooled skip
  g = nb201_graph.lower('|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|')
  names = [n.name for n in g.nodes]
  assert not any('e0' in n for n in names)
  assert sum('e3/avg_pool_3x3' in n for n in names) == 15
  # every path crosses a 'none': constant output, nothing runs
  g = nb201_graph.lower('|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|')
  assert len(g) == 1
  # skip-only cells are aliases: stem, 2 reductions and the head remain
  g = nb201_graph.lower('|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|')
  assert not any(n.op in ('identity', 'add') and 'cell' in n.name for n in g.nodes)
  assert sum(n.op == 'conv2d' for n in g.nodes) == 1 + 2 * 3


# node 1 has no live term (edge 0->1 is none), so what its out-edges compute is a constant
DEAD_NODE_ARCHS = (
    '|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|',
    '|none~0|+|skip_connect~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_1x1~2|',
    # node 2 is itself a constant (a conv of dead node 1), so node 3 adds two constants
    '|none~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|',
)


def test_nb201_ops_on_a_dead_node_are_constant_operands_of_the_add():
  g = nb201_graph.lower(DEAD_NODE_ARCHS[0])
  node2 = [n for n in g.nodes if n.name == 'layer0_cell/node2']
  # node 2 = conv3x3(node 0) + conv3x3(zeros): a live term plus the second conv's bias
  assert len(node2) == 1 and node2[0].op == 'add' and node2[0].operands == 2
  assert node2[0].const_slots == (1,)
  # node 3 = skip(node 0) + conv1x1(zeros) + conv3x3(node 2): the constant is the middle operand
  node3 = [n for n in g.nodes if n.name == 'layer0_cell/node3'][0]
  assert node3.const_slots == (1,) and len(node3.inputs) == 2
  # the folded convs themselves do not run
  assert not any('/e2/' in n.name or '/e4/' in n.name for n in g.nodes)
  g2 = nb201_graph.lower(DEAD_NODE_ARCHS[2])
  node3 = [n for n in g2.nodes if n.name == 'layer0_cell/node3'][0]
  assert node3.const_slots == (1, 2) and len(node3.inputs) == 1  # skip + two constants


def test_const_operand_slots_fold_leading_constants():
  slots = G.const_operand_slots
  #            live                      constant
  assert slots([0, 0, 1, 0, 1], [1, 1, 0, 1, 0]) == (0, 2)  # c c L c L -> C' L c L
  assert slots([1, 0], [0, 1]) == (1,)
  assert slots([0, 1], [1, 0]) == (0,)
  assert slots([0, 0], [1, 1]) == ()        # no live term: the whole sum is a constant
  assert slots([1, 0, 1], [0, 0, 0]) == ()  # absent terms are no operands


def test_nb201_template_exact_for_one_hot_and_multi_hot():
  rng = np.random.default_rng(3)
  masks = np.concatenate([nb201.ops_to_mask(nb201.sample_ops(rng, 12)),
                          nb201.ops_to_mask(np.array([nb201.parse_arch_str(a)
                                                      for a in DEAD_NODE_ARCHS])),
                          (rng.random((12, 6, 5)) < 0.4).astype(np.float32)])
  soft = nb201_graph.cost(masks, SMALL)
  for i, m in enumerate(masks):
    g = nb201_graph.lower(m, SMALL)
    hard = hardware.concrete_cost(g)
    assert memory.plan_arena(g, im2col=True).peak_bytes == pytest.approx(
        float(soft['arena_bytes'][i]))
    for key in ('sram_bytes', 'flash_bytes', 'latency_ms', 'macs', 'params'):
      np.testing.assert_allclose(soft[key][i], hard[key], rtol=1e-5, err_msg=key)


def test_nb201_soft_masks_give_finite_costs_and_rows():
  w = np.random.default_rng(0).dirichlet(np.ones(5), (3, 6)).astype(np.float32)
  out = nb201_graph.cost(w, SMALL)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in out.values())
  rows = nb201_graph.cost_rows(nb201.ops_to_mask([[3] * 6, [1] * 6]), SMALL, 'rp2040', 'tflm')
  assert rows[0]['arch'].startswith('|nor_conv_3x3~0|') and rows[0]['device'] == 'rp2040'
  assert rows[0]['latency_ms'] > rows[1]['latency_ms'] > 0
  assert set(hardware.COST_KEYS) - {'arena_bytes'} <= set(rows[0])


def test_nb201_zc_subset_flops_and_params():
  path = _require(_data_dir() / 'nb201' / 'nb201_zc_proxies_subset_naslib.csv')
  with path.open() as f:
    rows = [r for r in csv.DictReader(f) if r['dataset'] == 'cifar10'][:50]
  for r in rows:
    _, params = nb201_graph.count_without_dce(r['arch_str'], CFG)
    assert params / 1e6 == pytest.approx(float(r['params']), abs=2e-4)


MLPERF_MACS = {'ic': 12_501_632, 'kws': 2_656_768, 'vww': 7_489_664, 'ad': 264_192}


@pytest.mark.parametrize('name', mlperf_tiny.NAMES)
def test_mlperf_reference_models(name):
  g = mlperf_tiny.get_model(name)
  st = G.node_stats(g)
  assert st.macs.sum() == MLPERF_MACS[name]
  r = hardware.concrete_cost(g, 'nucleo-l4r5zi', 'tflm')
  assert r['sram_bytes'] < 640 * 1024 and r['flash_bytes'] < 2048 * 1024
  if name in mlperf_tiny.TFLITE_BYTES:  # weights + metadata vs the reference .tflite size
    model_bytes = r['flash_bytes'] - hardware.get_runtime('tflm').code_flash_bytes
    assert model_bytes == pytest.approx(mlperf_tiny.TFLITE_BYTES[name], rel=0.35)


def test_mlperf_shapes_and_names():
  kws = mlperf_tiny.get_model('kws')
  assert kws.nodes[1].shape == (25, 5, 64)
  vww = mlperf_tiny.get_model('vww')
  assert vww.nodes[-4].shape == (1, 1, 256) and vww.nodes[-1].shape == (1, 1, 2)
  assert mlperf_tiny.parse_archs('ic,ad') == ['ic', 'ad']
  with pytest.raises(ValueError, match='ic, kws, vww, ad'):
    mlperf_tiny.get_model('resnet50')
  rows = mlperf_tiny.cost_rows('ic,kws', 'stm32f746', 'x-cube-ai')
  assert [r['arch'] for r in rows] == ['ic', 'kws']


def test_tinycnn_space():
  archs = tinycnn.enumerate_archs()
  assert len(archs) == 1032 and len({a.encode() for a in archs}) == 1032
  a = tinycnn.decode('f16k3-f32k5-swish-avg')
  assert a.filters == (16, 32) and a.kernels == (3, 5) and a.encode() == 'f16k3-f32k5-swish-avg'
  with pytest.raises(ValueError):
    tinycnn.decode('f12k3-relu-max')
  g = tinycnn.lower(a)
  ops = [n.op for n in g.nodes]
  assert ops == ['input', 'conv2d', 'activation', 'avg_pool', 'conv2d', 'activation', 'avg_pool',
                 'reshape', 'dense']
  assert g.nodes[-1].shape == (1, 1, 10) and g.nodes[-2].shape == (1, 1, 8 * 8 * 32)
  relu = tinycnn.lower('f16k3-relu-max')
  assert [n.op for n in relu.nodes] == ['input', 'conv2d', 'max_pool', 'reshape', 'dense']


def test_the_seed_objective_on_tinycnn_and_its_hard_limits():
  from engine.search import objective as obj
  from engine.search.problem import Term
  archs = tinycnn.SPACE.parse('f8k3-relu-max,f32k5-f32k5-f32k5-swish-avg')
  rows = hardware.cost_rows({a.encode(): tinycnn.lower(a) for a in archs}, 'stm32f746',
                            'cmsis-nn')
  costs = {k: np.array([r[k] for r in rows], float) for k in obj.COST_NAMES}
  seed = lambda ok, **kw: obj.seed({'p': np.array([0.5, 0.7])}, [Term('p', True)], costs, ok,
                                   obj.Weights(), 'stm32f746', **kw)
  dev = hardware.get_device('stm32f746')
  power = costs['energy_mj'] + dev.sleep_power_mw * (1 - costs['latency_ms'] / 1e3)
  expected = np.array([0.5, 1.0]) / (costs['sram_bytes'] / 1024 * power)  # ranks 1, 2 of 2
  np.testing.assert_allclose(seed([True, True]), expected, rtol=1e-9)
  assert seed([True, False])[1] == -np.inf  # outside the search's limits
  assert seed([True, True], rate_hz=50.0)[1] == -np.inf  # the 2nd misses the 20 ms period
  assert np.isfinite(seed([True, True], rate_hz=50.0)[0])

"""Common-subexpression elimination (Runtime.merge_duplicates): grouping, exact vs soft, grads."""

import dataclasses
import itertools

import numpy as np
import pytest

import hardware
import hardware_fixtures
from hardware import devices
from hardware import graph as G
from hardware import template as T
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph

SMALL = hardware_fixtures.SMALL


def _runtime(fold=True, prune=True, merge=True):
  return dataclasses.replace(hardware.get_runtime('cmsis-nn'), name=f'cse{fold}{prune}{merge}',
                             fold_constants=fold, prune_dead=prune, merge_duplicates=merge)


def _dup_graph(num_gates=0):
  """Two avg pools and two relus on x, a relu on each pool, two convs on the relus."""
  b = G.GraphBuilder('dup', num_gates=num_gates)
  g = (lambda k: k) if num_gates else (lambda k: -1)
  x = b.input((8, 8, 4))
  p1 = b.pool(x, 'avg', 3, 1, 'same', gate=g(0))
  p2 = b.pool(x, 'avg', 3, 1, 'same', gate=g(1))
  m = b.pool(x, 'max', 3, 1, 'same')        # other op: not a duplicate
  r1 = b.activation(p1, 'relu')
  r2 = b.activation(p2, 'relu')              # duplicate once p2 ~ p1
  c1 = b.conv2d(r1, 4, 1)
  c2 = b.conv2d(r2, 4, 1)                    # parameters: never merged
  b.add(c1, c2, m)
  return b.build()


def test_duplicate_of_by_hand():
  assert G.duplicate_of(_dup_graph()).tolist() == [0, 1, 1, 3, 4, 4, 6, 7, 8]


def test_catalog_runtimes_do_not_merge():
  for rt in devices.RUNTIMES.values():
    assert not rt.merge_duplicates, rt.name


def test_ungated_concrete_and_template_agree():
  g = _dup_graph()
  ref = hardware.concrete_cost(g, runtime=_runtime())
  out = hardware.cost(g, runtime=_runtime())
  np.testing.assert_allclose(np.asarray(out['features']), ref['features'], rtol=1e-6)
  plain = hardware.concrete_cost(g)
  calls = G.FEATURES.index('kernel_calls')
  assert plain['features'][calls] - ref['features'][calls] == 2  # one pool, one relu saved


def _reference_features(g, gates, fold, prune):
  """numpy: per-node executions without merging (exact, tested elsewhere), then each duplicate
  group runs once if any member runs."""
  t = T.compile_template(g)
  mult = np.asarray(T.soft_activity(t, gates, None, fold, prune)['mult'])
  rep = G.duplicate_of(g)
  merged = np.zeros_like(mult)
  for i in range(len(g)):
    merged[rep[i]] = max(merged[rep[i]], mult[i])
  return merged @ G.node_stats(g).features


@pytest.mark.parametrize('fold,prune', list(itertools.product([True, False], repeat=2)))
def test_soft_exact_at_hard_gates(fold, prune):
  rt = _runtime(fold, prune)
  g = _dup_graph(num_gates=2)
  for gates in itertools.product([0, 1], repeat=2):
    gates = np.array(gates, np.float32)
    out = np.asarray(hardware.cost(g, gates, runtime=rt)['features'])
    ref = _reference_features(g, gates, fold, prune)
    np.testing.assert_allclose(out[:-1], ref[:-1], rtol=1e-6, err_msg=str(gates))
  tn = nb201_graph.template(SMALL)
  ops = nb201.sample_ops(np.random.default_rng(0), 6)
  gates = nb201_graph.gates_from_masks(nb201.ops_to_mask(ops))
  out = np.asarray(hardware.cost(tn, gates, runtime=rt)['features'])
  for k in range(len(ops)):
    ref = _reference_features(tn.graph, gates[k], fold, prune)
    np.testing.assert_allclose(out[k, :-1], ref[:-1], rtol=1e-5, err_msg=str(ops[k]))


def test_nb201_pools_on_one_node_run_once():
  # three 3x3 avg pools on a cell's input node: one kernel per cell with merging, three without
  ops = nb201.parse_arch_str('|avg_pool_3x3~0|+|avg_pool_3x3~0|skip_connect~1|'
                             '+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|')
  gates = nb201_graph.gates_from_masks(nb201.ops_to_mask(ops))
  reads = G.FEATURES.index('pool_reads')
  tn = nb201_graph.template(SMALL)
  merged = np.asarray(hardware.cost(tn, gates, runtime=_runtime())['features'])[reads]
  plain = np.asarray(hardware.cost(tn, gates, runtime=_runtime(merge=False))['features'])[reads]
  # one cell per stage (N=1) at 8x8x4, 4x4x8, 2x2x16; a 3x3 pool reads 9 per output element
  per_pool = 9 * (8 * 8 * 4 + 4 * 4 * 8 + 2 * 2 * 16)
  assert plain - merged == 2 * per_pool


def test_merge_latency_gradient_matches_finite_differences():
  hardware_fixtures.assert_latency_gradient_matches_fd(_runtime(False, False))


def test_concrete_cost_refuses_gated_graph_with_merging():
  with pytest.raises(ValueError, match='use cost'):
    hardware.concrete_cost(_dup_graph(num_gates=2), runtime=_runtime())

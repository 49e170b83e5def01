"""Elimination policies (Runtime.fold_constants, prune_dead): exact vs soft, gradients."""

import dataclasses
import itertools

import jax
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
POLICIES = list(itertools.product([True, False], repeat=2))


def _runtime(fold, prune):
  return dataclasses.replace(hardware.get_runtime('cmsis-nn'), name=f'test{fold}{prune}',
                             fold_constants=fold, prune_dead=prune)


def test_catalog_runtimes_keep_exact_pruner_semantics():
  for rt in devices.RUNTIMES.values():
    assert rt.fold_constants and rt.prune_dead, rt.name


def test_hard_activity_policies_by_hand():
  g = hardware_fixtures.gated_graph()
  # every sum term off: folded away by default; without folding the zero sum feeds relu/conv2
  _, active = G.hard_activity(g, np.array([0, 0, 0, 1]))
  assert active.tolist() == [True, False, False, False, False, False, False, False]
  _, active = G.hard_activity(g, np.array([0, 0, 0, 1]), fold_constants=False)
  assert active.tolist() == [True, False, False, False, True, True, True, True]
  # relu off: conv2 and its add lose their input either way; pruning does not matter here
  _, active = G.hard_activity(g, np.array([0, 1, 0, 0]), prune_dead=False)
  assert active.tolist() == [True, False, True, False, True, False, False, True]
  # a branch that does not reach the output: only prune_dead=False keeps it
  b = G.GraphBuilder('dead', num_gates=1)
  x = b.input((4, 4, 2))
  b.conv2d(x, 2, 3, name='dead_conv')
  b.conv2d(x, 2, 1, gate=0, name='out')
  dead = b.build()
  assert G.hard_activity(dead, np.array([1]))[1].tolist() == [True, False, True]
  assert G.hard_activity(dead, np.array([1]), prune_dead=False)[1].tolist() == [True, True, True]


@pytest.mark.parametrize('fold,prune', POLICIES)
def test_soft_activity_exact_at_hard_gates(fold, prune):
  g = hardware_fixtures.gated_graph()
  t = T.compile_template(g)
  soft = jax.jit(lambda gates: T.soft_activity(t, gates, None, fold, prune)['act'])
  for gates in itertools.product([0, 1], repeat=4):
    gates = np.array(gates, np.float32)
    _, active = G.hard_activity(g, gates, fold, prune)
    np.testing.assert_array_equal(np.asarray(soft(gates)) > 0.5, active, err_msg=str(gates))
  tn = nb201_graph.template(SMALL)
  ops = nb201.sample_ops(np.random.default_rng(0), 8)
  gates = nb201_graph.gates_from_masks(nb201.ops_to_mask(ops))
  soft = jax.jit(jax.vmap(lambda g_: T.soft_activity(tn, g_, None, fold, prune)['act']))(gates)
  for k in range(len(ops)):
    _, active = G.hard_activity(tn.graph, gates[k], fold, prune)
    np.testing.assert_array_equal(np.asarray(soft[k]) > 0.5, active, err_msg=str(ops[k]))


def test_no_fold_latency_gradient_matches_finite_differences():
  hardware_fixtures.assert_latency_gradient_matches_fd(_runtime(False, True))


def test_policies_order_the_work():
  # less elimination never means less work: full <= no_fold <= none (per candidate)
  g = nb201_graph.template_graph(SMALL)
  node_macs = G.node_stats(g).macs
  masks = nb201.ops_to_mask(nb201.sample_ops(np.random.default_rng(1), 32))
  macs = np.array([[node_macs[G.hard_activity(g, m.reshape(-1), f, p)[1]].sum() for m in masks]
                   for f, p in ((True, True), (False, True), (False, False))])
  assert np.all(macs[0] <= macs[1]) and np.all(macs[1] <= macs[2])
  assert np.any(macs[0] < macs[1]) and np.any(macs[1] < macs[2])


def test_concrete_cost_refuses_gated_graph_with_other_policy():
  with pytest.raises(ValueError, match='use cost'):
    hardware.concrete_cost(hardware_fixtures.gated_graph(), runtime=_runtime(False, True))

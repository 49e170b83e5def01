"""Graph IR: builder shapes, validation, per-node counts and exact pruning."""

import numpy as np
import pytest

from hardware import graph as G


def _residual_graph():
  b = G.GraphBuilder('res')
  x = b.input((8, 8, 4))
  y = b.conv2d(x, 4, 3, name='conv')          # 8*8*4 * 3*3*4 = 9216 MACs
  z = b.add(x, y, name='add')
  p = b.global_avg_pool(z, name='gap')
  b.dense(p, 10, name='fc')                   # 4*10 = 40 MACs
  return b.build()


def test_builder_infers_shapes():
  b = G.GraphBuilder()
  x = b.input((32, 32, 3))
  c = b.conv2d(x, 16, 3, 2)
  d = b.depthwise_conv2d(c, 3)
  p = b.pool(d, 'max', 2)
  v = b.conv2d(p, 8, 5, padding='valid')
  f = b.reshape(v)
  g = b.build()
  assert g.nodes[c].shape == (16, 16, 16)
  assert g.nodes[d].shape == (16, 16, 16)
  assert g.nodes[p].shape == (8, 8, 16)
  assert g.nodes[v].shape == (4, 4, 8)
  assert g.nodes[f].shape == (1, 1, 128)


def test_node_stats_hand_counts():
  g = _residual_graph()
  st = G.node_stats(g)
  assert st.macs.tolist() == [0, 9216, 0, 0, 40]
  assert st.weights.tolist() == [0, 144, 0, 0, 40]
  assert st.biases.tolist() == [0, 4, 0, 0, 10]
  assert st.op_classes == ('none', 'conv', 'elementwise', 'pool', 'dense')
  assert st.out_bytes.tolist() == [256, 256, 256, 4, 10]


def test_op_classes_of_convs():
  b = G.GraphBuilder()
  x = b.input((8, 8, 8))
  b.conv2d(x, 8, 1)
  b.conv2d(x, 8, 3, groups=8)
  b.depthwise_conv2d(x, 3)
  st = G.node_stats(b.build())
  assert st.op_classes[1:] == ('pointwise', 'depthwise', 'depthwise')


def test_validate_rejects_bad_graphs():
  with pytest.raises(ValueError, match='input'):
    G.validate(G.Graph((G.Node('c', 'conv2d', (), (1, 1, 1)),)))
  with pytest.raises(ValueError, match='topological'):
    G.validate(G.Graph((G.Node('in', 'input', (), (1, 1, 1)), G.Node('a', 'add', (2,), (1, 1, 1)))))
  with pytest.raises(ValueError, match='unknown op'):
    G.Node('x', 'conv3d', (), (1, 1, 1))
  with pytest.raises(ValueError, match='mismatched'):
    b = G.GraphBuilder()
    x = b.input((4, 4, 2))
    b.add(x, b.conv2d(x, 3))


def _gated_graph():
  """x -> {identity (gate 0), conv (gate 1)} -> add -> relu (gate 2)."""
  b = G.GraphBuilder('gated', num_gates=3)
  x = b.input((4, 4, 2))
  i = b.identity(x, gate=0, name='skip')
  c = b.conv2d(x, 2, 3, gate=1, name='conv')
  s = b.add(i, c, name='sum')
  b.activation(s, 'relu', gate=2, name='relu')
  return b.build()


def test_prune_resolves_single_input_sum_to_alias():
  g = G.prune(_gated_graph(), np.array([1, 0, 1]))
  assert [n.name for n in g.nodes] == ['input', 'relu']
  assert g.nodes[1].inputs == (0,)
  g = G.prune(_gated_graph(), np.array([1, 1, 1]))
  assert [n.name for n in g.nodes] == ['input', 'conv', 'sum', 'relu']
  assert g.nodes[2].inputs == (0, 1)
  assert all(n.gate == -1 for n in g.nodes)


def test_prune_drops_dead_and_constant_nodes():
  # output gated off: nothing is computed, only the input remains
  g = G.prune(_gated_graph(), np.array([1, 1, 0]))
  assert [n.name for n in g.nodes] == ['input']
  # both sum terms off: the sum is a zero tensor, so the relu is constant and folded
  live, active = G.hard_activity(_gated_graph(), np.array([0, 0, 1]))
  assert live.tolist() == [True, False, False, False, False]
  assert active.tolist() == [True, False, False, False, False]


def test_torch_style_params_unfolds_batchnorm():
  b = G.GraphBuilder()
  x = b.input((4, 4, 3))
  y = b.conv2d(x, 8, 3, bias=False, folded_bn=True)
  b.batchnorm(y)
  assert G.torch_style_params(b.build()) == 3 * 3 * 3 * 8 + 2 * 8 + 2 * 8

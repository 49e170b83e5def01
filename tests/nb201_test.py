"""The NB201 space: arch strings, indices, masks, params and FLOPs against the benchmark files."""
import csv

import numpy as np
import pytest

from search_spaces import nb201


def test_all_15625_index_string_pairs_round_trip(data_dir, arch_table):
  with open(data_dir / 'nb201' / 'nb201_test_acc_200ep_nats.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == nb201.NUM_ARCHS
  for r in rows:
    index = int(r['arch_index'])
    ops = arch_table.index_to_ops[index]
    assert nb201.format_arch_str(ops) == r['arch_str']
    assert nb201.parse_arch_str(r['arch_str']) == tuple(ops)
  all_ops = nb201.all_ops()
  np.testing.assert_array_equal(arch_table.index_to_ops[arch_table.ops_to_index(all_ops)], all_ops)


def test_codes_and_masks_round_trip():
  ops = nb201.all_ops()
  np.testing.assert_array_equal(nb201.ops_to_code(ops), np.arange(nb201.NUM_ARCHS))
  np.testing.assert_array_equal(nb201.mask_to_ops(nb201.ops_to_mask(ops)), ops)
  with pytest.raises(nb201.ArchError, match='one-hot'):
    nb201.mask_to_ops(nb201.supernet_mask(1))


@pytest.mark.parametrize('bad, reason', [
    ('', 'expected 3 nodes'),
    ('|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|', 'needs 2 inputs'),
    ('|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|', "unknown op 'conv'"),
    ('|none~1|+|none~0|none~1|+|none~0|none~1|none~2|', 'should read'),
    ('none~0|+|none~0|none~1|+|none~0|none~1|none~2|', 'wrapped'),
])
def test_bad_arch_strings_give_one_line_errors(bad, reason):
  with pytest.raises(nb201.ArchError, match=reason) as err:
    nb201.parse_arch_str(bad)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100', 'ImageNet16-120'])
def test_params_and_flops_match_naslib_within_half_a_percent(data_dir, dataset):
  with open(data_dir / 'nb201' / 'nb201_zc_proxies_subset_naslib.csv', newline='') as f:
    rows = [r for r in csv.DictReader(f) if r['dataset'] == dataset]
  assert len(rows) > 700
  masks = nb201.ops_to_mask([nb201.parse_arch_str(r['arch_str']) for r in rows])
  config = nb201.NB201Config.for_dataset(dataset)
  params = nb201.count_params(masks, config) / 1e6
  flops = nb201.count_flops(masks, config) / 1e6
  np.testing.assert_allclose(params, [float(r['params']) for r in rows], rtol=5e-3)
  np.testing.assert_allclose(flops, [float(r['flops']) for r in rows], rtol=5e-3)


def test_nb201_flops_convention_reproduces_published_extremes():
  masks = nb201.ops_to_mask(nb201.all_ops())
  flops = nb201.count_flops(masks, nb201.NB201Config(), 'nb201') / 1e6
  params = nb201.count_params(masks, nb201.NB201Config()) / 1e6
  assert flops.min() == pytest.approx(7.78305) and flops.max() == pytest.approx(220.11969)
  assert params.min() == pytest.approx(0.073306) and params.max() == pytest.approx(1.531546)


def test_connectivity():
  conv = nb201.CONV3
  assert nb201.is_connected([conv] * 6)
  assert not nb201.is_connected([0] * 6)
  # Only path 0->1->3 exists but edge 1->3 (index 4) is none: disconnected.
  assert not nb201.is_connected([conv, 0, 0, 0, 0, 0])
  assert nb201.is_connected([conv, 0, 0, 0, conv, 0])


def test_sample_ops_is_seeded_and_distinct():
  a = nb201.sample_ops(np.random.default_rng(3), 100)
  b = nb201.sample_ops(np.random.default_rng(3), 100)
  np.testing.assert_array_equal(a, b)
  assert len(np.unique(nb201.ops_to_code(a))) == 100
  with pytest.raises(nb201.ArchError):
    nb201.sample_ops(np.random.default_rng(0), 0)


def test_dead_edges_become_none_and_equal_rows_are_one_network():
  """An edge out of a node the input does not reach, or into a node that does not reach the
  output, carries nothing: `without_dead_edges` sets it to none, and archs equal after it give
  the same logits at init (the supernet walk, same weights)."""
  import jax
  from search_spaces.nb201 import net
  c1, c3, pool = nb201.CONV1, nb201.CONV3, nb201.OPS.index('avg_pool_3x3')
  # node 1 has only a none input, so edges 1->2 and 1->3 are dead; node 2 then only feeds 3
  a = np.array([0, 0, c1, c1, pool, c1])
  np.testing.assert_array_equal(nb201.without_dead_edges(a), [0, 0, 0, c1, 0, 0])
  b = np.array([0, 0, c3, c1, c1, c3])
  np.testing.assert_array_equal(nb201.without_dead_edges(b), nb201.without_dead_edges(a))
  # every live edge is kept, connectivity never changes, and the map is idempotent
  ops = nb201.all_ops()
  clean = nb201.without_dead_edges(ops)
  np.testing.assert_array_equal(nb201.without_dead_edges(clean), clean)
  np.testing.assert_array_equal(nb201.is_connected(clean), nb201.is_connected(ops))
  assert (clean[nb201.is_connected(ops)] != 0).any(-1).all()
  full = np.array([c3] * 6)
  np.testing.assert_array_equal(nb201.without_dead_edges(full), full)
  config = nb201.NB201Config(C=4, N=1, input_size=8)
  params = net.init_params(jax.random.PRNGKey(0), config)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  logits = [np.asarray(net.apply(params, nb201.ops_to_mask(o), x, config)[0]) for o in (a, b)]
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-6)
  other = np.asarray(net.apply(params, nb201.ops_to_mask(full), x, config)[0])
  assert not np.allclose(other, logits[0], atol=1e-4)

"""Proxy aggregates on hand-made columns: definitions, orientation, flagged values, parsing."""
import numpy as np
import pytest

from engine.proxies import aggregate
from engine import proxies


def test_tenas_is_the_rank_sum_of_oriented_ntk_and_regions():
  # ntk_cond: lower is better -> ranks 3, 1, 2; linear_regions: higher is better -> 1, 3, 2.
  columns = {'ntk_cond': np.array([10.0, 300.0, 50.0]),
             'linear_regions': np.array([5.0, 900.0, 40.0])}
  score, flagged = aggregate.compute(aggregate.parse('tenas'), columns)
  np.testing.assert_array_equal(score, [3 + 1, 1 + 3, 2 + 2])
  assert flagged == [[], [], []]


def test_logrank_sums_logs_of_percentile_ranks():
  columns = {'nwot': np.array([1.0, 2.0, 3.0, 4.0]), 'flops': np.array([4.0, 3.0, 2.0, 1.0])}
  agg = aggregate.parse('agg:nwot+flops:logrank')
  score, _ = aggregate.compute(agg, columns)
  expected = np.log(np.array([1, 2, 3, 4]) / 4) + np.log(np.array([4, 3, 2, 1]) / 4)
  np.testing.assert_allclose(score, expected)
  # The plain rank sum ties all four; the log rank sum prefers the balanced middle archs.
  ranks, _ = aggregate.compute(aggregate.parse('agg:nwot+flops'), columns)
  np.testing.assert_array_equal(ranks, [5, 5, 5, 5])
  assert score[1] == score[2] > score[0] == score[3]


def test_ties_share_the_mean_rank():
  columns = {'params': np.array([1.0, 1.0, 2.0]), 'flops': np.array([7.0, 8.0, 9.0])}
  score, _ = aggregate.compute(aggregate.parse('agg:params+flops'), columns)
  np.testing.assert_array_equal(score, [1.5 + 1, 1.5 + 2, 3 + 3])


def test_flagged_and_nonfinite_values_take_the_worst_rank_and_are_reported():
  columns = {'ntk_cond': np.array([5.0, np.inf, 20.0, np.nan]),
             'linear_regions': np.array([10.0, 10.0, 10.0, 10.0])}
  flags = {'ntk_cond': np.array([0, 1, 0, 2])}
  score, flagged = aggregate.compute(aggregate.parse('tenas'), columns, flags)
  # valid ntk ranks: 5 -> 4, 20 -> 3; the two invalid tie at (1 + 2) / 2; regions all tie at 2.5.
  np.testing.assert_array_equal(score, [4 + 2.5, 1.5 + 2.5, 3 + 2.5, 1.5 + 2.5])
  assert flagged == [[], ['ntk_cond'], [], ['ntk_cond']]
  # A flag alone (finite value) also puts the arch last.
  score, flagged = aggregate.compute(aggregate.parse('tenas'),
                                     {'ntk_cond': np.array([1.0, 2.0]),
                                      'linear_regions': np.array([1.0, 1.0])},
                                     {'ntk_cond': np.array([1, 0])})
  assert score[0] < score[1] and flagged == [['ntk_cond'], []]


def test_split_expands_components_once_and_keeps_requested_order():
  names, aggs = aggregate.split('nwot,tenas,agg:nwot+synflow+flops:logrank,linear_regions,tenas')
  assert names == ['nwot', 'linear_regions', 'ntk_cond', 'synflow', 'flops']
  assert [a.name for a in aggs] == ['tenas', 'agg:nwot+synflow+flops:logrank']
  assert aggregate.parse('agg: params + flops :rank').name == 'agg:params+flops'


@pytest.mark.parametrize('spec, fragment', [
    ('agg:nwot', 'at least two proxies'),
    ('agg:nwot+bogus', "unknown proxy 'bogus'"),
    ('agg:nwot+flops:zscore', "unknown aggregate method 'zscore'"),
    ('agg:nwot+tenas', "contains the aggregate 'tenas'"),
])
def test_bad_aggregates_fail_in_one_line_as_proxy_errors(spec, fragment):
  with pytest.raises(proxies.ProxyError, match=fragment) as err:
    aggregate.split(spec)
  assert '\n' not in str(err.value)


def test_weights_scale_each_component_term_and_normalise_the_name():
  columns = {'nwot': np.array([1.0, 2.0, 3.0, 4.0]), 'flops': np.array([4.0, 3.0, 2.0, 1.0])}
  agg = aggregate.parse('agg:nwot+ 2.0*flops:logrank')
  assert agg.name == 'agg:nwot+2*flops:logrank' and agg.weights == (1.0, 2.0)
  score, _ = aggregate.compute(agg, columns)
  expected = np.log(np.array([1, 2, 3, 4]) / 4) + 2 * np.log(np.array([4, 3, 2, 1]) / 4)
  np.testing.assert_allclose(score, expected)
  # Unit weights spell and behave like the unweighted aggregate.
  assert aggregate.parse('agg:1*nwot+flops') == aggregate.parse('agg:nwot+flops')
  for bad in ('agg:nwot+0*flops', 'agg:nwot+x*flops', 'agg:nwot+-1*flops'):
    with pytest.raises(aggregate.AggregateError, match='bad weight'):
      aggregate.parse(bad)

"""The one searcher library on the plug-in spaces (tinycnn, mbv2): every searcher finds a best
arch planted in a synthetic proxy, a constant or all-flagged proxy stops the search (no pick
without evidence), every searcher runs on the real scorer, a latency budget binds, an impossible
one is one line and exit 2, and grad_prune's gradient through the relaxed network and cost model
matches finite differences. (The same searchers on NB201: tests/search_test.py.)"""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli

from engine import search
from engine.proxies import aggregate
from engine.search import searchers
from experiments import search as search_exp
from search_spaces import registry

# mbv2 is too large to enumerate: the search knows a sample of it, one width x resolution group;
# here its smallest group (compile time on 2 cores), the command picks one TinyNAS-style
SMALL_GROUP = {'mbv2': (0.5, 96)}
# the scoring flags make_scorer reads (experiments.run's names), at small sizes
CONFIG = types.SimpleNamespace(
    dataset='cifar10', init='torch_default', zc_batch=4, ntk_batch=4, repeats=1, ntk_width=16,
    ntk_cells=5, zc_width=16, zc_cells=5, cotangent_chunk=0, sparse=False, single_path=True,
    zico_splits=2, batch_candidates=4, candidate_chunk=1)
OPTIONS = search.Options(batch=4, random_samples=8, evolution_samples=12, population=4,
                         tournament=2, recheck=3, pool=8)


def _problem(space_name, proxies='params', budget_ms=None, weights=search.Weights()):
  space = registry.get(space_name)
  constraints = search.Constraints(latency_budget_ms=budget_ms)
  if space.enumerate is not None:
    table = search_exp.space_table(space, constraints)
  else:
    archs = [a for a in space.sample(np.random.default_rng(0), 1024)
             if space.group(a) == SMALL_GROUP[space_name]]
    table = search.build_table(space, constraints, archs, space.input_shape, space.num_classes)
  plain, _ = aggregate.split(proxies)
  return search.Problem(table, search.make_scorer(space, plain, CONFIG, 0, None), proxies,
                        weights)


def _assert_feasible(problem, result, budget_ms=None):
  i = result.index
  assert problem.table.archs[i] == result.arch and problem.table.feasible[i]
  assert problem.space.group(result.arch) == problem.table.group
  if budget_ms is not None:
    assert problem.table.costs['latency_ms'][i] <= budget_ms
  assert np.isfinite(result.objective)


@pytest.mark.parametrize('space', ['tinycnn', 'mbv2'])
@pytest.mark.parametrize('name', list(search.SEARCHERS))
def test_every_searcher_runs_on_the_real_scorer(space, name):
  """tinycnn's enumerated and mbv2's sampled table with the real scorer; the pick's reported
  values are its own."""
  problem = _problem(space, weights=search.Weights(latency=0.5))
  result = search.search(name, problem, seed=1, options=OPTIONS)
  _assert_feasible(problem, result)
  assert result.values['params'] == problem.table.costs['params'][result.index]
  # the finalist stage's candidates: the pick first, each once, all feasible
  assert result.ranked[0] == result.index and len(set(result.ranked)) == len(result.ranked)
  assert problem.table.feasible[result.ranked].all()
  evidence = result.evidence['params']
  if name == 'grad_prune':
    # its final pool is the best first-order estimates, and params enters them through the
    # relaxed cost model: large archs (ties in params allowed; latency decides among them)
    params = problem.table.costs['params']
    assert result.values['params'] >= np.quantile(params[problem.table.feasible], 0.9)
  else:  # the final pool was told apart (or was one arch)
    assert evidence['distinct'] > 1 or evidence['candidates'] == 1


SYNTHETIC = 'synflow'  # a registered proxy name (Problem checks it) whose values _Planted gives


class _Planted:
  """A synthetic proxy (named SYNTHETIC) on tinycnn's choice rows: the number of slots whose option(s) include the
  planted arch's, so the planted arch alone scores highest, every supernet still holding it
  outscores those that do not, and the landscape rises towards it one choice at a time (what
  evolution and pruning need). `mode`: 'planted', 'constant' (every arch equal) or 'flagged'
  (nan on every arch; with `flag_share`, nan on that share only)."""
  names = (SYNTHETIC,)
  higher_is_better = {SYNTHETIC: True}

  def __init__(self, table, best, mode='planted', flag_share=0.0):
    self.target = table.one_hot([best])[0]
    self.mode, self.flag_share = mode, flag_share
    self.compile_s = self.run_s = 0.0

  def reseed(self, seed):
    pass

  def default_k(self, n):
    return 8

  def _values(self, masks):
    masks = np.asarray(masks, np.float64)
    value = (masks * self.target).sum((-1, -2))
    if self.mode == 'constant':
      value = np.ones(len(masks))
    flagged = np.zeros(len(masks), bool)
    if self.mode == 'flagged':
      # a deterministic share of the candidates, by a hash of their mask
      code = (masks.reshape(len(masks), -1) * np.arange(1, masks[0].size + 1)).sum(-1)
      flagged = (code * 0.6180339887) % 1.0 < self.flag_share if self.flag_share else True
    flagged = np.broadcast_to(flagged, value.shape)
    return {SYNTHETIC: np.where(flagged, np.nan, value),
            SYNTHETIC + '_flag': flagged.astype(np.int32)}

  def score_masks(self, group, masks, k=None, progress=None):
    return self._values(masks)

  def inputs_for(self, group):
    return None

  def traced(self, group, mask, inputs, names):
    return {SYNTHETIC: jnp.sum(mask * jnp.asarray(self.target))}


PLANTED_OPTIONS = search.Options(batch=8, random_samples=2000, evolution_samples=400,
                                 population=16, tournament=4, recheck=4, pool=2000)


def _planted_problem(mode='planted', flag_share=0.0):
  """tinycnn with the planted proxy as the whole objective; the planted arch is a feasible one
  of middling size, so neither the first in table order nor the largest wins by accident."""
  space = registry.get('tinycnn')
  table = search_exp.space_table(space, search.Constraints())
  order = searchers.size_order(table)
  best = int(order[len(order) // 2])
  problem = search.Problem(table, _Planted(table, best, mode, flag_share), SYNTHETIC,
                           search.Weights())
  return problem, best


@pytest.mark.parametrize('name', list(search.SEARCHERS))
def test_every_searcher_finds_the_planted_best_arch(name):
  problem, best = _planted_problem()
  assert best not in (0, int(searchers.size_order(problem.table)[0]))
  result = search.search(name, problem, seed=1, options=PLANTED_OPTIONS)
  assert result.index == best, (name, result.log)
  assert result.values[SYNTHETIC] == len(problem.table.slots)


@pytest.mark.parametrize('name', list(search.SEARCHERS))
@pytest.mark.parametrize('mode, says', [('constant', 'equal on all'),
                                        ('flagged', 'flagged on all')])
def test_a_proxy_that_tells_nothing_apart_stops_the_search(name, mode, says):
  from experiments import common
  problem, _ = _planted_problem(mode)
  with pytest.raises(search.UninformativeScores,
                     match=f'no proxy tells .*{SYNTHETIC} {says}.* not a choice') as info:
    search.search(name, problem, seed=1, options=PLANTED_OPTIONS)
  # on the command line: this one line and exit 2 (the error boundary takes it as the user's)
  assert common.user_error_message(info.value) == str(info.value)


def _two_archs_problem(proxies='agg:synflow+jacob_cov:rank'):
  """tinycnn's table, two feasible archs of different size (smaller first in table order)."""
  table = search_exp.space_table(registry.get('tinycnn'), search.Constraints())
  order = searchers.size_order(table)
  pair = np.array([order[len(order) // 2], order[len(order) // 3]])  # small, then large
  assert table.costs['params'][pair[1]] > table.costs['params'][pair[0]]
  scorer = types.SimpleNamespace(higher_is_better={'synflow': True, 'jacob_cov': True})
  return search.Problem(table, scorer, proxies, search.Weights()), pair


def test_an_aggregate_tie_of_disagreeing_components_is_noted_not_a_stop():
  """An aggregate equal on every candidate because its components disagree (their ranks cancel)
  is conflicting evidence, not none: the search goes on, and the note names the components that
  differ. Before, it stopped like a tie of proxies that measured nothing (prune's final pool of
  two under `params+synflow+2*jacob_cov` on ~11% of held-out searches)."""
  problem, pair = _two_archs_problem()
  values = {'synflow': np.array([1., 2.]), 'jacob_cov': np.array([2., 1.]),
            **{c: problem.table.costs[c][pair] for c in search.COST_NAMES}}
  log = []
  assert searchers.check_evidence(problem, values, np.array([True, True]), 'the pool', log)
  assert any('equal on all 2, though its components synflow, jacob_cov differ' in line
             for line in log), log
  # every component equal too: nothing told them apart, which still stops the search
  values.update(synflow=np.array([1., 1.]), jacob_cov=np.array([1., 1.]))
  with pytest.raises(search.UninformativeScores, match=r'equal on all 2\): a pick would be'):
    searchers.check_evidence(problem, values, np.array([True, True]), 'the pool')


def test_a_tie_at_the_top_goes_to_the_largest_candidate_and_is_listed():
  """`best_position`: among candidates sharing the best objective the larger (parameters, then
  MACs) wins, whatever the table order, and the tied ones are listed; argmax took the first in
  table order."""
  problem, pair = _two_archs_problem()
  small, large = pair
  assert searchers.best_position(problem, pair, np.array([1.0, 1.0])) == (1, [large, small])
  assert searchers.best_position(problem, pair[::-1], np.array([1.0, 1.0])) == (0,
                                                                                [large, small])
  assert searchers.best_position(problem, pair, np.array([2.0, 1.0])) == (0, [])
  assert searchers.best_position(problem, pair, np.array([-np.inf, 1.0])) == (1, [])
  assert searchers.ranked(problem, pair, np.array([1.0, 1.0])) == [large, small]


def test_a_search_whose_final_pool_cancels_out_picks_the_larger_arch():
  """End to end through `_finish`: two candidates, synflow for one and jacob_cov for the other,
  equal weights: the larger is picked, `Result.tied` lists both, and the log says why."""
  problem, pair = _two_archs_problem()
  small, large = pair

  def score(idx, k=None):
    first = np.asarray(idx) == small
    return {'synflow': np.where(first, 2.0, 1.0), 'jacob_cov': np.where(first, 1.0, 2.0),
            **{c: problem.table.costs[c][idx] for c in search.COST_NAMES}}

  problem.score = score
  log = []
  result = searchers._finish(problem, pair, 0, log, k=2)
  assert result.index == large and result.tied == [large, small]
  assert result.ranked == [large, small]
  assert any(line.startswith('note: 2 candidates of the final pool share the best objective; '
                             'the largest') for line in log), log


def test_an_aggregate_counts_and_notes_its_flagged_components():
  """A rank sum is finite where a component is not (it ranks last there): the component's
  flags are counted in the aggregate's evidence and noted, not hidden behind it."""
  table = search_exp.space_table(registry.get('tinycnn'), search.Constraints())
  scorer = types.SimpleNamespace(higher_is_better={'synflow': True, 'linear_regions': True})
  problem = search.Problem(table, scorer, 'agg:synflow+linear_regions:rank', search.Weights())
  values = {'synflow': np.array([1., 2., 3., 4.]),
            'linear_regions': np.array([5., np.nan, 7., 8.]),
            'linear_regions_flag': np.array([0, 2, 0, 0]),
            **{c: table.costs[c][:4] for c in search.COST_NAMES}}
  log = []
  evidence = searchers.check_evidence(problem, values, np.ones(4, bool), 'the pool', log)
  name = problem.aggregates[0].name
  assert evidence[name]['flagged'] == 0 and evidence[name]['components_flagged'] == {
      'linear_regions': 1}
  assert any(line.startswith(f'note: linear_regions (in {name}) flagged on 1 of 4') for line in log)


def test_a_weight_on_a_term_not_searched_is_refused_in_one_line():
  from experiments import common
  with pytest.raises(ValueError, match="--proxy_weights names 'synflw', which is not a") as info:
    _problem('tinycnn', 'params', weights=search.Weights((('synflw', 5.0),)))
  assert common.user_error_message(info.value) == str(info.value)


def test_a_partly_flagged_proxy_still_picks_and_reports_the_flagged_share():
  problem, best = _planted_problem('flagged', flag_share=0.25)
  result = search.search('random', problem, seed=1, options=PLANTED_OPTIONS)
  evidence = result.evidence[SYNTHETIC]
  assert 0.15 < evidence['flagged'] / evidence['candidates'] < 0.35
  assert any(line.startswith(f'note: {SYNTHETIC} flagged on') for line in result.log)
  # the planted arch may itself be flagged; the pick is the best unflagged one
  assert np.isfinite(result.values[SYNTHETIC]) and result.values[SYNTHETIC + '_flag'] == 0


@pytest.mark.parametrize('space', ['tinycnn', 'mbv2'])
def test_a_latency_budget_that_excludes_the_pick_changes_it_and_binds(space):
  free = search.search('rerank', _problem(space), seed=0, options=OPTIONS)
  free_ms = _problem(space).table.costs['latency_ms'][free.index]
  budget = 0.7 * float(free_ms)
  problem = _problem(space, budget_ms=budget)
  for name in ('rerank', 'prune'):
    bound = search.search(name, problem, seed=0, options=OPTIONS)
    _assert_feasible(problem, bound, budget)
    assert bound.arch != free.arch


# mbv2 is slow (11 s cold, its whole space costed): the same check runs on tinycnn by default
@pytest.mark.parametrize('space', ['tinycnn', pytest.param('mbv2', marks=pytest.mark.slow)])
def test_an_impossible_budget_is_one_line_and_exit_2(tmp_path, space):
  result = cli.run('--experiment=search', '--noprogress', f'--search_space={space}',
                   '--latency_budget_ms=0.001', f'--workdir={tmp_path}')
  cli.assert_one_line_error(result, f'no {space} arch', 'latency_ms', '> limit 0.001')


@pytest.mark.parametrize('proxy', ['params', pytest.param('synflow', marks=pytest.mark.slow)])
def test_grad_prune_gradient_on_mbv2_matches_finite_differences(proxy):
  """dJ/dmask of grad_prune's differentiable objective against central differences on the soft
  weights: latency, MACs and params through the relaxed cost model, and with synflow also
  through the relaxed network (a gradient itself, so the mask gradient is reverse-over-reverse;
  1-2 min of compiling: -m slow). The relaxed
  network's own gradient is checked in tests/mbv2_test.py."""
  problem = _problem('mbv2', proxy, weights=search.Weights(latency=0.5, flops=0.25))
  mask = searchers.start_mask(problem)
  rng = np.random.default_rng(0)
  soft = (mask * rng.uniform(0.3, 1.0, mask.shape)).astype(np.float32)
  g, value = problem.grad(soft)
  assert np.isfinite(g).all() and np.isfinite(value)
  inputs = problem.scorer.inputs_for(problem.table.group)
  f = jax.jit(lambda m: problem._differentiable_objective(m, inputs))
  live = np.argwhere(mask != 0)
  picks = live[rng.choice(len(live), 6, replace=False)]
  # the three slots of the largest gradients too, so a gradient that is all noise cannot pass
  picks = np.r_[picks, np.argwhere(np.abs(g) >= np.sort(np.abs(g).ravel())[-3])[:3]]
  eps = 2e-2
  for s, o in picks:
    step = np.zeros_like(soft)
    step[s, o] = eps
    fd = (float(f(jnp.asarray(soft + step))) - float(f(jnp.asarray(soft - step)))) / (2 * eps)
    assert fd == pytest.approx(g[s, o], rel=0.1, abs=2e-3 * np.abs(g).max()), (s, o)


def test_grad_prune_budgets_share_one_program_and_still_bind():
  """The limits and normalisers enter grad_prune's gradient as arguments: problems that differ
  only in the budget lower to the same program (one compile through the XLA cache, e.g. across
  search_eval's budget cells), and the gradient is still the budget's own (equal to the one with
  the budget written in as a constant; a binding budget changes it)."""
  free = _problem('tinycnn', weights=search.Weights(latency=0.5))
  mask = searchers.start_mask(free).astype(np.float32)
  ms = float(free.table.costs['latency_ms'].max())
  bound = _problem('tinycnn', budget_ms=0.3 * ms, weights=search.Weights(latency=0.5))
  inputs = bound.scorer.inputs_for(bound.table.group)
  programs = [jax.jit(jax.grad(p._differentiable_objective)).lower(
      jnp.asarray(mask), inputs, p._bounds()).as_text() for p in (free, bound)]
  assert programs[0] == programs[1]
  g = bound.grad(mask)[0]
  constant = jax.jit(jax.grad(lambda m: bound._differentiable_objective(m, inputs)))
  np.testing.assert_allclose(g, constant(jnp.asarray(mask)), rtol=1e-5, atol=1e-7)
  assert not np.allclose(g, free.grad(mask)[0])


def test_grad_prune_rechecks_the_largest_candidates_beside_the_gradients_best():
  """With a gradient that tells no candidate apart (its best estimates are then the first
  `recheck` in table order), the `recheck` largest candidates are still scored exactly, so
  with `params` as the objective the largest feasible arch wins."""
  problem = _problem('tinycnn', 'params')
  problem.grad = lambda mask: (np.zeros(np.shape(mask), np.float32), 0.0)
  candidates = problem.table.inside(searchers.start_mask(problem))
  largest = searchers.size_order(problem.table, candidates)[:OPTIONS.recheck]
  assert not set(largest) & set(candidates[:OPTIONS.recheck])  # else this test proves nothing
  result = search.search('grad_prune', problem, seed=0, options=OPTIONS)
  assert set(largest) <= set(result.ranked) and len(result.ranked) == 2 * OPTIONS.recheck
  assert result.index == largest[0]


@pytest.mark.slow
def test_grad_prune_on_mbv2_with_a_network_proxy_returns_a_feasible_arch():
  problem = _problem('mbv2', 'synflow', weights=search.Weights(latency=0.5))
  result = search.search('grad_prune', problem, seed=0, options=OPTIONS)
  _assert_feasible(problem, result)
  assert result.log[-1].startswith('recheck')


def test_the_report_names_the_proxy_network_of_the_searched_group_before_any_scoring():
  """The search prints the proxies' networks before it scores: on a space whose groups have
  their own input size (mbv2), the searched group's network, not a default group's."""
  problem = _problem('mbv2', 'synflow')
  lines = problem.scorer.networks(problem.table.group)
  assert lines == ["zero-cost mbv2's own network B=4"]


@pytest.mark.parametrize('band', [0.0, 0.2])
def test_rerank_band_scores_only_archs_near_the_largest(band):
  """--rerank_band: the scored pool is exactly the feasible archs with at least (1 - band) x the
  largest one's parameters (capped by the pool), and the pick is one of them."""
  problem = _problem('tinycnn', proxies='synflow')
  order = search.size_order(problem.table)
  params = problem.table.costs['params']
  near = [int(i) for i in order if params[i] >= (1 - band) * params[order[0]]][:64]
  seen = []
  real_score = problem.score

  def recording_score(idx, *args, **kwargs):
    seen.extend(int(i) for i in idx)
    return real_score(idx, *args, **kwargs)

  problem.score = recording_score
  result = search.search('rerank', problem, 0, dataclasses.replace(OPTIONS, pool=64, band=band))
  assert sorted(set(seen)) == sorted(near)
  assert result.index in near
  # a band that leaves one arch says the pick was no choice
  assert any(line.startswith('note: --rerank_band') for line in result.log) == (len(near) == 1)
  with pytest.raises(search.SearchError, match='rerank_band'):
    search.search('rerank', problem, 0, dataclasses.replace(OPTIONS, band=1.5))


def test_a_band_that_leaves_one_arch_says_so():
  problem = _problem('tinycnn', proxies='params')
  largest = search.size_order(problem.table)[0]
  params = problem.table.costs['params'].copy()
  params[largest] *= 1.1  # now alone in the 2% band
  problem.table = dataclasses.replace(problem.table,
                                      costs={**problem.table.costs, 'params': params})
  result = search.search('rerank', problem, 0, dataclasses.replace(OPTIONS, band=0.02))
  assert result.index == largest and result.scored == 1
  assert any(line.startswith('note: --rerank_band=0.02 leaves one arch') for line in result.log)

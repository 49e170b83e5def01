"""The one searcher library on the plug-in spaces (tinycnn, mbv2): every searcher runs and
returns a feasible arch, a latency budget binds, an impossible one is one line and exit 2, and
grad_prune's gradient through the relaxed network and cost model matches finite differences.
(The same searchers on NB201: tests/search_test.py.)"""
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
def test_every_searcher_returns_a_feasible_arch(space, name):
  problem = _problem(space, weights=search.Weights(latency=0.5))
  result = search.search(name, problem, seed=1, options=OPTIONS)
  _assert_feasible(problem, result)
  assert result.log and result.scored > 0


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


@pytest.mark.parametrize('space', ['tinycnn', 'mbv2'])
def test_an_impossible_budget_is_one_line_and_exit_2(tmp_path, space):
  result = cli.run('--experiment=search', '--noprogress', f'--search_space={space}',
                   '--latency_budget_ms=0.001', f'--workdir={tmp_path}')
  cli.assert_one_line_error(result, f'no {space} arch', 'latency_ms', '> limit 0.001')


@pytest.mark.parametrize('proxy', ['params', pytest.param('synflow', marks=pytest.mark.slow)])
def test_grad_prune_gradient_on_mbv2_matches_finite_differences(proxy):
  """dJ/dmask of grad_prune's differentiable objective against central differences on the soft
  weights: latency and MACs through the relaxed cost model (params is not differentiable, so it
  adds nothing), and with synflow also through the relaxed network (a gradient itself, so the
  mask gradient takes the forward-mode fallback; 1-2 min of compiling: -m slow). The relaxed
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


@pytest.mark.slow
def test_grad_prune_on_mbv2_with_a_network_proxy_returns_a_feasible_arch():
  problem = _problem('mbv2', 'synflow', weights=search.Weights(latency=0.5))
  result = search.search('grad_prune', problem, seed=0, options=OPTIONS)
  _assert_feasible(problem, result)
  assert result.log[-1].startswith('recheck')

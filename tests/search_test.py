"""Hardware-aware searchers on NB201: feasible winners, reproducibility, one-line errors,
outputs. (The same searchers on the plug-in spaces: tests/searchers_test.py.)

Tiny proxy settings keep compiles short; the space's cost table comes from the same on-disk
cache the command uses (computed once per cost-model version).
"""
import dataclasses
import json
import pathlib

import numpy as np
import pytest

import cli

from engine import proxies, scoring
from engine.proxies import aggregate
from engine import search
from engine.search import objective as obj
from engine.search import searchers
from experiments import search as search_exp
from search_spaces import nb201, registry

# 1000 linear-region samples (TE-NAS's batch): with 64 the thin network gave nearly every arch
# 64 regions, one per sample (with 256, most supernets of a pruning round 256), so the searchers'
# picks were the first candidate of an all-tied pool (now an error:
# engine.search.UninformativeScores)
TINY = proxies.ScoreSettings(ntk_batch=4, ntk_repeats=1, ntk_width=2, ntk_cells=1,
                             lr_batches=1, lr_batch_size=1000)
OPTIONS = search.Options(batch=8, random_samples=8, evolution_samples=16, population=8,
                         tournament=3, recheck=4, pool=16)


NB201 = registry.get('nb201')


def _table(constraints):
  return search_exp.space_table(NB201, constraints)


def _problem(names, settings, constraints, weights):
  plain, _ = aggregate.split(names)
  return search.Problem(_table(constraints), scoring.Scorer(NB201, plain, settings, 0, None),
                        names, weights)


def _toy_table(feasible):
  """The NB201 table with zero costs and the given feasibility."""
  archs = NB201.enumerate()
  valid = nb201.is_connected(nb201.all_ops())
  return search.SpaceTable(NB201, (), archs, {k: np.zeros(len(archs)) for k in obj.COST_NAMES},
                           valid, feasible & valid, {}, (32, 32, 3), 10, 'stm32f746',
                           'cmsis-nn', nb201.all_ops())


def _toy_problem(table):
  return type('P', (), {'table': table, 'space': NB201})()


@pytest.fixture(scope='module')
def budget():
  """Constraints with the median predicted latency as budget: half the space is ruled out."""
  table = _table(obj.Constraints())
  return obj.Constraints(latency_budget_ms=float(np.median(table.costs['latency_ms'])))


@pytest.fixture(scope='module')
def lr_problem(budget):
  return _problem('linear_regions', TINY, budget, obj.Weights())


@pytest.fixture(scope='module')
def cost_grad_problem(budget):
  """grad_prune on gradients of the cost model alone (flops, a count, has none): fast. (Linear
  regions saturate on the large archs of the final pools, and params ties there, latency too:
  no pick.)"""
  return _problem('flops', TINY, budget, obj.Weights(latency=1.0))


def _assert_feasible(problem, result, budget):
  code = nb201.ops_to_code(result.arch)
  assert code == result.index and problem.table.feasible[code]
  assert problem.table.costs['latency_ms'][code] <= budget.latency_budget_ms
  assert nb201.is_connected(np.asarray(result.arch))
  assert np.isfinite(result.objective)


@pytest.mark.parametrize('name', ['rerank', 'prune', 'random', 'evolution'])
def test_searcher_returns_feasible_arch(lr_problem, budget, name):
  result = search.search(name, lr_problem, seed=1, options=OPTIONS)
  _assert_feasible(lr_problem, result, budget)
  assert len(result.arch) == nb201.NUM_EDGES and result.log
  if name == 'rerank':  # the pick is the most linear regions among the pool, scored here anew
    pool = searchers.size_order(lr_problem.table)[:OPTIONS.pool]
    regions = lr_problem.score(pool, OPTIONS.batch)['linear_regions']
    assert result.index == pool[int(np.argmax(regions))]
    assert result.values['linear_regions'] == regions.max()


def test_grad_prune_returns_feasible_arch(cost_grad_problem, budget):
  result = search.search('grad_prune', cost_grad_problem, seed=1, options=OPTIONS)
  _assert_feasible(cost_grad_problem, result, budget)
  assert [line for line in result.log if not line.startswith('note: ')][-1].startswith('recheck')
  g, _ = cost_grad_problem.grad(searchers.start_mask(cost_grad_problem))
  # Latency gradient: a 3x3 conv costs more than a 1x1 conv, skip and pooling cost ~nothing.
  assert (g[:, nb201.CONV3] > g[:, nb201.CONV1]).all() and np.isfinite(g).all()


def test_forward_mode_gradient_equals_reverse_mode(cost_grad_problem):
  import jax
  import jax.numpy as jnp
  mask = searchers.start_mask(cost_grad_problem)
  reverse, value_r = cost_grad_problem.grad(mask)  # reverse mode compiles for the cost model
  value, forward = jax.jit(cost_grad_problem._value_and_forward_grad)(
      jnp.asarray(mask), cost_grad_problem.scorer.inputs_for(()))
  assert float(value) == pytest.approx(value_r, rel=1e-6)
  np.testing.assert_allclose(forward, reverse, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_grad_prune_through_a_gradient_proxy(budget):
  """synflow is a gradient: its mask gradient is reverse-over-reverse through the custom conv
  backward pass (one pass), checked against forward over reverse (one pass per mask entry)."""
  import jax
  import jax.numpy as jnp
  settings = proxies.ScoreSettings(zc_width=2, zc_cells=1, zc_batch=4)
  problem = _problem('synflow', settings, budget, obj.Weights(latency=0.5))
  result = search.search('grad_prune', problem, seed=1, options=OPTIONS)
  _assert_feasible(problem, result, budget)
  mask = searchers.start_mask(problem) * 0.7
  g, value = problem.grad(mask)
  assert np.isfinite(g).all() and np.abs(g[:, 1:]).sum() > 0
  value_f, forward = jax.jit(problem._value_and_forward_grad)(
      jnp.asarray(mask), problem.scorer.inputs_for(()))
  assert float(value_f) == pytest.approx(value, rel=1e-5)
  np.testing.assert_allclose(forward, g, rtol=1e-3, atol=1e-5 * np.abs(g).max())


@pytest.mark.slow
def test_grad_prune_through_the_ntk_returns_feasible_arch(budget):
  problem = _problem('ntk_cond_independent', TINY, budget, obj.Weights(latency=0.5))
  result = search.search('grad_prune', problem, seed=1, options=OPTIONS)
  _assert_feasible(problem, result, budget)
  g, _ = problem.grad(searchers.start_mask(problem))
  assert np.isfinite(g).all() and np.abs(g[:, 1:]).sum() > 0


def test_same_seed_same_result_and_seeds_differ(lr_problem):
  a = search.search('evolution', lr_problem, seed=3, options=OPTIONS)
  b = search.search('evolution', lr_problem, seed=3, options=OPTIONS)
  assert a.arch == b.arch and a.objective == b.objective and a.values == b.values
  c = search.search('prune', lr_problem, seed=3, options=OPTIONS)
  d = search.search('prune', lr_problem, seed=3, options=OPTIONS)
  assert c.arch == d.arch and c.values == d.values
  e = search.search('rerank', lr_problem, seed=3, options=OPTIONS)
  f = search.search('rerank', lr_problem, seed=3, options=OPTIONS)
  assert e.arch == f.arch and e.values == f.values


def test_rerank_scores_the_largest_feasible_archs(lr_problem):
  order = search.size_order(lr_problem.table)
  params = lr_problem.table.costs['params'][order]
  assert lr_problem.table.feasible[order].all() and (np.diff(params) <= 0).all()
  assert len(order) == lr_problem.table.feasible.sum()
  result = search.search('rerank', lr_problem, seed=0, options=OPTIONS)
  assert result.scored == OPTIONS.pool
  assert result.index in order[:OPTIONS.pool]


def test_baselines_are_feasible_and_the_oracle_is_the_best(budget):
  table = _table(budget)
  acc = np.random.default_rng(0).uniform(80, 95, nb201.NUM_ARCHS)
  base = search_exp.baselines(NB201, table, acc)
  assert list(base) == ['max_macs', 'max_params', 'random', 'oracle']
  feasible = np.flatnonzero(table.feasible)
  assert base['oracle']['test_acc'] == acc[feasible].max()
  assert np.isclose(base['random']['test_acc'], acc[feasible].mean())
  for name, cost in (('max_macs', 'macs'), ('max_params', 'params')):
    code = nb201.ops_to_code(nb201.parse_arch_str(base[name]['arch_str']))
    assert table.feasible[code] and table.costs[cost][code] == table.costs[cost][feasible].max()
    assert base[name]['gap'] == base['oracle']['test_acc'] - acc[code] >= 0


def test_an_aggregate_objective_ranks_by_the_aggregate_only(budget):
  problem = _problem('agg:params+2*linear_regions:logrank', TINY, budget, obj.Weights())
  assert problem.scorer.names == ['params', 'linear_regions']
  assert [t.name for t in problem.terms] == ['agg:params+2*linear_regions:logrank']
  values = {'params': np.array([3., 2., 1.]), 'linear_regions': np.array([1., 2., 3.]),
            'linear_regions_flag': np.zeros(3, int), 'macs': np.ones(3),
            'latency_ms': np.ones(3)}
  # logrank: log(r_params / 3) + 2 log(r_lr / 3), r = 1 (worst) .. 3 (best)
  score = problem.objective(values, np.ones(3, bool))
  assert np.argmax(score) == 2 and np.argmin(score) == 0


def test_the_default_objective_is_the_one_the_docs_name():
  from experiments import run
  assert run.EXPERIMENTS['search'].defaults['proxies'] == run.DEFAULT_SEARCH_OBJECTIVE
  root = pathlib.Path(__file__).resolve().parents[1]
  rerank = run.RERANK_DEFAULTS
  for doc in ('README.md', 'docs/search.md'):
    text = (root / doc).read_text()
    assert f'`{rerank["proxies"]}`' in text and f'`--rerank_band={rerank["rerank_band"]}`' in text
    assert f'C={rerank["zc_width"]} N={rerank["zc_cells"]}' in text, doc
  assert f'`{run.DEFAULT_SEARCH_OBJECTIVE}`' in (root / 'docs/search.md').read_text()
  assert run.flags.FLAGS['searcher'].default == 'rerank'


def test_prune_scores_every_single_op_removal(lr_problem):
  for with_none, ops in ((True, 5), (False, 4)):
    masks, where = searchers._removals(searchers.start_mask(lr_problem, with_none))
    assert len(masks) == 6 * ops and (masks.sum((1, 2)) == 6 * ops - 1).all()
  # the search itself with `none` (the start supernet without it is the same code, one op fewer)
  options = dataclasses.replace(OPTIONS, prune_none='yes')
  result = search.search('prune', lr_problem, seed=0, options=options)
  rounds = [30, 24, 18]  # one removal per edge down to two ops per edge
  for i, n in enumerate(rounds):
    assert result.log[i].startswith(f'round {i + 1}: {n} removals'), result.log
  # then the feasible single-path archs left, scored exactly
  last = int(result.log[len(rounds)].split()[2])
  assert 1 <= last <= 2 ** 6 and result.scored == sum(rounds) + last
  steps = [line for line in result.log if not line.startswith('note:')]  # one per round
  assert len(steps) == len(rounds) + 1 == search.PROGRESS_TOTAL['prune'](lr_problem, options)


def test_only_the_start_supernet_with_none_reaches_archs_that_drop_an_edge():
  feasible = np.zeros(nb201.NUM_ARCHS, bool)
  feasible[nb201.ops_to_code([nb201.CONV3, nb201.NONE, nb201.CONV3, nb201.SKIP, nb201.NONE,
                              nb201.CONV3])] = True
  feasible[nb201.ops_to_code([nb201.NONE] * 6)] = True  # disconnected: never feasible
  problem = _toy_problem(_toy_table(feasible))
  assert problem.table.reachable(searchers.start_mask(problem, True)[None])[0]
  assert not problem.table.reachable(searchers.start_mask(problem, False)[None])[0]
  # 'auto': with `none` when most none-free archs are ruled out (here all but none are)
  assert searchers.prune_with_optional(problem, 'auto')
  assert not searchers.prune_with_optional(_toy_problem(_toy_table(np.ones(len(feasible),
                                                                             bool))), 'auto')
  # and a cell whose output the input cannot reach is never a candidate of the last round
  left = problem.table.inside(searchers.start_mask(problem, True))
  assert len(left) == 1 and nb201.is_connected(nb201.code_to_ops(left)).all()


def test_the_anytime_trace_is_the_search_with_a_smaller_budget(cost_grad_problem):
  # flops and latency (not linear regions: they saturate on the 8 largest archs, all tied)
  problem = cost_grad_problem
  full = search.search('rerank', problem, seed=2, options=OPTIONS)
  assert [n for n, _ in full.trace] == [8, 16] and full.trace[-1][1] == full.index
  small = search.search('rerank', problem, seed=2, options=dataclasses.replace(OPTIONS, pool=8))
  assert full.trace[0][1] == small.index
  evo = search.search('evolution', problem, seed=2, options=OPTIONS)
  assert evo.trace[-1] == (evo.scored, evo.index)
  assert all(problem.table.feasible[c] for _, c in evo.trace)


def test_pruning_keeps_a_feasible_arch_reachable():
  only = nb201.ops_to_code([nb201.CONV1] * 6)  # a single feasible arch: all conv1x1
  feasible = np.zeros(nb201.NUM_ARCHS, bool)
  feasible[only] = True
  problem = _toy_problem(_toy_table(feasible))
  mask = searchers.start_mask(problem)
  _, where = searchers._removals(mask)
  goodness = (where[:, 1] == nb201.CONV1).astype(float)  # the objective wants conv1x1 gone
  pruned = searchers._prune_slots(problem, mask, where, goodness)
  assert (pruned[:, nb201.CONV1] == 1).all()
  assert (pruned.sum(-1) == 3).all() and problem.table.reachable(pruned[None])[0]


def test_objective_ranks_and_infeasible_never_wins():
  ntk, lr = proxies.get('ntk_cond,linear_regions')
  values = {'ntk_cond': np.array([10., np.inf, 5., np.nan]),
            'linear_regions': np.array([100., 300., 200., 50.]),
            'macs': np.ones(4), 'latency_ms': np.ones(4)}
  refs = {'macs': 1.0, 'latency_ms': 1.0}
  score = obj.hybrid(values, [ntk, lr], values, [True, True, True, True], obj.Weights(), refs)
  assert np.argmax(score) == 2  # lowest kappa, second most regions
  score = obj.hybrid(values, [ntk, lr], values, [True, True, False, True], obj.Weights(), refs)
  assert score[2] == -np.inf and np.argmax(score) != 2
  assert obj.percentile_rank([np.nan, 1.0], higher_is_better=True)[0] < 1


def test_mutations_stay_feasible(lr_problem):
  rng = np.random.default_rng(0)
  pool = np.flatnonzero(lr_problem.table.feasible)
  parents = rng.choice(pool, 64)
  children = searchers._mutate(lr_problem, parents, rng)
  assert lr_problem.table.feasible[children].all()
  rows = lr_problem.table.rows
  assert ((rows[children] != rows[parents]).sum(-1) <= 1).all()
  assert (children != parents).mean() > 0.5  # most found a feasible neighbour


def test_parse_seeds_and_weights():
  assert search_exp.parse_seeds('0-3,7', 5) == [0, 1, 2, 3, 7]
  assert search_exp.parse_seeds('', 5) == [5]
  with pytest.raises(ValueError, match='--seeds'):
    search_exp.parse_seeds('a-b', 0)
  assert obj.parse_weights('ntk_cond=2, linear_regions=0.5') == (('ntk_cond', 2.0),
                                                                  ('linear_regions', 0.5))
  with pytest.raises(ValueError, match='name=number'):
    obj.parse_weights('ntk_cond')


def _run(*args):
  return cli.run('--experiment=search', '--noprogress', *args)


@pytest.mark.parametrize('args, fragments', [
    (['--latency_budget_ms=0.001'], ['no nb201 arch of the 15625 considered fits stm32f746',
                                      'latency_ms']),
    (['--device=stm32f746', '--flash_reserve_kb=1020'], ['flash_bytes', 'reserves']),
    (['--searcher=annealing'], ["unknown --searcher='annealing'", 'prune']),
    (['--seeds=x'], ['--seeds']),
])
def test_bad_or_infeasible_input_exits_2(tmp_path, args, fragments):
  result = _run(f'--workdir={tmp_path}', *args)
  cli.assert_one_line_error(result, *fragments)


def test_command_writes_results_and_plot(tmp_path, data_dir):
  result = _run(f'--workdir={tmp_path}', '--searcher=random', '--seeds=0,1',
                '--proxies=linear_regions', '--random_samples=4', '--batch_candidates=4',
                '--latency_budget_ms=200')
  assert result.returncode == 0, result.stderr
  assert 'fits stm32f746/cmsis-nn' in result.stdout and 'true test acc' in result.stdout
  records = json.loads((tmp_path / 'results.json').read_text())['results']
  assert [r['seed'] for r in records] == [0, 1]
  for r in records:  # (feasible and within budget by construction; gap >= 0 by definition)
    assert r['gap'] == pytest.approx(r['best_feasible_acc'] - r['test_acc'])
    assert r['proxy_evidence']['linear_regions'] == dict(candidates=4, flagged=0,
                                                         distinct=r['proxy_evidence'][
                                                             'linear_regions']['distinct'])
    assert r['proxy_evidence']['linear_regions']['distinct'] > 1  # the pick was a choice
  assert (tmp_path / 'results.csv').read_text().count('\n') == 3
  assert (tmp_path / 'pareto.png').stat().st_size > 1000


def test_constraints_limits_reserves_and_budgets():
  c = obj.Constraints(sram_reserve_kb=64, flash_reserve_kb=24, latency_budget_ms=100,
                      energy_budget_mj=20)
  assert c.limits() == {'sram_bytes': 256 * 1024, 'flash_bytes': 1000 * 1024,
                        'latency_ms': 100, 'energy_mj': 20}
  with pytest.raises(ValueError, match='--energy_budget_mj must be > 0'):
    obj.Constraints(energy_budget_mj=-1).limits()
  with pytest.raises(ValueError, match='stm'):
    obj.Constraints(device='no_such_mcu').limits()


def test_a_tie_among_one_network_written_several_ways_is_a_pick_not_a_stop(lr_problem):
  """Two NB201 archs that differ only in dead edges are one network: tied proxies are then the
  right answer (the first is taken, with a note), while the same tie between two different
  networks stops the search."""
  c1, c3, pool = nb201.CONV1, nb201.CONV3, nb201.OPS.index('avg_pool_3x3')
  same = nb201.ops_to_code([[0, 0, c1, c1, pool, c1], [0, 0, c3, c1, c1, c3]])
  different = nb201.ops_to_code([[0, 0, c1, c1, pool, c1], [0, 0, 0, c3, 0, 0]])
  for idx in (same, different):
    assert lr_problem.table.feasible[idx].all()
  def values(idx):
    return dict({'linear_regions': np.ones(2)},
                **{c: lr_problem.table.costs[c][idx] for c in obj.COST_NAMES})
  log = []
  searchers.check_evidence(lr_problem, values(same), np.ones(2, bool), 'x', log, same)
  assert any('one network' in line for line in log)
  with pytest.raises(search.UninformativeScores):
    searchers.check_evidence(lr_problem, values(different), np.ones(2, bool), 'x', [],
                             different)

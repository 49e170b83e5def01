"""The batch scorer: batched == one at a time, sharded == unsharded, dense == sparse."""
import dataclasses

import jax
import numpy as np
import pytest

from engine import proxies, scoring
from search_spaces import nb201, registry

NB201 = registry.get("nb201")

# One NTK repeat: repeats are unrolled, so each doubles every compile here, and the batching
# mechanics do not depend on them (ntk_test covers the repeat mean and its flags).
SETTINGS = proxies.ScoreSettings(ntk_batch=6, ntk_repeats=1, ntk_width=2, ntk_cells=1,
                                 lr_batches=2, lr_batch_size=64)
# Each Scorer compiles its own program (seconds to tens of seconds for an NTK on 2 CPU cores),
# so batched == one at a time and sharded == unsharded use the coupled NTK, a cheap network proxy
# and an analytic one (NAMES), the scorer's other mechanics the cheap two only (CHEAP, below);
# the independent variant's batching is held in test_per_candidate_init_also_batches_exactly
# and its single path against the dense walk in zero_cost_test.
NAMES = 'ntk_cond,linear_regions,params'
FEW = 'ntk_cond,linear_regions'
# The scorer's own mechanics (padding a partial batch, chunks of candidates, splitting a batch
# that does not fit) do not depend on which proxies run: they are held with a network proxy
# whose program compiles in about a second instead of ten (the NTK's batching is held above).
CHEAP = 'linear_regions,params'
OPS = np.array([[3, 2, 4, 1, 3, 0], [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], [4, 0, 2, 0, 0, 3]])


@pytest.fixture(scope='module')
def one_device_batched():
  scorer = scoring.Scorer(NB201, NAMES, SETTINGS, seed=7, batch_candidates=4, devices=jax.devices()[:1])
  return scorer.score_archs((), OPS)


@pytest.fixture(scope='module')
def cheap_batched():
  scorer = scoring.Scorer(NB201, CHEAP, SETTINGS, seed=7, batch_candidates=4,
                          devices=jax.devices()[:1])
  return scorer.score_archs((), OPS)


@pytest.fixture(scope='module')
def few_batched(one_device_batched):
  return {k: v for k, v in one_device_batched.items() if k.split('_flag')[0] in FEW.split(',')}


def _assert_same(a, b, rtol=2e-5):
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=rtol, err_msg=name)


def test_batched_score_equals_one_at_a_time(one_device_batched):
  single = scoring.Scorer(NB201, NAMES, SETTINGS, seed=7, batch_candidates=1, devices=jax.devices()[:1])
  _assert_same(one_device_batched, single.score_archs((), OPS))
  assert single.timing.scored == len(OPS)


def test_sharded_equals_unsharded(one_device_batched):
  assert len(jax.devices()) >= 2, 'conftest forces several host devices'
  sharded = scoring.Scorer(NB201, NAMES, SETTINGS, seed=7, batch_candidates=4)
  assert len(sharded.devices) == len(jax.devices())
  _assert_same(one_device_batched, sharded.score_archs((), OPS))


def test_sparse_lax_map_equals_dense_vmap(few_batched):
  sparse = scoring.Scorer(NB201, FEW, dataclasses.replace(SETTINGS, sparse=True), seed=7,
                          batch_candidates=4, devices=jax.devices()[:1])
  _assert_same(few_batched, sparse.score_archs((), OPS))


def test_candidate_chunks_equal_one_vmap(cheap_batched):
  chunked = scoring.Scorer(NB201, CHEAP, SETTINGS, seed=7, batch_candidates=4, candidate_chunk=2,
                           devices=jax.devices()[:1])
  _assert_same(cheap_batched, chunked.score_archs((), OPS))


def test_padding_a_partial_batch_keeps_scores(cheap_batched):
  scorer = scoring.Scorer(NB201, CHEAP, SETTINGS, seed=7, batch_candidates=3,
                          devices=jax.devices()[:1])
  _assert_same(cheap_batched, scorer.score_archs((), OPS))  # batches of 3 + 1 padded


def test_per_candidate_init_also_batches_exactly():
  settings = dataclasses.replace(SETTINGS, per_candidate_init=True)
  make = lambda k: scoring.Scorer(NB201, 'ntk_cond_independent', settings, seed=7, batch_candidates=k,
                                  devices=jax.devices()[:1]).score_archs((), OPS)
  # Per-candidate weights turn the vmapped convolutions into grouped ones, which sum in another
  # order; kappa = lambda_max / lambda_min amplifies that float32 round-off (seen: 1.2e-3 at
  # kappa ~ 224), so this comparison allows 1e-2 where the shared-init ones allow 2e-5.
  _assert_same(make(4), make(1), rtol=1e-2)


def test_same_seed_reproduces_and_other_seed_differs(one_device_batched):
  # The fixture's program (only the keys differ), so its compile comes from the XLA cache.
  other = scoring.Scorer(NB201, NAMES, SETTINGS, seed=8, batch_candidates=4,
                         devices=jax.devices()[:1]).score_archs((), OPS)
  assert not np.allclose(other['ntk_cond'], one_device_batched['ntk_cond'])


def test_scores_are_sane(one_device_batched):
  out = one_device_batched
  assert out['params'].tolist() == nb201.count_params(nb201.ops_to_mask(OPS),
                                                      nb201.NB201Config()).tolist()
  # not bounds that hold by definition (a condition number is >= 1, regions <= samples): the
  # proxies must tell these archs apart, and linear regions must not all saturate at their 128
  # samples (then they would measure the sample count, not the arch)
  assert not out['ntk_cond_flag'].any() and np.ptp(out['ntk_cond']) > 0
  assert np.ptp(out['linear_regions']) > 0 and (out['linear_regions'] < 128).any()


def test_a_batch_too_big_for_memory_is_split_and_scores_the_same(cheap_batched,
                                                                 monkeypatch, capsys):
  scorer = scoring.Scorer(NB201, CHEAP, SETTINGS, seed=7, batch_candidates=4,
                          devices=jax.devices()[:1])
  real = scoring.Scorer._compiled_for

  def small_memory(self, group, rows, relaxed, k, inputs):
    if k > 2:  # as XLA reports an allocation beyond the device's memory
      def fail(*args):
        raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB')
      return fail
    return real(self, group, rows, relaxed, k, inputs)

  monkeypatch.setattr(scoring.Scorer, '_compiled_for', small_memory)
  _assert_same(cheap_batched, scorer.score_archs((), OPS))
  assert 'splitting into batches of 2' in capsys.readouterr().out
  assert {key[-1] for key in scorer._compiled} == {2}


def test_other_errors_are_not_taken_for_memory():
  assert scoring.is_out_of_memory(RuntimeError('RESOURCE_EXHAUSTED: Out of memory'))
  assert not scoring.is_out_of_memory(ValueError('shapes (3,) and (4,) do not match'))


def test_k_from_free_device_memory_on_a_two_device_mesh(monkeypatch, capsys):
  """--batch_candidates=0 on a fake two-device CPU mesh, through the accelerator's code path:
  the device reports its free memory (faked: CPU reports none); K per device is what fits in
  80% of it by the compiled program's own memory at one candidate per device, within 1 and
  AUTO_K_MAX; without a report (CPU) K is CPU_K. The scores do not depend on K."""
  scorer = scoring.Scorer(NB201, 'linear_regions', SETTINGS, seed=7, batch_candidates=0,
                          devices=jax.devices()[:2])
  inputs = scorer.inputs_for(())
  memory = scorer._compiled_for((), OPS, False, 2, inputs).memory_analysis()
  each = memory.temp_size_in_bytes + memory.output_size_in_bytes
  for free, want in ((None, scoring.CPU_K), (0, 2), (int(each * 1.5 / 0.8) + 1, 2),
                     (int(each * 2 / 0.8) + 1, 4), (10**15, 2 * scoring.AUTO_K_MAX)):
    monkeypatch.setattr(scoring, 'free_device_bytes', lambda device, free=free: free)
    scorer._auto_k.clear()
    assert scorer.auto_k((), OPS, False, inputs) == want, free
  # the scores at the auto K (2 per device) equal those of one device, one at a time
  monkeypatch.setattr(scoring, 'free_device_bytes', lambda device: int(each * 2 / 0.8) + 1)
  scorer._auto_k.clear()
  auto = scorer.score_archs((), OPS)
  assert '--batch_candidates=0: 4 candidates per compiled call' in capsys.readouterr().out
  single = scoring.Scorer(NB201, 'linear_regions', SETTINGS, seed=7, batch_candidates=1,
                          devices=jax.devices()[:1]).score_archs((), OPS)
  _assert_same(single, auto)


# Two pairs NB201 calls one network (`nb201.without_dead_edges`), one for each kind of dead
# edge, and a fifth arch: in the first pair node 2 reaches nothing (edge 5 is none), so edge 1
# computes from the cell input for nothing (a pool in the first arch, a ReLU-conv in the
# second; the live cell is one pool, so linear_regions does not saturate); in the second pair
# node 1 has only a none input, so the edges out of it (2, 4) carry zeros.
C1, C3, POOL = nb201.CONV1, nb201.CONV3, nb201.OPS.index('avg_pool_3x3')
SAME = np.array([[0, POOL, 0, POOL, 0, 0], [0, C1, 0, POOL, 0, 0],
                 [0, 0, C1, C1, POOL, C1], [0, 0, C3, C1, C1, C3], [C3] * 6])
TINY = proxies.ScoreSettings(zc_width=2, zc_cells=1, zc_batch=4, zc_input_size=8,
                             ntk_batch=4, ntk_repeats=1, ntk_width=2, ntk_cells=1,
                             lr_batches=1, lr_batch_size=32)


def _every_arch_runs(monkeypatch):
  monkeypatch.setattr(scoring.Scorer, 'one_per_network', lambda self, archs: (None, None))


def test_archs_of_one_network_run_once_and_score_alike(monkeypatch):
  """3 networks in one call of K=4 (one slot padded) against all 5 archs run (two calls, three
  slots padded); the padded slots are not computed: the program gives zeros there."""
  make = lambda: scoring.Scorer(NB201, 'synflow,jacob_cov,params', TINY, seed=3,
                                batch_candidates=4, devices=jax.devices()[:1])
  once = make()
  assert once.one_per_network(list(SAME))[0].tolist() == [0, 2, 4]
  got = once.score_archs((), SAME)
  assert once.timing.scored == 3
  (program,) = once._compiled.values()
  rows = SAME[[0, 2, 4, 4]]
  args = jax.numpy.asarray(rows), scoring.row_keys(3, rows), once.inputs_for(())
  full, part = program(*args, jax.numpy.ones(4, bool)), program(*args, jax.numpy.arange(4) < 3)
  for name in ('synflow', 'jacob_cov'):
    np.testing.assert_array_equal(part[name][:3], got[name][[0, 2, 4]], err_msg=name)
    assert part[name][3] == 0 != full[name][3], name
  _every_arch_runs(monkeypatch)
  every = make()
  want = every.score_archs((), SAME)
  assert every.timing.scored == 5
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert got['params'][0] != got['params'][1]  # analytic proxies count every arch's own ops


def _alike_in_pairs(names, monkeypatch, settings=TINY) -> dict:
  """{proxy: whether it scores each of SAME's two pairs alike}, every arch run."""
  _every_arch_runs(monkeypatch)
  values = scoring.Scorer(NB201, names, settings, seed=3, batch_candidates=5,
                          devices=jax.devices()[:1]).score_archs((), SAME)
  return {n: np.array_equal(values[n][0:4:2], values[n][1:4:2], equal_nan=True)
          for n in names}


def test_a_proxy_that_counts_units_carrying_nothing_runs_every_arch(monkeypatch):
  assert scoring.Scorer(NB201, 'synflow,nwot', TINY, seed=3).one_per_network(
      list(SAME)) == (None, None)
  assert _alike_in_pairs(['nwot'], monkeypatch) == {'nwot': False}  # why nwot is marked


@pytest.mark.slow
def test_only_the_marked_proxies_tell_archs_of_one_network_apart(monkeypatch):
  """Every network proxy of the registry scores the archs of one network bit for bit alike
  unless it is marked `counts_dead_units`, and each marked one tells one of the pairs apart
  (the mark is needed). linear_regions on 1,000 patches, so that its count does not saturate
  at the sample count for both archs of a pair."""
  network = [n for n, p in proxies.REGISTRY.items() if p.kind == 'network']
  alike = _alike_in_pairs(network, monkeypatch,
                          dataclasses.replace(TINY, lr_batch_size=1000))
  assert {n for n in network if not alike[n]} == {
      n for n in network if proxies.REGISTRY[n].counts_dead_units}

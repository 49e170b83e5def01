"""NB201's proxy values pinned: every registered proxy on 8 archs, as recorded before NB201 became
a plug-in space (issue 31). A refactor that moves a value beyond float32 round-off fails here.

The values were recorded at small network sizes (compile time on 2 cores), under the suite's XLA
settings (conftest.py), with `ZERONAS_RECORD_PINS=1 python -m pytest tests/nb201_pins_test.py`.
Tolerance: relative 2e-4 (absolute 1e-5 near zero): XLA may reorder float32 sums between
versions of a program; a changed definition or init moves values by far more. The suite has
since (2026-12-07) turned XLA:CPU's fusion emitters off to compile faster; the values held
within this tolerance, so they were not re-recorded.
"""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from engine import proxies, scoring
from search_spaces import nb201, registry

PINS = pathlib.Path(__file__).parent / 'data' / 'nb201_pins.json'
SETTINGS = proxies.ScoreSettings(
    ntk_batch=8, ntk_repeats=2, ntk_width=4, ntk_cells=1, lr_batches=2, lr_batch_size=200,
    zc_batch=8, zc_width=4, zc_cells=1, zc_input_size=8, zc_depth=2)
NAMES = list(proxies.REGISTRY)
ARCHS = nb201.sample_ops(np.random.default_rng(31), 8)
SEED = 7


# Three programs, one test each, so the suite's two workers can share them (the NTKs are most of
# the compile): the zero-cost proxies exactly as tests/zero_cost_test.py compiles them (so the
# suite's shared XLA cache serves both), the coupled NTK, and the rest.
GROUPS = {'zero_cost': [n for n in NAMES if proxies.REGISTRY[n].needs == 'zc'],
          'ntk_cond': ['ntk_cond']}
GROUPS['others'] = [n for n in NAMES if n not in GROUPS['zero_cost'] + GROUPS['ntk_cond']]


def _scores(names):
  """`names` scored in one program on the pinned inputs. Splitting programs cannot move a value
  beyond round-off: inputs and keys are the same."""
  space = registry.get('nb201')
  inputs = proxies.make_inputs(proxies.get(NAMES), SETTINGS, SEED, None,
                               space.proxy_nets((), SETTINGS))
  scorer = scoring.Scorer(space, names, SETTINGS, seed=SEED, batch_candidates=4,
                          devices=jax.devices()[:1])
  scorer.set_inputs((), inputs)
  return {k: np.asarray(v, np.float64) for k, v in scorer.score_archs((), ARCHS).items()}


def test_the_pins_cover_every_proxy():
  pinned = json.loads(PINS.read_text())
  assert pinned['archs'] == [nb201.format_arch_str(a) for a in ARCHS]
  assert sorted(n for n in pinned['values'] if not n.endswith('_flag')) == sorted(NAMES), (
      'a proxy was added or removed: re-record')


@pytest.mark.parametrize('group', list(GROUPS))
def test_every_nb201_proxy_matches_its_recorded_value(group):
  if os.environ.get('ZERONAS_RECORD_PINS'):
    if group != 'zero_cost':
      pytest.skip('recorded with the zero_cost group')
    scores = {k: v for names in GROUPS.values() for k, v in _scores(names).items()}
    PINS.write_text(json.dumps({
        'archs': [nb201.format_arch_str(a) for a in ARCHS],
        'values': {k: [float(x) for x in v] for k, v in sorted(scores.items())}}, indent=1))
    pytest.skip(f'recorded {PINS}')
  scores = _scores(GROUPS[group])
  pinned = json.loads(PINS.read_text())['values']
  assert sorted(scores) == sorted(k for k in pinned if k.split('_flag')[0] in GROUPS[group])
  for name, values in scores.items():
    np.testing.assert_allclose(values, pinned[name], rtol=2e-4, atol=1e-5, err_msg=name)

"""Proxy speed per architecture at a given network size, against the machine and the peers.

  python -m experiments.bench_score \
      --groups='synflow,snip,grasp,fisher,grad_norm,jacob_cov;ntk_cond_independent;ntk_cond' \
      --peer_csv=/path/tenas_ntk6.csv,/path/zcn_six6.csv

For each group (proxies scored together in one compiled call, as `score` and `correlate` do):
one Scorer at K=1, the compile time apart, then each arch's run time. The archs default to the
peers' six (`numpy.random.default_rng(20261201).choice(15625, 6)` as NB201 indices, needing the
NB201 table; canonical codes without it). Achieved GFLOP/s uses *model* FLOPs: the work the
definition needs in forward-pass equivalents (below) times 2 * MACs * batch, not what XLA runs
(the single path recomputes each edge's forward in its backward pass, for instance). The
machine's matmul peak (float32 1024^3 through XLA) is measured in the same run. Peer CSVs are
`shared/peers/run_peers.py` outputs from the same sitting; their median gives the ratio.
"""
from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np
from absl import app, flags

from engine import proxies as proxies_lib
from engine import scoring
from experiments import common
from search_spaces import nb201, registry

_GROUPS = flags.DEFINE_string(
    'groups', 'synflow,snip,grasp,fisher,grad_norm,jacob_cov;ntk_cond_independent;ntk_cond;'
    'linear_regions', 'Proxy groups separated by ";", each scored together.')
_ARCHS = flags.DEFINE_string('archs', 'peers', '"peers" (the peers\' six), or what --archs takes '
                             'elsewhere: random:N, an arch string or index, a file of them.')
_WIDTH = flags.DEFINE_integer('width', 16, 'Network C (NTK and zero-cost networks).',
                              lower_bound=1)
_CELLS = flags.DEFINE_integer('cells', 5, 'Network N.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch B (NTK and zero-cost).', lower_bound=1)
_CHUNK = flags.DEFINE_integer('cotangent_chunk', 16, 'Exact NTK: pullbacks vmapped together.',
                              lower_bound=0)
_SINGLE_PATH = flags.DEFINE_bool('single_path', True, 'Score one-hot archs on their single path.')
_PEERS = flags.DEFINE_string('peer_csv', '', 'Comma-separated run_peers.py CSVs of this sitting.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of inits and inputs.')

# Forward-pass equivalents of each proxy's definition (one forward = 2 * MACs * batch FLOPs).
# A backward pass (input and weight gradients) is 2; forward mode over a forward+backward pass 3
# more on top of its primal. synflow runs on one input, not the batch.
PASSES = {'jacob_cov': 3, 'nwot': 1, 'zico': 3, 'zen': 2, 'ntk_cond_independent': 4}
SHARED_GRADIENT = 3      # grad_norm, snip, fisher (and grasp's g) from one pass
GRASP_EXTRA = 6          # jvp of the gradient: primal forward+backward again, plus tangents
PEER_OF = {'ntk_cond': 'tenas_ntk_cond', 'ntk_cond_independent': 'tenas_ntk_cond',
           'six': 'zcn_six'}
SIX = {'synflow', 'snip', 'grasp', 'fisher', 'grad_norm', 'jacob_cov'}


def machine() -> str:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{cpu}, {os.cpu_count()} cores, {len(jax.devices())} x {dev.platform} '
          f'({dev.device_kind}), jax {jax.__version__}')


def matmul_peak_gflops(n: int = 1024, reps: int = 5) -> float:
  """float32 n^3 matrix product through XLA, best of `reps`."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  best = np.inf
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def forward_equivalents(names, batch: int) -> float:
  names = set(names)
  total = 0.0
  grads = names & {'grad_norm', 'snip', 'fisher', 'grasp'}
  if grads:
    total += SHARED_GRADIENT
  if 'grasp' in names:
    total += GRASP_EXTRA
  if 'synflow' in names:
    total += 3 / batch
  if 'ntk_cond' in names:
    total += 1 + 2 * batch
  for n in names - grads - {'synflow', 'ntk_cond'}:
    total += PASSES.get(n, 0)
  return total


def bench_archs(spec: str) -> np.ndarray:
  if spec == 'peers':
    picks = np.random.default_rng(20261201).choice(nb201.NUM_ARCHS, 6, replace=False)
    try:
      return nb201.load_arch_index().index_to_ops[picks]
    except nb201.ArchError:
      print('note: NB201 table not found; the picks are canonical codes, not the peers\' archs')
      return nb201.code_to_ops(picks)
  archs = common.select_archs(spec, _SEED.value)
  if not len(archs):
    raise ValueError(f'--archs={spec} gives no archs; pass random:N with N >= 1, or archs')
  return archs


def peer_medians(paths: str) -> dict[str, float]:
  import csv
  out: dict[str, list[float]] = {}
  for path in filter(None, paths.split(',')):
    try:
      with open(path, newline='') as f:
        for row in csv.DictReader(f):
          out.setdefault(row['proxy'], []).append(float(row['seconds']))
    except OSError as err:
      raise ValueError(f'--peer_csv={path}: {err.strerror}; pass the CSVs run_peers.py wrote')
    except (KeyError, TypeError, ValueError):
      raise ValueError(f'--peer_csv={path} is not a run_peers.py CSV (columns proxy, seconds)')
  return {k: float(np.median(v)) for k, v in out.items()}


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; all options are --flags (see --help)')
  try:
    _run()
  except ValueError as err:  # the checks' one-line errors (bad arch, proxy, file)
    common.fail(str(err))


def _run():
  for group in _GROUPS.value.split(';'):  # every name checked before any timing
    proxies_lib.get([g for g in group.split(',') if g])
  w, n, b = _WIDTH.value, _CELLS.value, _BATCH.value
  settings = proxies_lib.ScoreSettings(ntk_width=w, ntk_cells=n, ntk_batch=b, ntk_repeats=1,
                                       zc_width=w, zc_cells=n, zc_batch=b,
                                       cotangent_chunk=_CHUNK.value,
                                       single_path=_SINGLE_PATH.value)
  archs = bench_archs(_ARCHS.value)
  config = nb201.NB201Config(C=w, N=n)
  macs = nb201.count_flops(nb201.ops_to_mask(archs), config, 'nb201')
  peak = matmul_peak_gflops()
  peers = peer_medians(_PEERS.value)
  print(f'machine: {machine()}')
  print(f'date: {time.strftime("%Y-%m-%d %H:%M")}')
  print(f'network C={w} N={n}, batch {b}, one repeat, {len(archs)} archs (mean '
        f'{macs.mean() / 1e6:.1f} MMAC/image), single_path={_SINGLE_PATH.value}; '
        f'XLA float32 matmul peak {peak:.0f} GFLOP/s\n')
  print('| proxies | compile s | s/arch median (min-max) | model GFLOP/arch | GFLOP/s | % of '
        'matmul peak | peer s/arch | peer / ours |')
  print('|---|---|---|---|---|---|---|---|')
  for group in _GROUPS.value.split(';'):
    names = [g for g in group.split(',') if g]
    scorer = scoring.Scorer(registry.get('nb201'), names, settings, seed=_SEED.value,
                            batch_candidates=1)
    times = []
    for ops in archs:
      before = scorer.timing.run_s
      scorer.score_archs((), ops[None])
      times.append(scorer.timing.run_s - before)
    times = np.array(times)
    fwd = forward_equivalents(names, b)
    gflop = fwd * 2 * macs * b / 1e9
    label = 'six' if set(names) == SIX else ','.join(names)
    peer = peers.get(PEER_OF.get(label, ''))
    rate = np.median(gflop / times) if fwd else float('nan')
    peer_cells = (f'{peer:.2f} | {peer / np.median(times):.1f}x' if peer else '- | -')
    print(f'| {label} | {scorer.timing.compile_s:.1f} | {np.median(times):.3f} '
          f'({times.min():.3f}-{times.max():.3f}) | {np.median(gflop):.1f} | {rate:.1f} | '
          f'{100 * rate / peak:.0f}% | {peer_cells} |', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

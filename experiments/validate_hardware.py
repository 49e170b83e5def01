"""Validate the hardware cost model against measured latencies (docs/hardware.md).

(a) MLPerf Tiny, Cortex-M closed results: leave-one-model-out per (board, runtime) submission.
(b) NAS-Bench-201 measured latencies (HW-NAS-Bench, HELP, HW-NAS-Bench-360): calibrate on 500
    archs (coefficients and the toolchain elimination policy), Kendall tau of predicted vs
    measured latency over all 15,625 rows, the held-out rows and the measured representatives.

  python -m experiments.validate_hardware --part=all --output=validation.json
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import hardware
from experiments import common
from hardware import devices
from hardware import graph as graph_lib
from hardware import latency
from search_spaces import mlperf_tiny
from search_spaces import nb201
from search_spaces import registry

_PART = flags.DEFINE_enum('part', 'all', ['mlperf', 'nb201', 'all'],
                          'Which validation: (a) MLPerf Tiny, (b) NAS-Bench-201, or both.')
_OUTPUT = flags.DEFINE_string('output', '', 'Write the full results as JSON here.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 500, 'NB201: archs each column is calibrated on.')
_SEED = flags.DEFINE_integer('seed', 0, 'NB201: seed of the calibration archs.')

BENCHMARKS = ('ic', 'kws', 'vww', 'ad')
CORE_OF = {'Cortex-M4': 'cortex-m4', 'Cortex-M7': 'cortex-m7', 'Cortex-M33': 'cortex-m33',
           'Cortex-M0+': 'cortex-m0plus', 'Cortex-M85': 'cortex-m7'}


def runtime_family(stack: str, submitter: str) -> str:
  s = stack.lower()
  for key, fam in (('x-cube-ai', 'x-cube-ai'), ('stedge', 'x-cube-ai'), ('plumerai', 'plumerai'),
                   ('hale', 'bosch-hale'), ('microtvm', 'microtvm'), ('onnc', 'onnc'),
                   ('tensorflow lite', 'tflm')):
    if key in s:
      return fam
  return f'{submitter.lower()}-unstated'


# Closest catalog runtime profile of each family, for the prior-only variant.
PRIOR_RUNTIME = {'tflm': 'tflm', 'microtvm': 'cmsis-nn', 'onnc': 'cmsis-nn',
                 'x-cube-ai': 'x-cube-ai', 'plumerai': 'tinyengine', 'bosch-hale': 'tinyengine'}


MLPERF_COLUMNS = ('version', 'submitter', 'system', 'core', 'clock_mhz', 'software_stack',
                  'benchmark', 'latency_ms')


def load_mlperf_systems(path: pathlib.Path):
  """The Cortex-M systems with latencies of at least 3 of the 4 benchmarks; a file that lacks a
  column or holds a non-number where a number belongs is a ValueError naming file and line."""
  fix = ('restore the MLPerf Tiny results file (ZERONAS_DATA_DIR, default ../shared/data; '
         'docs/hardware.md)')
  by_system = collections.OrderedDict()
  try:
    with path.open(newline='') as f:
      reader = csv.DictReader(f)
      missing = [c for c in MLPERF_COLUMNS if c not in (reader.fieldnames or ())]
      if missing:
        raise ValueError(f'{path} lacks the column(s) {", ".join(missing)}; {fix}')
      rows = list(enumerate(reader, 2))  # the header is line 1
  except (UnicodeDecodeError, csv.Error) as err:
    raise ValueError(f'cannot read {path} ({err}); {fix}') from None

  def number(line, r, column):
    try:
      value = float(r[column])
    except (TypeError, ValueError):  # None: a short row
      value = float('nan')
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f'{path}:{line}: {column} is {r[column]!r}, not a positive number; '
                       f'{fix}')
    return value

  for line, r in rows:
    if r['benchmark'] not in BENCHMARKS or not r['latency_ms']:
      continue
    key = (r['version'], r['submitter'], r['system'])
    s = by_system.setdefault(key, dict(
        name=f'v{r["version"]} {r["submitter"]} {r["system"]}', core=r['core'],
        clock_mhz=number(line, r, 'clock_mhz'), family=runtime_family(r['software_stack'] or '',
                                                                      r['submitter'] or ''),
        latency={}))
    s['latency'][r['benchmark']] = number(line, r, 'latency_ms')
  systems = [s for s in by_system.values() if len(s['latency']) >= 3]
  if not systems:
    raise ValueError(f'{path} has no system with latencies of 3 or more of '
                     f'{", ".join(BENCHMARKS)}; {fix}')
  return systems


def mlperf_features() -> np.ndarray:
  return np.stack([hardware.concrete_cost(mlperf_tiny.get_model(b))['features']
                   for b in BENCHMARKS])


def _fit_many(features, cycles, weights, groups, init, num_groups, prior_weight, steps):
  fit = jax.jit(jax.vmap(
      lambda w: latency.fit_shared(features, cycles, init, groups, w, num_groups,
                                   prior_weight=prior_weight, steps=steps)[:2]))
  return fit(jnp.asarray(weights))


def validate_mlperf(prior_weight: float = 0.1, steps: int = 1500) -> dict:
  systems = load_mlperf_systems(
      nb201.data_dir() / 'mlperf_tiny' / 'mlperf_tiny_cortex_m_only.csv')
  feats = mlperf_features()
  rows = [(si, m) for si, s in enumerate(systems) for m, b in enumerate(BENCHMARKS)
          if b in s['latency']]
  groups, models = np.array([si for si, _ in rows]), np.array([m for _, m in rows])
  cycles = np.array([systems[si]['latency'][BENCHMARKS[m]] * systems[si]['clock_mhz'] * 1e3
                     for si, m in rows])
  x = feats[models]
  init = devices.CORE_CYCLES['cortex-m4']
  n = len(rows)

  def predict(coeffs, scales, i):
    return float(scales[groups[i]] * (x[i] @ coeffs)) / (systems[groups[i]]['clock_mhz'] * 1e3)

  # shared structure: fit on every other cell (other boards' results on the held-out model
  # included), per-board scale from this board's remaining models
  w_cell = 1.0 - np.eye(n)
  c_cell, s_cell = _fit_many(x, cycles, w_cell, groups, init, len(systems), prior_weight, steps)
  # new model: the held-out benchmark is removed for every board (nobody has run it)
  w_model = np.stack([(models != m).astype(float) for m in range(4)])
  c_model, s_model = _fit_many(x, cycles, w_model, groups, init, len(systems), prior_weight,
                               steps)
  results = []
  for i, (si, m) in enumerate(rows):
    s = systems[si]
    measured = s['latency'][BENCHMARKS[m]]
    # prior only: catalog (core, runtime) coefficients, one scale from this board's other models
    core = CORE_OF.get(s['core'], 'cortex-m4')
    prior = np.asarray(devices.CORE_CYCLES[core]) * np.asarray(
        devices.get_runtime(PRIOR_RUNTIME.get(s['family'], 'cmsis-nn')).cycle_scale)
    train = [j for j, (sj, mj) in enumerate(rows) if sj == si and mj != m]
    log_scale = np.mean([np.log(cycles[j] / (x[j] @ prior)) for j in train])
    prior_pred = float(np.exp(log_scale) * (x[i] @ prior)) / (s['clock_mhz'] * 1e3)
    preds = dict(shared=predict(np.asarray(c_cell[i]), np.asarray(s_cell[i]), i),
                 new_model=predict(np.asarray(c_model[m]), np.asarray(s_model[m]), i),
                 prior=prior_pred)
    results.append(dict(system=s['name'], family=s['family'], core=s['core'],
                        clock_mhz=s['clock_mhz'], benchmark=BENCHMARKS[m], measured_ms=measured,
                        **{f'pred_{k}_ms': v for k, v in preds.items()},
                        **{f'ape_{k}': abs(v / measured - 1) * 100 for k, v in preds.items()}))
  summary = {}
  for k in ('shared', 'new_model', 'prior'):
    ape = np.array([r[f'ape_{k}'] for r in results])
    per_system = collections.defaultdict(list)
    for r in results:
      per_system[r['system']].append(r[f'ape_{k}'])
    summary[k] = dict(median_ape=float(np.median(ape)), mean_ape=float(np.mean(ape)),
                      p90_ape=float(np.percentile(ape, 90)),
                      systems_median_le_20=int(sum(np.median(v) <= 20
                                                   for v in per_system.values())),
                      per_benchmark={b: float(np.median([r[f'ape_{k}'] for r in results
                                                         if r['benchmark'] == b]))
                                     for b in BENCHMARKS})
  return dict(num_systems=len(systems), num_predictions=len(results), summary=summary,
              rows=results)


_HWNASBENCH = 'hw/nb201_latency_hwnasbench_cifar10_and_help_devices.csv'
_HWNASBENCH360 = 'hw/nb201_hwnasbench360_pi5_pixel.csv'
NB201_DEVICES = {  # column -> (file, dataset, kind)
    'hwnasbench_raspi4_latency_ms': (_HWNASBENCH, 'cifar10', 'cpu'),
    'hwnasbench_pixel3_latency_ms': (_HWNASBENCH, 'cifar10', 'cpu'),
    'hwnasbench_eyeriss_latency_ms': (_HWNASBENCH, 'cifar10', 'accelerator'),
    'hwnasbench_fpga_latency_ms': (_HWNASBENCH, 'cifar10', 'accelerator'),
    'pi5_litert_cifar100_latency_ms_median': (_HWNASBENCH360, 'cifar100', 'cpu'),
    'pi5_onnx_cifar100_latency_ms_median': (_HWNASBENCH360, 'cifar100', 'cpu'),
    'pi5_torchmobile_cifar100_latency_ms_median': (_HWNASBENCH360, 'cifar100', 'cpu'),
    'pixel_litert_cifar100_latency_ms_median': (_HWNASBENCH360, 'cifar100', 'cpu'),
    'help_gold_6226_latency_ms': (_HWNASBENCH, 'cifar10', 'cpu'),
    'help_samsung_a50_latency_ms': (_HWNASBENCH, 'cifar10', 'cpu'),
}


def _read_columns(path: pathlib.Path, columns):
  """(ops [R, 6], {column: values [R]}, rep [R]): rep[i] is the row whose arch was actually
  measured for row i.  HW-NAS-Bench-360 measured one representative per isomorphism class
  (`rep_arch_idx`, an `arch_index`) and copied its latency to the other members; files without
  that column measured every row (rep[i] = i)."""
  try:
    with path.open(newline='') as f:
      rows = list(csv.DictReader(f))
    ops = np.array([nb201.parse_arch_str(r['arch_str']) for r in rows])
    rep = np.arange(len(rows))
    if 'rep_arch_idx' in rows[0]:
      row_of = {int(r['arch_index']): i for i, r in enumerate(rows)}
      rep = np.array([row_of[int(r['rep_arch_idx'])] for r in rows])
    measured = {c: np.array([float(r[c]) if r[c] else np.nan for r in rows]) for c in columns
                if c in rows[0]}
  except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as err:
    # a missing column or row, a non-number, an unknown arch: the file is not the one shipped
    what = f'no column {err}' if isinstance(err, KeyError) else (
        'no rows' if isinstance(err, IndexError) else str(err).splitlines()[0][:120])
    raise ValueError(f'cannot read {path} ({what}); restore the HW-NAS-Bench latency file '
                     f'(ZERONAS_DATA_DIR, default ../shared/data; docs/hardware.md)') from None
  return ops, measured, rep


# What the deployment toolchain's graph optimiser removes (Runtime.fold_constants, prune_dead,
# merge_duplicates): 'full' = the exact pruner (every catalog MCU runtime), 'no_fold' = ops on an
# all-absent (zero) sum still run, 'none' = every gated-on op runs; '+cse' = equal
# parameter-free ops on the same input run once.  Chosen per column on the calibration archs.
ELIMINATION = {'full': (True, True, False), 'no_fold': (False, True, False),
               'none': (False, False, False), 'full+cse': (True, True, True),
               'no_fold+cse': (False, True, True), 'none+cse': (False, False, True)}


def elimination_runtime(policy: str, base: str = 'cmsis-nn') -> devices.Runtime:
  fold, prune, merge = ELIMINATION[policy]
  rt = devices.get_runtime(base)
  return dataclasses.replace(rt, name=f'{rt.name}+{policy}', fold_constants=fold,
                             prune_dead=prune, merge_duplicates=merge)


def validate_nb201(num_train: int = 500, seed: int = 0, steps: int = 3000) -> dict:
  """Per column: calibrate the 10 coefficients on `num_train` archs under each elimination
  policy, keep the policy with the best Kendall tau on those same calibration archs, and report
  tau on all archs and on the unseen ones (also for the 'full' policy, the previous model)."""
  from scipy import stats
  by_file = collections.defaultdict(list)
  for col, (file, dataset, _) in NB201_DEVICES.items():
    by_file[(file, dataset)].append(col)
  feature_cache, results = {}, {}
  space = registry.get('nb201')
  init = np.asarray(devices.coefficients('stm32f746', 'cmsis-nn'))
  for (file, dataset), cols in by_file.items():
    ops, measured, rep = _read_columns(nb201.data_dir() / file, cols)
    input_shape, classes = space.shape_for(dataset)
    if dataset not in feature_cache:
      feats, macs = {}, {}
      for policy in ELIMINATION:
        # the space's gated hardware template; NB201's also returns the latency features
        out = space.relax.cost((), nb201.ops_to_mask(ops), 'stm32f746',
                               elimination_runtime(policy), input_shape, classes)
        feats[policy] = np.asarray(out['features'], np.float64)
        macs[policy] = np.asarray(out['macs'], np.float64)
      feature_cache[dataset] = (feats, macs)
    feats, macs = feature_cache[dataset]
    # each row is predicted from the arch that was measured for it (its representative)
    feats = {p: x[rep] for p, x in feats.items()}
    macs = {p: x[rep] for p, x in macs.items()}
    measured_here = rep == np.arange(len(rep))
    for col in cols:
      y = measured[col]
      ok = np.isfinite(y) & (y > 0)
      if num_train > ok.sum():
        raise ValueError(f'--num_train={num_train} is more than the {ok.sum()} measured archs of '
                         f'{col}; pass at most {ok.sum()}')
      rng = np.random.default_rng(seed)
      train = rng.choice(np.flatnonzero(ok), num_train, replace=False)
      # held out: no calibration row shares its measured representative
      test = ok & ~np.isin(rep, rep[train])
      per_policy = {}
      for policy, x in feats.items():
        coeffs, scale, _ = latency.fit_shared(x[train], y[train], init, steps=steps)
        c = np.asarray(coeffs * scale[0], np.float64)
        pred = x @ c
        per_policy[policy] = dict(
            pred=pred, coefficients_ms={f: float(v) for f, v in zip(graph_lib.FEATURES, c)},
            kendall_tau_train=float(stats.kendalltau(pred[train], y[train]).statistic),
            kendall_tau_all=float(stats.kendalltau(pred[ok], y[ok]).statistic),
            kendall_tau_unseen=float(stats.kendalltau(pred[test], y[test]).statistic),
            kendall_tau_measured=float(stats.kendalltau(pred[ok & measured_here],
                                                        y[ok & measured_here]).statistic))
      chosen = max(per_policy, key=lambda p: per_policy[p]['kendall_tau_train'])
      best = per_policy[chosen]
      pred = best['pred']
      results[col] = dict(
          kind=NB201_DEVICES[col][2], dataset=dataset, num_archs=int(ok.sum()),
          num_measured=int((ok & measured_here).sum()), num_unseen=int(test.sum()),
          elimination=chosen,
          **{k: best[k] for k in ('kendall_tau_measured', 'kendall_tau_all', 'kendall_tau_unseen',
                                  'kendall_tau_train')},
          kendall_tau_all_full_elimination=per_policy['full']['kendall_tau_all'],
          kendall_tau_macs_only=float(stats.kendalltau(macs['full'][ok], y[ok]).statistic),
          kendall_tau_macs_only_chosen=float(stats.kendalltau(macs[chosen][ok],
                                                              y[ok]).statistic),
          spearman_all=float(stats.spearmanr(pred[ok], y[ok]).statistic),
          median_ape_unseen=float(np.median(np.abs(pred[test] / y[test] - 1)) * 100),
          coefficients_ms=best['coefficients_ms'],
          per_policy={p: {k: v for k, v in r.items() if k != 'pred'}
                      for p, r in per_policy.items()})
  return results


def _print_mlperf(res):
  print(f'\n(a) MLPerf Tiny leave-one-model-out: {res["num_systems"]} (board, runtime) '
        f'submissions, {res["num_predictions"]} held-out predictions')
  for k, s in res['summary'].items():
    print(f'  {k:<10} median APE {s["median_ape"]:6.1f}%  mean {s["mean_ape"]:6.1f}%  '
          f'p90 {s["p90_ape"]:6.1f}%  per benchmark {json.dumps({b: round(v, 1) for b, v in s["per_benchmark"].items()})}'
          f'  boards with median<=20%: {s["systems_median_le_20"]}')


def _print_nb201(res, num_train: int):
  print(f'\n(b) NB201 latency: calibrate on {num_train} archs, Kendall tau over all archs')
  for col, r in res.items():
    print(f'  {col:<45} {r["kind"]:<11} {r["elimination"]:<8} tau_all '
          f'{r["kendall_tau_all"]:.3f}  tau_unseen {r["kendall_tau_unseen"]:.3f}  tau_measured '
          f'{r["kendall_tau_measured"]:.3f} ({r["num_measured"]})  tau_train '
          f'{r["kendall_tau_train"]:.3f}  tau(full elim.) '
          f'{r["kendall_tau_all_full_elimination"]:.3f}  tau(MACs) '
          f'{r["kendall_tau_macs_only"]:.3f}  tau(MACs, chosen elim.) '
          f'{r["kendall_tau_macs_only_chosen"]:.3f}  MdAPE {r["median_ape_unseen"]:.1f}%')


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; validate_hardware takes only flags '
                f'(--part, --output, --num_train, --seed)')
  if _NUM_TRAIN.value < 2:  # a rank correlation on the calibration archs needs two
    common.fail(f'--num_train must be at least 2, got {_NUM_TRAIN.value}')
  if _SEED.value < 0:
    common.fail(f'--seed must be non-negative, got {_SEED.value}')
  output = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else None
  out = {}
  try:
    if output:  # before the work: a folder, a path under a file, a read-only place
      common.check_output_file(_OUTPUT.value, 'output', 'validation.json')
    if _PART.value in ('mlperf', 'all'):
      out['mlperf'] = validate_mlperf()
      _print_mlperf(out['mlperf'])
    if _PART.value in ('nb201', 'all'):
      out['nb201'] = validate_nb201(_NUM_TRAIN.value, _SEED.value)
      _print_nb201(out['nb201'], _NUM_TRAIN.value)
  except FileNotFoundError as err:
    common.fail(f'cannot read {err.filename} ({err.strerror}); set ZERONAS_DATA_DIR to the '
                f'third-party data folder (default ../shared/data)')
  except ValueError as err:
    common.fail(str(err))
  if output:
    try:
      output.write_text(json.dumps(out, indent=1))
    except OSError as err:
      common.fail(f'cannot write {output} ({err.strerror}); pass another --output')
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags_or_fail)

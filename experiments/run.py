"""zeronas-mcu entry point: `python -m experiments.run --experiment=NAME [flags]`.

With no flags it runs the main job: a hardware-aware search (rerank of the largest feasible
cells by the rank sum of synflow, az_trainability and jacob_cov, under the MCU's SRAM and flash)
for an STM32F746 / CMSIS-NN on NB201, printing the winner, its costs and fit.

Each experiment is a module with `run(config, workdir)`, registered in `EXPERIMENTS` with the
flags it reads, the search spaces it supports and its own defaults; its config is a frozen
dataclass of those settings (`CONFIGS`, `make_config`), built from the flags, a preset of
experiments/configs/ (`--config=papers`, `--config=smoke`) and the experiment's defaults, in
falling order of precedence. A flag the chosen experiment does not read is refused, not
ignored. Bad input ends with one line on stderr naming the problem and the
fix, and exit code 2. `--list_devices` prints the device catalog from any experiment.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import textwrap
import types
from typing import Mapping

from absl import app, flags

from experiments import common
from search_spaces import nb201


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What `--experiment=NAME` runs: `experiments.<module>.run(config, workdir)`."""
  module: str
  flags: frozenset[str]            # flags it reads (besides ALWAYS)
  spaces: tuple[str, ...]          # --search_space values it supports
  defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)  # for unset flags
  required: Mapping[str, str] = dataclasses.field(default_factory=dict)  # flag -> what to pass
  summary: str = ''


ALWAYS = frozenset({'experiment', 'config', 'list_devices', 'progress', 'search_space'})
SCORING = frozenset({
    'proxies', 'batch_candidates', 'candidate_chunk', 'sparse', 'single_path', 'ntk_batch',
    'repeats', 'ntk_width', 'ntk_cells', 'zc_batch', 'zc_width', 'zc_cells', 'zico_splits',
    'cotangent_chunk', 'init', 'data_dir', 'stand_in_inputs', 'dataset', 'benchmark_file',
    'seed', 'matmul_precision'})
SEARCH = frozenset({
    'seeds', 'device', 'runtime', 'searcher', 'latency_budget_ms', 'energy_budget_mj',
    'sram_reserve_kb', 'flash_reserve_kb', 'workdir', 'proxy_weights', 'w_flops', 'w_latency',
    'w_feasible', 'random_samples', 'evolution_samples', 'population', 'tournament', 'recheck',
    'rerank_pool', 'rerank_band', 'prune_none', 'objective', 'space_samples', 'finalists',
    'finalist_epochs', 'finalist_lr'})
TRAIN = frozenset({
    'arch', 'benchmark_file', 'data_dir', 'dataset', 'seed', 'workdir', 'epochs', 'quant',
    'init_from', 'distill_from', 'distill_alpha', 'distill_temperature', 'train_width',
    'train_cells', 'train_batch', 'optimizer', 'lr', 'weight_decay', 'warmup_epochs',
    'label_smoothing', 'calib_batches', 'train_images', 'test_images', 'int_eval_images'})
# A sweep over several processes or hosts (engine.sweep): jax.distributed's three settings.
DISTRIBUTED = frozenset({'coordinator_address', 'num_processes', 'process_id'})
EXPORT = frozenset({'workdir', 'data_dir', 'device', 'runtime', 'export_images', 'litert',
                    'c_source', 'c_target', 'c_images'})

# The search's default objective: the aggregate chosen on one half of the NB201 archs and
# measured on the other (docs/correlation.md), at the network size it was chosen at (C=8 N=1).
DEFAULT_SEARCH_OBJECTIVE = 'agg:params+synflow+2*jacob_cov:logrank'

# the search's own defaults, shared by the pipeline's search stage
EXPERIMENTS_SEARCH_DEFAULTS = types.MappingProxyType({
    'proxies': DEFAULT_SEARCH_OBJECTIVE, 'stand_in_inputs': 'photos', 'zc_width': 8,
    'zc_cells': 1, 'ntk_batch': 32, 'repeats': 1})

# The default rerank (no --proxies given): within the largest feasible size tier (archs with
# >= 98% of the largest one's parameters; on NB201 exactly the largest tier, the next one sits
# >= 3% below), rank by synflow + az_trainability + jacob_cov at the literature's network size.
# Chosen on the selection half, measured on the evaluation half (docs/search.md, "The default
# search" and "Adding jacob_cov to the default").
# A whole bundle: with --proxies given, the experiment's defaults above hold, so every
# documented command that names its proxies reruns as it was measured.
RERANK_DEFAULTS = types.MappingProxyType({
    'proxies': 'synflow,az_trainability,jacob_cov', 'rerank_band': 0.02, 'zc_width': 16,
    'zc_cells': 5})

EXPERIMENTS = types.MappingProxyType({
    # the coupled NTK at K=24 candidates needs K x B x B activations (hundreds of GB at B=64),
    # the independent one ~B x less, and one repeat at B=32 keeps a prune round near 20 s on
    # 2 cores (docs/search.md)
    'search': Experiment('search', SCORING | SEARCH, ('nb201', 'tinycnn', 'mbv2'),
                         EXPERIMENTS_SEARCH_DEFAULTS,
                         summary='hardware-aware search on any space (the main job)'),
    'score': Experiment('score', SCORING | DISTRIBUTED | {'archs', 'output', 'workdir',
                                                          'chunk_size'},
                        ('nb201', 'tinycnn', 'mbv2'),
                        # no workdir: one pass, the CSV at --output; with one: resumable chunks
                        types.MappingProxyType({'workdir': None}),
                        summary='proxy scores per arch, one CSV row each'),
    'correlate': Experiment('correlate', SCORING | DISTRIBUTED | {'archs', 'workdir',
                                                                  'chunk_size', 'reference_file',
                                                                  'partial'},
                            ('nb201', 'tinycnn'),
                            types.MappingProxyType({'workdir': 'correlate_out'}),
                            summary='resumable proxy sweep and its correlation with accuracy'),
    'cost': Experiment('cost', frozenset({'archs', 'benchmark_file', 'dataset', 'seed', 'output',
                                          'device', 'runtime'}),
                       ('nb201', 'tinycnn', 'mbv2', 'mlperf_tiny'),
                       summary='MCU cost per arch, one CSV row each'),
    'train': Experiment('train', TRAIN, ('nb201', 'tinycnn', 'mbv2'),
                        types.MappingProxyType({'workdir': 'train_out'}),
                        required=types.MappingProxyType({'arch': 'an arch string (NB201: or an '
                                                                 'index)'}),
                        summary='train one arch in fp32, PTQ or QAT'),
    # the space is the trained run's; --search_space, if given, must match it (unset: None)
    'export': Experiment('export', EXPORT, ('nb201', 'tinycnn', 'mbv2'),
                         types.MappingProxyType({'runtime': 'tflm', 'search_space': None}),
                         required=types.MappingProxyType({
                             'workdir': 'a workdir written by --experiment=train --quant=qat or '
                                        'ptq'}),
                         summary='trained int8 run -> .tflite (+ C), verified'),
    # search -> train -> export for the winner (experiments/pipeline.py): the flags of the three,
    # on one --data_dir; the arch is the search's pick, never --arch
    'pipeline': Experiment('pipeline', (SCORING | SEARCH | TRAIN | EXPORT) - {'arch', 'seeds'},
                           ('nb201', 'tinycnn', 'mbv2'),
                           types.MappingProxyType({
                               **EXPERIMENTS_SEARCH_DEFAULTS, 'workdir': 'pipeline_out',
                               'quant': 'qat'}),
                           summary='search, train (QAT) and export the winner, resumable'),
})

__doc__ += '\n' + '\n'.join(
    ['Experiments (--experiment), their search spaces and the flags each reads (besides '
     + ', '.join(f'--{n}' for n in sorted(ALWAYS)) + '):']
    + [f'  {name}: {e.summary}; {"/".join(e.spaces)}\n' + textwrap.fill(
        ' '.join(f'--{n}' for n in sorted(e.flags)), 96, initial_indent=' ' * 4,
        subsequent_indent=' ' * 4) for name, e in EXPERIMENTS.items()])

_EXPERIMENT = flags.DEFINE_enum('experiment', 'search', sorted(EXPERIMENTS),
                                'What to run.')
flags.DEFINE_string('config', None, 'A preset of experiments/configs/ (e.g. papers, smoke); flags '
                    'given here win over it.')
flags.DEFINE_enum('search_space', 'nb201', ['nb201', 'tinycnn', 'mbv2', 'mlperf_tiny'],
                  'Search space.')
flags.DEFINE_enum('dataset', 'cifar10', list(nb201.DATASETS), 'NB201 dataset.')
flags.DEFINE_string('archs', 'random:64',
                    'all | random:N | a file with one arch string or index per line | an arch '
                    'string | an arch index; correlate also takes reference (the '
                    '--reference_file archs of --dataset) and reference+random:N; cost on '
                    '--search_space=mlperf_tiny takes only all or model names (ic,kws,vww,ad; '
                    'random:64, the default, means all).')
flags.DEFINE_string('proxies', 'ntk_cond_independent,linear_regions',
                    'Comma-separated proxy names (ntk_cond is TE-NAS-exact but slow on CPU). '
                    'search/pipeline default: with --searcher=rerank, '
                    f'{RERANK_DEFAULTS["proxies"]} over the largest size tier (--rerank_band='
                    f'{RERANK_DEFAULTS["rerank_band"]}, --zc_width={RERANK_DEFAULTS["zc_width"]} '
                    f'--zc_cells={RERANK_DEFAULTS["zc_cells"]}); other searchers: '
                    f'{DEFAULT_SEARCH_OBJECTIVE}.')
flags.DEFINE_integer('batch_candidates', 8, 'Candidates per compiled call (K); 0 (score, '
                     'correlate): as many as fit in 80% of free device memory (GPU/TPU; 8 on '
                     'CPU).', lower_bound=0)
flags.DEFINE_enum('matmul_precision', 'highest', ['highest', 'high', 'default'],
                  'float32 matmuls/convolutions on GPU/TPU: highest (float32, as on CPU), high '
                  '(bf16_3x/tf32) or default (tf32 on NVIDIA: fastest); no effect on CPU.')
flags.DEFINE_integer('candidate_chunk', 0,
                     'Candidates vmapped together inside a call (0 = all K); bounds memory.',
                     lower_bound=0)
flags.DEFINE_bool('sparse', False,
                  'Multi-hot masks (pruning): run only active ops (lax.cond inside lax.map) '
                  'instead of the dense masked supernet. One-hot archs always run their own '
                  'single path (see --single_path).')
flags.DEFINE_bool('single_path', True,
                  'Score one-hot archs on their own single path (lax.switch per edge, scan over '
                  'cells); false: the dense masked supernet, every op of every edge.')
flags.DEFINE_integer('seed', 0, 'Seed for arch sampling, inputs and inits.', lower_bound=0)
flags.DEFINE_string('output', 'scores.csv', 'Output CSV path.')
flags.DEFINE_enum('stand_in_inputs', 'noise', ['noise', 'photos'],
                  'Proxy inputs without --data_dir: N(0, 1) noise, or random crops of the '
                  'photographs matplotlib ships (natural-image statistics, no download); '
                  'search and pipeline default to photos.')
flags.DEFINE_string('data_dir', None,
                    'CIFAR python pickle batches, an image folder (one subfolder per class) or an '
                    '.npz (x, y); without it see --stand_in_inputs.')
flags.DEFINE_string('benchmark_file', None,
                    'NB201 CSV with arch_index,arch_str (default: the NB201 table in '
                    '$ZERONAS_DATA_DIR or ../shared/data).')
flags.DEFINE_integer('ntk_batch', 64, 'NTK batch size B (search: 32).', lower_bound=1)
flags.DEFINE_integer('repeats', 3, 'NTK repeats (fresh init and batch each), averaged '
                     '(search: 1).', lower_bound=1)
flags.DEFINE_integer('ntk_width', 8, 'Channels C of the NTK proxy network (NB201: 16).',
                     lower_bound=1)
flags.DEFINE_integer('ntk_cells', 1, 'Cells per stage N of the NTK proxy network (NB201: 5).',
                     lower_bound=1)
flags.DEFINE_integer('zc_batch', 64, 'Batch of the zero-cost proxies (grad_norm, snip, synflow, '
                     '...).', lower_bound=1)
flags.DEFINE_integer('zc_width', 16, 'Channels C of the zero-cost proxies\' network (NB201: 16).',
                     lower_bound=1)
flags.DEFINE_integer('zc_cells', 5, 'Cells per stage N of the zero-cost proxies\' network (NB201: '
                     '5).', lower_bound=1)
flags.DEFINE_integer('zico_splits', 2, 'zico: mini-batches the zero-cost batch is split into.',
                     lower_bound=2)
flags.DEFINE_integer('cotangent_chunk', 0, 'Coupled NTK pullbacks vmapped together (0 = 16, the '
                     'fastest measured on CPU, or fewer to fit a 4 GiB budget).', lower_bound=0)
flags.DEFINE_enum('init', 'torch_default', ['torch_default', 'kaiming_normal'], 'Weight init.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_string('device', 'stm32f746', 'MCU from the device catalog (--list_devices).')
flags.DEFINE_string('runtime', 'cmsis-nn', 'Inference runtime: tflm, cmsis-nn, x-cube-ai, '
                    'tinyengine, zeronas-c (export: tflm).')
flags.DEFINE_bool('list_devices', False, 'Print the device and runtime catalog and exit.')
# --experiment=search
flags.DEFINE_string('searcher', 'rerank',
                    'Search strategy: rerank, prune, grad_prune, random, evolution.')
flags.DEFINE_enum('objective', 'hybrid', ['hybrid', 'seed'],
                  'Search objective: hybrid (proxy ranks minus weighted MACs/latency) or seed '
                  '(accuracy proxy / (peak SRAM x average power)); both under the hard limits.')
flags.DEFINE_integer('space_samples', 4096, 'Archs drawn to stand for a space too large to '
                     'enumerate (mbv2); the search keeps one width x resolution group of them.',
                     lower_bound=8)
flags.DEFINE_string('seeds', '', 'Seeds to search with, e.g. 0-9 or 0,3 (default: --seed).')
flags.DEFINE_float('latency_budget_ms', None, 'Predicted-latency budget (ms); unset or 0: none.')
flags.DEFINE_float('energy_budget_mj', None, 'Predicted energy budget per inference (mJ); unset or '
                   '0: none.')
flags.DEFINE_float('sram_reserve_kb', 0.0, 'SRAM kept free for the application (KB).',
                   lower_bound=0)
flags.DEFINE_float('flash_reserve_kb', 0.0, 'Flash kept free for the application (KB).',
                   lower_bound=0)
flags.DEFINE_string('workdir', 'search_out', 'Folder for results.json, results.csv, pareto.png '
                    '(correlate: its outputs and chunks, default correlate_out; train: its '
                    'checkpoints, default train_out; export: the trained run).')
flags.DEFINE_string('proxy_weights', '',
                    'Objective weight per proxy, e.g. ntk_cond=1,linear_regions=1 (default 1).')
flags.DEFINE_float('w_flops', 0.0, 'Objective weight of predicted MACs (relative to the max).')
flags.DEFINE_float('w_latency', 0.0,
                   'Objective weight of predicted latency (relative to the budget or max).')
flags.DEFINE_float('w_feasible', 1.0,
                   'prune: weight of the rank of the feasible share of the archs a removal leaves.')
flags.DEFINE_integer('random_samples', 512, 'random: archs scored (~35 s at the default '
                     'objective on 2 cores).', lower_bound=1)
flags.DEFINE_integer('evolution_samples', 512, 'evolution: archs scored in total (~50 s at the '
                     'default objective on 2 cores).', lower_bound=1)
flags.DEFINE_integer('population', 16, 'evolution: population size.', lower_bound=1)
flags.DEFINE_integer('tournament', 4, 'evolution: tournament size.', lower_bound=1)
flags.DEFINE_integer('rerank_pool', 256, 'rerank: largest feasible archs scored.',
                     lower_bound=1)
flags.DEFINE_float('rerank_band', -1.0, 'rerank: score only the archs with at least (1 - band) '
                   'x the parameters of the largest feasible arch (then at most --rerank_pool); '
                   '0: the largest size tier alone; negative: no size floor (the search\'s '
                   f'default with no --proxies given: {RERANK_DEFAULTS["rerank_band"]}).')
flags.DEFINE_enum('prune_none', 'auto', ['auto', 'yes', 'no'], 'prune: start from a supernet '
                  'that holds `none` too, so archs that drop an edge stay reachable (grad_prune: '
                  'archs with `none` among its candidates); auto: when the limits rule out most '
                  'archs without `none` (tight budgets).')
flags.DEFINE_integer('recheck', 8, 'grad_prune: archs with the best first-order estimates, '
                     'scored exactly at the end with as many of the largest candidates.',
                     lower_bound=1)
flags.DEFINE_integer('finalists', 0, 'Train the K best candidates by the objective briefly on '
                     '--data_dir (a validation split of its training images) and pick the best '
                     'by validation accuracy; 0: no finalist stage (docs/search.md).',
                     lower_bound=0)
flags.DEFINE_integer('finalist_epochs', 1, 'With --finalists: epochs each finalist trains (fp32; '
                     'NB201 at --zc_width, --zc_cells).', lower_bound=1)
flags.DEFINE_float('finalist_lr', None, 'With --finalists: peak learning rate of their training; '
                   "unset: the space's own (0.1; tinycnn, without BN: 0.01).", lower_bound=0)
# --experiment=correlate (also uses --dataset, --archs, --proxies, --data_dir, --workdir, ...)
flags.DEFINE_integer('chunk_size', 256, 'correlate, score with --workdir: archs per resumable '
                     'chunk written to disk.',
                     lower_bound=1)
flags.DEFINE_string('reference_file', None,
                    'correlate: NASLib zero-cost CSV to check per-proxy agreement against.')
flags.DEFINE_bool('partial', False, 'correlate (NB201): score nothing; tabulate the chunks '
                  'already in --workdir into WORKDIR/partial/ (a long sweep\'s interim results; '
                  'safe beside the running sweep).')
flags.DEFINE_string('coordinator_address', '', 'correlate, score: with --num_processes > 1, host:port '
                    'of process 0 (it hosts jax.distributed\'s coordinator; every process gets '
                    'the same value); auto: detect the cluster (SLURM, Cloud TPU) and take the '
                    'process count and id from it.')
flags.DEFINE_integer('num_processes', 1, 'correlate, score (with --workdir): processes (one per host or accelerator) '
                     'sharing the sweep; chunk i is scored by process i mod N.', lower_bound=1)
flags.DEFINE_integer('process_id', 0, 'correlate, score: this process\'s id, 0..num_processes-1; '
                     'process 0 writes the outputs.', lower_bound=0)
# --experiment=train (also uses --dataset, --data_dir, --seed, --workdir, --progress)
flags.DEFINE_string('arch', None, 'train: NB201 arch string or index (index needs the NB201 table).')
flags.DEFINE_integer('epochs', 10, 'train: epochs of this run (qat from scratch: the first 80% of '
                     'the steps in fp32).', lower_bound=0)
flags.DEFINE_enum('quant', 'fp32', ['fp32', 'ptq', 'qat'], 'train: fp32, ptq (calibrate int8 '
                  'ranges after training) or qat.')
flags.DEFINE_string('init_from', None, 'train: workdir of a finished run to start from.')
flags.DEFINE_string('distill_from', None, 'train: teacher workdir; distil its soft outputs.')
flags.DEFINE_float('distill_alpha', 0.7, 'train: weight of the distillation loss.', lower_bound=0,
                   upper_bound=1)
flags.DEFINE_float('distill_temperature', 4.0, 'train: distillation softmax temperature.',
                   lower_bound=1e-6)
flags.DEFINE_integer('train_width', 16, 'train: channels C of the trained network (NB201: 16).',
                     lower_bound=1)
flags.DEFINE_integer('train_cells', 5, 'train: cells per stage N (NB201: 5).', lower_bound=1)
flags.DEFINE_integer('train_batch', 128, 'train: batch size.', lower_bound=1)
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'adamw'], 'train: sgd (Nesterov momentum) or adamw.')
flags.DEFINE_float('lr', None, "train: peak learning rate (cosine schedule after warmup); unset: "
                   "the space's own (0.1; tinycnn, whose convs have no BN: 0.01).", lower_bound=0)
flags.DEFINE_float('weight_decay', 5e-4, 'train: weight decay on conv/dense kernels.',
                   lower_bound=0)
flags.DEFINE_float('warmup_epochs', 1.0, 'train: linear warmup length.', lower_bound=0)
flags.DEFINE_float('label_smoothing', 0.0, 'train: label smoothing.', lower_bound=0,
                   upper_bound=0.99)
flags.DEFINE_integer('calib_batches', 8, 'train: batches for int8 range calibration (ptq, qat).',
                     lower_bound=1)
flags.DEFINE_integer('train_images', 0, 'train: use the first N training images (0 = all).',
                     lower_bound=0)
flags.DEFINE_integer('test_images', 0, 'train: evaluate on the first N test images (0 = all).',
                     lower_bound=0)
flags.DEFINE_integer('int_eval_images', -1,
                     'train: test images run through integer-only inference (-1 = all, 0 = '
                     'none).', lower_bound=-1)
# --experiment=export
flags.DEFINE_integer('export_images', -1,
                     'export: test images run in TFLite Micro and LiteRT against the integer '
                     'reference (-1 = all).')
flags.DEFINE_bool('litert', True, 'export: also run the model in LiteRT (its XNNPACK and its reference '
                  'kernels).')
flags.DEFINE_bool('c_source', False,
                  'export: also write a C99 project (c_project/) and run it on an emulated '
                  'Cortex-M (needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm).')
flags.DEFINE_enum('c_target', 'm4', ['m4', 'm7'],
                  'export --c_source: m4 (Cortex-M4, QEMU mps2-an386) or m7 (Cortex-M7, '
                  'mps2-an500).')
flags.DEFINE_integer('c_images', 1000, 'export --c_source: test images run in the emulator.',
                     lower_bound=1)


# Flags that only some spaces or searchers read. Each: (experiments it concerns, whether the
# chosen space and flags read it, what reads it). A flag given where it is not read is refused
# in one line, never ignored. Spaces are told apart by what they offer, never by name.
_OWN_SCORER = ('spaces whose proxies run at their own sizes (nb201)',
               lambda f, space: space.proxy_nets is not None)
_DATASETS = ('spaces defined per dataset (nb201)', lambda f, space: space.datasets is not None)
_SEARCHERS = lambda *names: (f'--searcher={" or ".join(names)}',
                             lambda f, space: f.searcher in names)


def _scored(f) -> dict | None:
  """{name: registry Proxy} of the proxies the run will score, as `make_config` resolves them
  (--proxies, the preset, the experiment's or a rerank search's default); None where that
  cannot be told (a bad name or preset: its own check reports it)."""
  from engine import proxies as proxies_lib
  from engine.proxies import aggregate as agg_lib
  fields = {fl.name for fl in dataclasses.fields(CONFIGS[f.experiment])}
  given = {n: f[n].value for n in ('proxies', 'searcher') if n in fields and f[n].present}
  try:
    names = make_config(f.experiment, f.config, **given).proxies
    return {p.name: p for p in proxies_lib.get(agg_lib.split(names)[0])}
  except ValueError:
    return None


def _scoring(what, needs):
  """(what reads it, predicate): read when a scored proxy needs `needs`, or is named so."""
  def reads(f, space):
    scored = _scored(f)
    return scored is None or any(n == needs or p.needs == needs for n, p in scored.items())
  return what, reads


def _both(a, b):
  return f'{a[0]} with {b[0]}', lambda f, space: a[1](f, space) and b[1](f, space)


def _takes_init(f, space) -> bool:
  """Whether a scored proxy runs a network initialised by --init (not its own init)."""
  scored = _scored(f)
  return scored is None or any(p.kind == 'network' and not p.own_init for p in scored.values())


_NTK = _scoring('an NTK proxy (ntk_cond, ntk_cond_independent)', 'ntk')
_ZC = _scoring('a zero-cost proxy (synflow, jacob_cov, ...)', 'zc')
READ_WHEN = {
    **{name: (('score', 'correlate', 'search'),) + _both(_OWN_SCORER, _NTK)
       for name in ('ntk_width', 'ntk_cells')},
    **{name: (('score', 'correlate', 'search'),) + _both(_OWN_SCORER, _ZC)
       for name in ('zc_width', 'zc_cells')},
    'sparse': (('score', 'correlate', 'search'),) + _OWN_SCORER,
    **{name: (('score', 'correlate', 'search'),) + _NTK
       for name in ('ntk_batch', 'repeats', 'cotangent_chunk')},
    'zc_batch': (('score', 'correlate', 'search'),) + _ZC,
    'zico_splits': (('score', 'correlate', 'search'),) + _scoring('zico', 'zico'),
    'init': (('score', 'correlate', 'search'), 'proxies on a network that take their init from '
             'it (not params, flops, zen, vkdnw, AZ-NAS\'s terms)', _takes_init),
    'stand_in_inputs': (('score', 'correlate', 'search'), 'runs without --data_dir',
                        lambda f, space: not f.data_dir),
    'dataset': (('score', 'correlate', 'search', 'cost'),) + _DATASETS,
    'benchmark_file': (('score', 'cost'),) + _DATASETS,
    'reference_file': (('correlate',),) + _OWN_SCORER,
    'partial': (('correlate',),) + _OWN_SCORER,
    'space_samples': (('search',), 'spaces too large to enumerate (mbv2)',
                      lambda f, space: space.enumerate is None),
    **{name: (('search',),) + _SEARCHERS(searcher) for name, searcher in (
        ('random_samples', 'random'), ('evolution_samples', 'evolution'),
        ('population', 'evolution'), ('tournament', 'evolution'), ('rerank_pool', 'rerank'),
        ('rerank_band', 'rerank'), ('recheck', 'grad_prune'))},
    **{name: (('search',), '--finalists >= 1', lambda f, space: f.finalists > 0)
       for name in ('finalist_epochs', 'finalist_lr')},
    'w_feasible': (('search',),) + _SEARCHERS('prune'),
    'batch_candidates': (('search',), '--searcher=rerank, random, evolution or grad_prune',
                         lambda f, space: f.searcher != 'prune'),
    'prune_none': (('search',), '--searcher=prune or grad_prune on spaces with an optional op '
                   '(nb201\'s none)',
                   lambda f, space: f.searcher in ('prune', 'grad_prune') and space.relax
                   is not None and space.relax.optional is not None),
    **{name: (('search',), '--objective=hybrid or --searcher=grad_prune',
              lambda f, space: f.objective == 'hybrid' or f.searcher == 'grad_prune')
       for name in ('w_flops', 'w_latency')},
    'seed': (('cost',), '--archs=random:N on a search space',
             lambda f, space: f.archs.strip().startswith('random:')),
    'chunk_size': (('score',), '--workdir (its resumable chunks)',
                   lambda f, space: f['workdir'].present),
    # C and N size the network of a space with size settings (`SearchSpace.sized_lower`:
    # nb201's); the other spaces train at their own size
    **{name: (('train', 'pipeline'), 'nb201', lambda f, space: space.sized_lower is not None)
       for name in ('train_width', 'train_cells')},
}


READ_WHEN = {name: ((*exps, 'pipeline') if 'search' in exps else exps, *rest)
             for name, (exps, *rest) in READ_WHEN.items()}


def refuse_unread(f, exp_name: str):
  """UsageError for the first flag the user gave that the chosen space or searcher does not
  read (READ_WHEN)."""
  from search_spaces import registry
  # not a registered space (mlperf_tiny: fixed reference models) reads none of these
  space = registry.get(f.search_space) if f.search_space in registry.names() else None
  for name, (experiments, readers, reads) in READ_WHEN.items():
    if exp_name in experiments and f[name].present and (space is None or not reads(f, space)):
      raise common.UsageError(
          f'--{name} is not read by --experiment={exp_name} on --search_space={f.search_space}'
          + (f' with --searcher={f.searcher}' if exp_name == 'search' else '')
          + f' (only {readers} read it); remove it')


def check_flags(f=flags.FLAGS) -> Experiment:
  """The chosen experiment, after refusing flags it does not read, unsupported spaces and
  missing required flags; raises common.UsageError."""
  exp = EXPERIMENTS[f.experiment]
  ours = set(ALWAYS) | {name for e in EXPERIMENTS.values() for name in e.flags}
  unused = sorted(name for name in ours - exp.flags - ALWAYS if f[name].present)
  if unused:
    users = sorted(n for n, e in EXPERIMENTS.items() if unused[0] in e.flags)
    raise common.UsageError(
        f'--{unused[0]} is not used by --experiment={f.experiment}'
        + (f' (it applies to --experiment={", ".join(users)})' if users else '')
        + '; remove it')
  if f.search_space not in exp.spaces:
    raise common.UsageError(
        f'--experiment={f.experiment} supports --search_space={" or ".join(exp.spaces)}, not '
        f'{f.search_space}')
  for name, what in exp.required.items():
    if not f[name].present:
      raise common.UsageError(f'--experiment={f.experiment} needs --{name}=<{what}>')
  refuse_unread(f, f.experiment)
  return exp


def _config_type(name: str, exp: Experiment):
  """A frozen dataclass of the experiment's settings: one typed field per flag it reads (the
  workdir is passed beside it, as in `run(config, workdir)`)."""
  fields = []
  for flag in sorted((exp.flags | {'progress', 'search_space'}) - {'workdir'}):
    default = flags.FLAGS[flag].default
    kind = type(default) if default is not None else (float if isinstance(
        flags.FLAGS[flag].parser, flags.FloatParser) else str)
    fields.append((flag, kind | None if default is None else kind, dataclasses.field(
        default=exp.defaults.get(flag, default))))
  return dataclasses.make_dataclass(f'{name.capitalize()}Config', fields, frozen=True)


CONFIGS = types.MappingProxyType({name: _config_type(name, e) for name, e in EXPERIMENTS.items()})


def _checked(name: str, value):
  """`value` through the flag's own parser (types, bounds, enum choices); UsageError if bad."""
  try:
    parsed = flags.FLAGS[name].parser.parse(value) if value is not None else None
  except (ValueError, TypeError) as err:
    raise common.UsageError(f'--{name}={value}: {err}') from None
  if isinstance(parsed, float) and not math.isfinite(parsed):  # absl takes nan and inf
    raise common.UsageError(f'--{name}={value}: not a finite number; pass a number')
  return parsed


def make_config(experiment: str, preset: str | None = None, **overrides):
  """The typed config of `experiment` from its defaults, a preset of experiments/configs/ and
  `overrides` (flag names it reads), in rising order of precedence (a rerank search without
  proxies given takes RERANK_DEFAULTS over the experiment's defaults). For running experiments in
  code: `experiments.<module>.run(make_config(...), workdir)`."""
  if experiment not in EXPERIMENTS:
    raise common.UsageError(f'unknown experiment {experiment!r}; choose one of '
                            f'{", ".join(sorted(EXPERIMENTS))}')
  cls = CONFIGS[experiment]
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise common.UsageError(f'{unknown[0]!r} is not a setting of --experiment={experiment}')
  from experiments import configs
  values = {k: v for k, v in (configs.get(preset) if preset else {}).items() if k in names}
  values.update(overrides)
  if 'searcher' in names and 'proxies' not in values and values.get(
      'searcher', cls.__dataclass_fields__['searcher'].default) == 'rerank':
    values = {**RERANK_DEFAULTS, **values}
  rates = [n for n in ('lr', 'finalist_lr') if n in names and values.get(n) is None]
  if rates:  # unset: the space's own rate
    from search_spaces import registry
    space = values.get('search_space', cls.__dataclass_fields__['search_space'].default)
    values.update({n: registry.get(space).train_lr for n in rates})
  return cls(**{k: _checked(k, v) for k, v in values.items()})


def config_from_flags(f=flags.FLAGS):
  """The chosen experiment's config from the command line: flags the user set win over the
  --config preset, which wins over the experiment's defaults."""
  exp = check_flags(f)
  cls = CONFIGS[f.experiment]
  given = {fl.name: f[fl.name].value for fl in dataclasses.fields(cls) if f[fl.name].present}
  return exp, make_config(f.experiment, f.config, **given)


def workdir_from_flags(exp: Experiment, f=flags.FLAGS):
  if 'workdir' not in exp.flags:
    return None
  return f.workdir if f['workdir'].present else exp.defaults.get('workdir', f['workdir'].default)


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; all options are --flags (see --help)')
  common.quiet_logs()
  if flags.FLAGS.list_devices:
    import hardware
    print(hardware.list_devices_table())
    return
  # The error boundary: an error the user can fix (common.user_error_message: a bad value, a
  # bad file, an unwritable path, a foreign workdir, a missing optional tool) is one line and
  # exit 2; a verification that failed (an exported model that differs from the integer
  # reference) is one line and exit 3; anything else is a bug and keeps its traceback.
  paths = {}
  try:
    exp, config = config_from_flags()
    workdir = workdir_from_flags(exp)
    paths = common.path_flags(config, workdir)
    common.check_paths(config, workdir, exp.module)  # before any long work
    importlib.import_module(f'experiments.{exp.module}').run(config, workdir)
  except Exception as err:  # pylint: disable=broad-except (re-raised below unless one of ours)
    failed = common.failed_verification_message(err)
    if failed is not None:
      common.fail(failed, common.VERIFICATION_FAILED_EXIT)
    if not isinstance(err, (ValueError, OSError, ImportError, RuntimeError)):
      raise
    message = common.user_error_message(err, paths)
    if message is not None:
      common.fail(message)
    # jax.errors.JaxRuntimeError subclasses RuntimeError
    if not isinstance(err, RuntimeError) or 'RESOURCE_EXHAUSTED' not in str(err):
      raise
    # Too big a compiled batch is a setting problem, not a crash: say which knobs shrink it.
    wanted = str(err).split('allocating', 1)[-1].split('bytes', 1)[0].strip()
    size = f' ({int(wanted) / 2**30:.1f} GiB)' if wanted.isdigit() else ''
    common.fail(f'out of device memory{size} for one compiled batch of --proxies='
                f'{flags.FLAGS.proxies}; lower --batch_candidates, --ntk_batch or '
                f'--zc_batch, or set --cotangent_chunk for ntk_cond (the exact NTK holds K x B x B '
                f'activations)')


def cli(argv) -> int:
  """The command line in this process (tests): parse `argv` (argv[0] is the program), run, and
  return the exit code. Flags start from their defaults on every call."""
  flags.FLAGS.unparse_flags()
  try:
    main(common.parse_flags_or_fail(list(argv)))
  except SystemExit as err:
    return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
  return 0


if __name__ == '__main__':
  # `python -m experiments.run` runs this file as __main__: an experiment that imports
  # experiments.run (the pipeline builds its stages' configs) must get this module, not a second
  # copy that would define every flag again
  sys.modules.setdefault('experiments.run', sys.modules[__name__])
  sys.exit(app.run(main, flags_parser=common.parse_flags_or_fail))

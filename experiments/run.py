"""zeronas-mcu entry point: `python -m experiments.run --experiment=NAME [flags]`.

With no flags it runs the main job: a hardware-aware search (TE-NAS pruning under the MCU's
SRAM and flash) for an STM32F746 / CMSIS-NN on NB201, printing the winner, its costs and fit.
Bad input ends with one line on stderr naming the problem and the fix, and exit code 2.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

from experiments import common

_EXPERIMENT = flags.DEFINE_enum('experiment', 'search', sorted(common.EXPERIMENTS),
                                'What to run.')
flags.DEFINE_enum('search_space', 'nb201', ['nb201', 'tinycnn', 'mlperf_tiny'], 'Search space.')
flags.DEFINE_string('dataset', 'cifar10', 'cifar10, cifar100 or ImageNet16-120.')
flags.DEFINE_string('archs', 'random:64',
                    'all | random:N | a file with one arch string or index per line | an arch '
                    'string | an arch index; correlate also takes reference (the '
                    '--reference_file archs of --dataset) and reference+random:N.')
flags.DEFINE_string('proxies', 'ntk_cond_independent,linear_regions',
                    'Comma-separated proxy names (ntk_cond is TE-NAS-exact but slow on CPU).')
flags.DEFINE_integer('batch_candidates', 8, 'Candidates per compiled call (K).')
flags.DEFINE_integer('candidate_chunk', 0,
                     'Candidates vmapped together inside a call (0 = all K); bounds memory.')
flags.DEFINE_bool('sparse', False,
                  'Multi-hot masks (pruning): run only active ops (lax.cond inside lax.map) '
                  'instead of the dense masked supernet. One-hot archs always run their own '
                  'single path (see --single_path).')
flags.DEFINE_bool('single_path', True,
                  'Score one-hot archs on their own single path (lax.switch per edge, scan over '
                  'cells); false: the dense masked supernet, every op of every edge.')
flags.DEFINE_integer('seed', 0, 'Seed for arch sampling, inputs and inits.')
flags.DEFINE_string('output', 'scores.csv', 'Output CSV path.')
flags.DEFINE_string('data_dir', None,
                    'Folder with CIFAR python pickle batches; without it inputs are N(0,1).')
flags.DEFINE_string('benchmark_file', None,
                    'NB201 CSV with arch_index,arch_str (default: the NB201 table in '
                    '$ZERONAS_DATA_DIR or ../shared/data).')
flags.DEFINE_integer('ntk_batch', 64, 'NTK batch size B.')
flags.DEFINE_integer('repeats', 3, 'NTK repeats (fresh init and batch each), averaged.')
flags.DEFINE_integer('ntk_width', 8, 'Channels C of the NTK proxy network (NB201: 16).')
flags.DEFINE_integer('ntk_cells', 1, 'Cells per stage N of the NTK proxy network (NB201: 5).')
flags.DEFINE_integer('zc_batch', 64, 'Batch of the zero-cost proxies (grad_norm, snip, synflow, ...).')
flags.DEFINE_integer('zc_width', 16, 'Channels C of the zero-cost proxies\' network (NB201: 16).')
flags.DEFINE_integer('zc_cells', 5, 'Cells per stage N of the zero-cost proxies\' network (NB201: 5).')
flags.DEFINE_integer('zico_splits', 2, 'zico: mini-batches the zero-cost batch is split into (>= 2).')
flags.DEFINE_integer('cotangent_chunk', 0, 'Coupled NTK pullbacks vmapped together (0 = as many '
                     'as fit a 4 GiB budget).')
flags.DEFINE_string('init', 'torch_default', 'Weight init: torch_default or kaiming_normal.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_string('device', 'stm32f746', 'MCU from the device catalog (--list_devices).')
flags.DEFINE_string('runtime', 'cmsis-nn', 'Inference runtime: tflm, cmsis-nn, x-cube-ai, tinyengine.')
flags.DEFINE_bool('list_devices', False, 'Print the device and runtime catalog and exit.')
# --experiment=search
flags.DEFINE_string('searcher', 'prune', 'Search strategy: prune, grad_prune, random, evolution.')
flags.DEFINE_string('seeds', '', 'Seeds to search with, e.g. 0-9 or 0,3 (default: --seed).')
flags.DEFINE_float('latency_budget_ms', None, 'Predicted-latency budget (ms); unset: none.')
flags.DEFINE_float('energy_budget_mj', None, 'Predicted energy budget per inference (mJ).')
flags.DEFINE_float('sram_reserve_kb', 0.0, 'SRAM kept free for the application (KB).')
flags.DEFINE_float('flash_reserve_kb', 0.0, 'Flash kept free for the application (KB).')
flags.DEFINE_string('workdir', 'search_out', 'Folder for results.json, results.csv, pareto.png '
                    '(correlate: its outputs and chunks, default correlate_out).')
flags.DEFINE_string('proxy_weights', '',
                    'Objective weight per proxy, e.g. ntk_cond=1,linear_regions=1 (default 1).')
flags.DEFINE_float('w_flops', 0.0, 'Objective weight of predicted MACs (relative to the max).')
flags.DEFINE_float('w_latency', 0.0,
                   'Objective weight of predicted latency (relative to the budget or max).')
flags.DEFINE_float('w_feasible', 1.0,
                   'prune: weight of the rank of the feasible share of the archs a removal leaves.')
flags.DEFINE_integer('random_samples', 64, 'random: archs scored.')
flags.DEFINE_integer('evolution_samples', 64, 'evolution: archs scored in total.')
flags.DEFINE_integer('population', 16, 'evolution: population size.')
flags.DEFINE_integer('tournament', 4, 'evolution: tournament size.')
flags.DEFINE_integer('recheck', 8, 'grad_prune: single-path archs re-scored exactly at the end.')
# --experiment=correlate (also uses --dataset, --archs, --proxies, --data_dir, --workdir, ...)
flags.DEFINE_integer('chunk_size', 256, 'correlate: archs per resumable chunk written to disk.')
flags.DEFINE_string('reference_file', None,
                    'correlate: NASLib zero-cost CSV to check per-proxy agreement against.')
# --experiment=train (also uses --dataset, --data_dir, --seed, --workdir, --progress)
flags.DEFINE_string('arch', None, 'train: NB201 arch string or index (index needs the NB201 table).')
flags.DEFINE_integer('epochs', 10, 'train: epochs of this run (qat from scratch: half fp32).')
flags.DEFINE_string('quant', 'fp32', 'train: fp32, ptq (calibrate int8 ranges after training) '
                    'or qat.')
flags.DEFINE_string('init_from', None, 'train: workdir of a finished run to start from.')
flags.DEFINE_string('distill_from', None, 'train: teacher workdir; distil its soft outputs.')
flags.DEFINE_float('distill_alpha', 0.7, 'train: weight of the distillation loss.')
flags.DEFINE_float('distill_temperature', 4.0, 'train: distillation softmax temperature.')
flags.DEFINE_integer('train_width', 16, 'train: channels C of the trained network (NB201: 16).')
flags.DEFINE_integer('train_cells', 5, 'train: cells per stage N (NB201: 5).')
flags.DEFINE_integer('train_batch', 128, 'train: batch size.')
flags.DEFINE_string('optimizer', 'sgd', 'train: sgd (Nesterov momentum) or adamw.')
flags.DEFINE_float('lr', 0.1, 'train: peak learning rate (cosine schedule after warmup).')
flags.DEFINE_float('weight_decay', 5e-4, 'train: weight decay on conv/dense kernels.')
flags.DEFINE_float('warmup_epochs', 1.0, 'train: linear warmup length.')
flags.DEFINE_float('label_smoothing', 0.0, 'train: label smoothing.')
flags.DEFINE_integer('calib_batches', 8, 'train: batches for int8 range calibration (ptq, qat).')
flags.DEFINE_integer('train_images', 0, 'train: use the first N training images (0 = all).')
flags.DEFINE_integer('test_images', 0, 'train: evaluate on the first N test images (0 = all).')
flags.DEFINE_integer('int_eval_images', -1,
                     'train: test images run through integer-only inference (-1 = all).')
# --experiment=export
flags.DEFINE_integer('export_images', -1,
                     'export: test images run in TFLite Micro and LiteRT against the integer '
                     'reference (-1 = all).')
flags.DEFINE_bool('litert', True, 'export: also run the model in LiteRT (XNNPACK).')
flags.DEFINE_bool('c_source', False,
                  'export: also write a C99 project (c_project/) and run it on an emulated '
                  'Cortex-M (needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm).')
flags.DEFINE_enum('c_target', 'm4', ['m4', 'm7'],
                  'export --c_source: m4 (Cortex-M4, QEMU mps2-an386) or m7 (Cortex-M7, '
                  'mps2-an500).')
flags.DEFINE_integer('c_images', 1000, 'export --c_source: test images run in the emulator.')


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected argument {argv[1]!r}; all options are --flags (see --help)')
  # JAX logs at INFO that it found no TPU; on the CPU/GPU machines users run this is noise.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  try:
    common.EXPERIMENTS[_EXPERIMENT.value](flags.FLAGS)
  except common.USER_ERRORS as err:
    common.fail(str(err))
  except RuntimeError as err:  # jax.errors.JaxRuntimeError subclasses RuntimeError
    if 'RESOURCE_EXHAUSTED' not in str(err):
      raise
    # Too big a compiled batch is a setting problem, not a crash: say which knobs shrink it.
    wanted = str(err).split('allocating', 1)[-1].split('bytes', 1)[0].strip()
    size = f' ({int(wanted) / 2**30:.1f} GiB)' if wanted.isdigit() else ''
    common.fail(f'out of device memory{size} for one compiled batch of --proxies='
                f'{flags.FLAGS.proxies}; lower --batch_candidates, --ntk_batch or '
                f'--zc_batch, or set --cotangent_chunk for ntk_cond (the exact NTK holds K x B x B '
                f'activations)')


if __name__ == '__main__':
  sys.exit(app.run(main))

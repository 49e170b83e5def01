"""Export a trained int8 run to `model.tflite` and verify it in TFLite Micro and LiteRT.

`export(workdir, data_dir)` reads a `--experiment=train` workdir trained with --quant=qat or ptq
and writes there:
  * model.tflite: the int8 model (`deploy.graph_tflite`), batch 1, int8 input (the normalised image
    quantized with the model's input scale and zero point) and int8 logits;
  * io_check.npz: golden int8 inputs (test images already quantized), the integer reference's
    int8 logits for TFLite Micro (`tflm_logits`, double rounding), for LiteRT's reference
    kernels (`litert_reference_logits`) and with single rounding (`litert_logits`, what
    LiteRT's XNNPACK computes on small networks), labels and the input quantization;
  * export.json and export.txt: model bytes, TFLM's arena, the hardware model's predicted peak
    SRAM and flash for the same graph and runtime, and agreement figures.

A failed verification fails: when TFLite Micro, LiteRT's reference kernels or (with c_source)
the emulated Cortex-M differ from the integer reference on any image, the files are still
written (export.json says which check failed, for inspection) and `export` raises
`VerificationFailed`. LiteRT's default XNNPACK kernels compute another arithmetic at NB201's
size (docs/deploy.md, "Rounding"), so their agreement is reported, never a failure.
With c_source the Arm toolchain and QEMU are checked first: missing, it raises
`mcu.ToolMissing` before any work.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from deploy import runtimes
from engine import files
from engine.train import train as train_lib
from search_spaces import registry

IO_CHECK_IMAGES = 256
# runtimes whose predicted costs the C project's measurements are set against; 'zeronas-c' is the
# catalog's model of the generated project itself, the one its flash is checked against
C_COST_RUNTIMES = ('zeronas-c', 'cmsis-nn', 'tflm', 'tinyengine')
C_RUNTIME = 'zeronas-c'


class ExportError(ValueError):
  """A workdir that cannot be exported; the message is one line naming the fix."""


class VerificationFailed(Exception):
  """A runtime's int8 outputs differ from the integer reference's; the message is one line
  naming each failed check. Not a ValueError: the user's input was fine, the model is not."""


def predicted_costs(graph, device: str, runtime: str) -> dict:
  """The hardware model's figures for the lowered graph of the exported arch."""
  import hardware
  from hardware import memory
  res = hardware.cost(graph, device=device, runtime=runtime)
  counts = train_lib.hardware_weight_counts(graph)
  rt = hardware.get_runtime(runtime)
  tflm = memory.tflm_arena(graph)
  return {'device': device, 'runtime': runtime,
          'tflm_arena_bytes': tflm['total'], 'tflm_planned_bytes': tflm['planned'],
          'tflm_persistent_bytes': tflm['persistent'],
          'sram_bytes': float(res['sram_bytes']), 'arena_bytes': float(res['arena_bytes']),
          'flash_bytes': float(res['flash_bytes']),
          'flash_bytes_without_code': float(res['flash_bytes']) - rt.code_flash_bytes,
          **{k: bool(v) for k, v in hardware.fits(res, device).items()},  # fits_sram, _flash
          'latency_ms': float(res['latency_ms']), 'energy_mj': float(res['energy_mj']),
          'weight_bytes': counts['weights'], 'bias_bytes': 4 * counts['biases']}


def ptq_command(cfg, workdir, data_dir=None) -> str:
  """The command that quantizes the fp32 run `workdir` (config `cfg`) with PTQ on `data_dir`
  (a placeholder where None)."""
  size = (f' --train_width={cfg.C} --train_cells={cfg.N} --dataset={cfg.dataset}'
          if registry.get(cfg.search_space).sized_lower is not None else '')
  return (f"python -m experiments.run --experiment=train --search_space={cfg.search_space} "
          f"--arch='{cfg.arch}'{size} --quant=ptq --epochs=0 --init_from={workdir} "
          f"--data_dir={data_dir or '<its training data>'} --workdir=<new dir>")


def export(workdir, data_dir, verify_images: int = -1, litert: bool = True,
           device: str = 'stm32f746', runtime: str = 'tflm', progress=True, log=print,
           c_source: bool = False, c_target: str = 'm4', c_images: int = 1000,
           space: str | None = None) -> dict:
  """Writes model.tflite, io_check.npz, export.json/txt into `workdir`; returns the report.
  `space`: the search space the caller expects the run to be of (None: whichever it is)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / 'config.json').is_file():
    raise ExportError(f'{workdir} is not a trained run (no config.json); pass --workdir=<a '
                      f'workdir written by --experiment=train --quant=qat or ptq>')
  cfg, variables = train_lib.load_run(workdir)
  if cfg.quant == 'fp32':
    raise ExportError(f'{workdir} was trained in fp32; export needs its int8 ranges: train with '
                      f'--quant=qat, or quantize it with {ptq_command(cfg, workdir, data_dir)}')
  if not np.any(np.asarray(variables['quant']['input_q']['count']) > 0):
    raise ExportError(f'{workdir} holds no calibrated activation ranges; rerun its training to '
                      f'the end (the ranges are set when QAT or PTQ starts)')
  net = cfg.network()
  if space is not None and space != net.space:
    raise ExportError(f'{workdir} holds a {net.space} run, not {space}; pass '
                      f'--search_space={net.space} or leave it out (export takes the run\'s)')
  if c_source:  # before any work: a missing tool must not surface after the TFLM run
    from deploy import mcu
    why = mcu.tools_missing(c_target)
    if why:
      raise mcu.ToolMissing(f'--c_source needs the Arm toolchain and QEMU: {why}; or export '
                            f'without --c_source')
  pred = predicted_costs(net.graph, device, runtime)  # a bad --device/--runtime: before any work
  # Training that stopped (at chance, diverged) or was killed writes no results.json. Its last
  # checkpoint still exports, so the deployment itself can be checked bit for bit, but the
  # accuracies measured here are then not results, and the report says so.
  finished = (workdir / 'results.json').is_file()
  if not finished:
    log(f'note: {workdir} holds no finished training (no results.json: it stopped at chance or '
        f'diverged, or was killed); the model is exported and checked bit for bit, but its test '
        f'accuracies are not results')
  for stale in ('export.json', 'export.txt'):  # a failed export must not leave the last report
    (workdir / stale).unlink(missing_ok=True)

  t0 = time.perf_counter()
  size = ''.join(f' {k}{v}' for k, v in net.size.items())
  model = net.tflite(variables, f'zeronas-mcu {net.space} {cfg.arch}{size}')
  reference = net.integer(variables)
  files.write_bytes_atomic(workdir / 'model.tflite', model)
  log(f'model.tflite: {len(model)} bytes ({time.perf_counter() - t0:.1f} s)')

  _, test = train_lib.load_data(data_dir, dataclasses.replace(cfg, train_images=1))
  if test.num_classes and test.num_classes != net.num_classes:
    raise ExportError(f'{data_dir} has {test.num_classes} classes but this run\'s network has '
                      f'{net.num_classes} outputs; pass the --data_dir it was trained on')
  n = len(test.labels) if verify_images < 0 else min(verify_images, len(test.labels))
  x = np.asarray(train_lib._normalize(test.images[:n]))
  labels = np.asarray(test.labels[:n])
  q_in = reference.quantize_input(x).astype(np.int8)

  t0 = time.perf_counter()
  ref_tflm = reference_logits(net, variables, x)
  t_ref = time.perf_counter() - t0
  ref_litert = {kernels: reference_logits(net, variables, x, rounding)
                for kernels, rounding in LITERT_ROUNDING.items()} if litert else None
  log(f'integer reference on {n} images: {n / t_ref:.0f} images/s (compile included)')

  workers = max(1, min(os.cpu_count() or 1, 8))

  log(f'TFLM on {n} images, {workers} processes ...')
  t0 = time.perf_counter()
  tflm = runtimes.tflm_run(model, q_in, workers=workers)
  t_tflm = time.perf_counter() - t0
  arena = runtimes.tflm_arena(model, q_in)
  report = {
      'search_space': net.space, 'arch': cfg.arch, 'quant': cfg.quant, 'images': n,
      'training_finished': finished,
      **net.size,
      'model_bytes': len(model),
      'tflm': {'bitexact_fraction': float(np.mean(np.all(tflm == ref_tflm, -1))),
               'mismatched_images': int(np.sum(np.any(tflm != ref_tflm, -1))),
               'max_abs_diff': int(np.max(np.abs(tflm.astype(int) - ref_tflm))),
               'top1_agreement': float(np.mean(tflm.argmax(-1) == ref_tflm.argmax(-1))),
               'test_acc': float(np.mean(tflm.argmax(-1) == labels)),
               'images_per_s': n / t_tflm, 'processes': workers,
               'arena_total_bytes': arena['total'], 'arena_head_bytes': arena['head'],
               'arena_tail_bytes': arena['tail'], 'allocations': arena['record']},
      'reference': {'test_acc': float(np.mean(ref_tflm.argmax(-1) == labels)),
                    'images_per_s': n / t_ref, 'compile_included': True},
  }
  if litert:
    # both kernel sets: XNNPACK is what a LiteRT user gets by default; the reference kernels
    # are the ones whose arithmetic the integer reference reproduces exactly
    report['litert'] = {}
    for kernels, mine in ref_litert.items():
      log(f'LiteRT ({kernels} kernels) on {n} images ...')
      t0 = time.perf_counter()
      lite = runtimes.litert_run(model, q_in, kernels)
      report['litert'][kernels] = {
          'rounding_of_its_reference': LITERT_ROUNDING[kernels],
          'bitexact_fraction': float(np.mean(np.all(lite == mine, -1))),
          'mismatched_images': int(np.sum(np.any(lite != mine, -1))),
          'max_abs_diff': int(np.max(np.abs(lite.astype(int) - mine))),
          'top1_agreement_with_its_reference': float(np.mean(lite.argmax(-1) == mine.argmax(-1))),
          'top1_agreement_with_tflm_reference': float(np.mean(lite.argmax(-1) ==
                                                              ref_tflm.argmax(-1))),
          'test_acc': float(np.mean(lite.argmax(-1) == labels)),
          'images_per_s': n / (time.perf_counter() - t0)}
  report['predicted'] = pred
  report['errors'] = {
      'tflm_arena_model_vs_tflm_arena': pred['tflm_arena_bytes'] / arena['total'] - 1,
      'tflm_planned_model_vs_tflm_head': pred['tflm_planned_bytes'] / arena['head'] - 1,
      'sram_vs_tflm_arena': pred['sram_bytes'] / arena['total'] - 1,
      'flash_without_code_vs_model_bytes': pred['flash_bytes_without_code'] / len(model) - 1,
      'weights_and_biases_vs_model_bytes': (pred['weight_bytes'] + pred['bias_bytes'])
                                           / len(model) - 1}

  if c_source:
    report['c'] = c_project(workdir / 'c_project', model, q_in[:c_images], ref_tflm[:c_images],
                            net.graph, c_target, log=log)

  failures = verification_failures(report)
  report['verified'] = not failures
  report['verification_failures'] = failures

  k = min(IO_CHECK_IMAGES, n)
  np.savez_compressed(
      workdir / 'io_check.npz', inputs=q_in[:k], tflm_logits=ref_tflm[:k].astype(np.int8),
      litert_logits=(ref_litert['xnnpack'][:k] if litert else ref_tflm[:k]).astype(np.int8),
      litert_reference_logits=(ref_litert['reference'][:k] if litert else ref_tflm[:k]
                               ).astype(np.int8),
      labels=labels[:k], input_scale=np.float32(reference.input_qparams[0]),
      input_zero_point=np.int32(reference.input_qparams[1]),
      mean=np.asarray(train_lib.data_lib.CIFAR_MEAN, np.float32),
      std=np.asarray(train_lib.data_lib.CIFAR_STD, np.float32))
  (workdir / 'export.json').write_text(json.dumps(report, indent=1))
  (workdir / 'export.txt').write_text(summary(report) + '\n')
  log(summary(report))
  if failures:
    raise VerificationFailed(f'{"; ".join(failures)}; the model and its report were still '
                             f'written ({workdir / "export.json"}, "verification_failures")')
  return report


def verification_failures(report: dict) -> list[str]:
  """One phrase per runtime that must equal the integer reference bit for bit and does not:
  TFLite Micro, LiteRT's reference kernels, the emulated Cortex-M. XNNPACK is not one of them
  (another arithmetic; reported as agreement)."""
  checks = [('TFLite Micro', report['tflm'])]
  if 'reference' in report.get('litert', {}):
    checks.append(("LiteRT's reference kernels", report['litert']['reference']))
  if 'c' in report:
    checks.append((f'the C project on QEMU ({report["c"]["target"]})', report['c']))
  failures = []
  for name, r in checks:
    if r['mismatched_images']:
      failures.append(f'{name} output differs from the integer reference on '
                      f'{r["mismatched_images"]} of {r["images"] if "images" in r else report["images"]} '
                      f'images (max |diff| {r["max_abs_diff"]})')
  return failures


def c_project(out_dir, model: bytes, q_in, ref_logits, graph, target='m4',
              device='nucleo-l4r5zi', log=print) -> dict:
  """Writes the C project (`deploy.c_source`), builds it for `target` and runs `q_in` in QEMU;
  returns bit-exactness against `ref_logits`, instruction counts and the memory comparison. A
  missing Arm toolchain or QEMU raises `mcu.ToolMissing` before the project is written."""
  from deploy import c_source
  from deploy import mcu
  why = mcu.tools_missing(target)
  if why:
    raise mcu.ToolMissing(why)
  project = c_source.generate(model, out_dir)
  report = {'dir': str(out_dir), 'target': target, 'arena_bytes': project.arena_bytes,
            'const_bytes': project.const_bytes}
  report.update(plan_vs_model(project, graph))
  elf = mcu.build(out_dir, target)
  log(f'C project: running {len(q_in)} images in qemu-system-arm ({target}) ...')
  r = mcu.run(out_dir, q_in, target)
  report.update(measure(project, r, ref_logits, elf, graph, target, device))
  return report


def plan_vs_model(project, graph) -> dict:
  """The generated arena against the hardware model's TFLM plan for the lowered graph."""
  planned = predicted_c_costs(graph, runtimes=())['plan_bytes']
  return {'hardware_model_plan_bytes': planned,
          'arena_equals_plan': project.arena_bytes == planned}


def measure(project, r, ref_logits, elf, graph, target, device) -> dict:
  """Bit-exactness, per-kernel instructions per MAC, sizes against the hardware model."""
  from deploy import mcu
  per_kernel = {}
  mean = r.instructions.mean(0)
  for layer, n in zip(project.layers, mean):
    k = per_kernel.setdefault(layer.kernel, {'work': 0, 'instructions': 0.0, 'layers': 0})
    k['work'] += layer.macs
    k['instructions'] += float(n)
    k['layers'] += 1
  for k in per_kernel.values():
    k['instructions_per_work'] = k['instructions'] / max(k['work'], 1)
  sizes = mcu.sizes(elf)
  predicted = predicted_c_costs(graph, device)
  flash = sizes['.text'] + sizes['.rodata'] + sizes['.data']
  stack = mcu.stack_bytes(project.out_dir, target)
  return {
      'images': int(len(r.logits)),
      'bitexact_fraction': float(np.mean(np.all(r.logits == ref_logits, -1))),
      'mismatched_images': int(np.sum(np.any(r.logits != ref_logits, -1))),
      'max_abs_diff': int(np.max(np.abs(r.logits.astype(int) - ref_logits))),
      'instructions_per_inference': float(r.instructions.sum(1).mean()),
      'instructions_per_kernel': per_kernel,
      'emulator_seconds_per_inference': r.seconds / len(r.logits),
      'sizes': sizes, 'flash_bytes': flash,
      'sram_bytes': sizes['.bss'] + sizes['.data'] + stack['total'],
      'stack_bytes': stack['total'], 'stack_not_static': stack['not_static'],
      'bss_outside_arena': sizes['.bss'] - project.arena_bytes,
      'predicted': predicted, 'device': device,
      'flash_error': predicted[C_RUNTIME]['flash_bytes'] / flash - 1}


def predicted_c_costs(graph, device='nucleo-l4r5zi', runtimes=C_COST_RUNTIMES) -> dict:
  """The hardware model's flash, SRAM and latency of the lowered arch (its hardware graph) for
  each runtime of `C_COST_RUNTIMES`, and its TFLM plan (the generated arena's size by
  construction)."""
  import hardware
  from hardware import memory
  out = {'plan_bytes': memory.tflm_greedy_arena(memory.tflm_buffers(graph))}
  for runtime in runtimes:
    res = hardware.concrete_cost(graph, device=device, runtime=runtime)
    out[runtime] = {key: float(res[key]) for key in ('flash_bytes', 'sram_bytes', 'latency_ms')}
  return out


# LiteRT's kernel sets (`runtimes.litert_run`) -> the integer reference rounding each is
# checked against (`quant.ROUNDINGS`)
LITERT_ROUNDING = {'xnnpack': 'single', 'reference': 'litert_reference'}


def reference_logits(net, variables, x, rounding='tflm') -> np.ndarray:
  """The integer reference's int8 logits for normalised images x (`net`: the run's
  `engine.train.trainable.Trainable`), through its compiled run, equal bit for bit to the numpy
  kernels (`engine.quant.graph_int`)."""
  return net.integer(variables, rounding).logits(x)


def _size(r: dict) -> str:
  return f' C={r["C"]} N={r["N"]}' if 'C' in r else ''


def summary(r: dict) -> str:
  t, p, e = r['tflm'], r['predicted'], r['errors']
  lines = [
      # reports from before the key existed are of the default space
      f'{r.get("search_space", registry.DEFAULT)} {r["arch"]}{_size(r)} ({r["quant"]}), '
      f'{r["images"]} test images',
      f'model.tflite {r["model_bytes"]} bytes; predicted flash without runtime code '
      f'{p["flash_bytes_without_code"]:.0f} ({e["flash_without_code_vs_model_bytes"]:+.1%}), '
      f'int8 weights + int32 biases {p["weight_bytes"] + p["bias_bytes"]} '
      f'({e["weights_and_biases_vs_model_bytes"]:+.1%})',
      f'TFLM: int8 logits equal the integer reference on {t["bitexact_fraction"]:.2%} of images '
      f'(max |diff| {t["max_abs_diff"]}), test acc {t["test_acc"]:.4f}, '
      f'{t["images_per_s"]:.1f} images/s',
      f'TFLM arena {t["arena_total_bytes"]} bytes (planned activations {t["arena_head_bytes"]}, '
      f'persistent {t["arena_tail_bytes"]}); hardware model of TFLM\'s arena '
      f'{p["tflm_arena_bytes"]} ({e["tflm_arena_model_vs_tflm_arena"]:+.1%}; planned '
      f'{p["tflm_planned_bytes"]}, {e["tflm_planned_model_vs_tflm_head"]:+.1%}); the search\'s '
      f'differentiable peak SRAM ({p["runtime"]}) {p["sram_bytes"]:.0f} '
      f'({e["sram_vs_tflm_arena"]:+.1%})']
  if 'fits_sram' in p:  # reports from before the verdict have no fits_* keys
    over = [what for what in ('sram', 'flash') if not p[f'fits_{what}']]
    lines.append(f'predicted on {p["device"]} with {p["runtime"]}: SRAM '
                 f'{p["sram_bytes"] / 1024:.1f} KB, flash {p["flash_bytes"] / 1024:.1f} KB, '
                 f'latency {p["latency_ms"]:.4g} ms: '
                 + (f'DOES NOT FIT ({" and ".join(over)})' if over else 'fits'))
  if 'c' in r:
    lines.append(c_summary(r['c']))
  for kernels, lr in r.get('litert', {}).items():
    lines.append(f'LiteRT ({kernels} kernels): int8 logits equal the integer reference '
                 f'({lr["rounding_of_its_reference"]} rounding) on {lr["bitexact_fraction"]:.2%} '
                 f'of images (max |diff| {lr["max_abs_diff"]}, top-1 '
                 f'{lr["top1_agreement_with_its_reference"]:.2%}); top-1 agreement with the TFLM '
                 f'reference {lr["top1_agreement_with_tflm_reference"]:.2%}, test acc '
                 f'{lr["test_acc"]:.4f}')
  if r.get('training_finished') is False:
    lines.append('training unfinished (no results.json): these test accuracies are not results')
  return '\n'.join(lines)


def c_summary(c: dict) -> str:
  head = (f'C project ({c["dir"]}): arena {c["arena_bytes"]} bytes, '
          f'{"equal to" if c["arena_equals_plan"] else "NOT equal to"} the hardware model\'s TFLM '
          f'plan ({c["hardware_model_plan_bytes"]})')
  s, p = c['sizes'], c['predicted'][C_RUNTIME]
  return '\n'.join([
      head,
      f'  {c["target"]} in QEMU: int8 logits equal the integer reference on '
      f'{c["bitexact_fraction"]:.2%} of {c["images"]} images (max |diff| {c["max_abs_diff"]}); '
      f'{c["instructions_per_inference"] / 1e6:.1f} M instructions per inference, '
      f'{c["emulator_seconds_per_inference"]:.2f} s emulated',
      f'  flash .text {s[".text"]} + .rodata {s[".rodata"]} = {c["flash_bytes"]} bytes '
      f'(hardware model, {C_RUNTIME} runtime: {p["flash_bytes"]:.0f}, '
      f'{c["flash_error"]:+.1%}); SRAM .bss {s[".bss"]} (arena {c["arena_bytes"]}) + '
      f'stack {c["stack_bytes"]} = {c["sram_bytes"]}',
      '  instructions per MAC / element: ' + ', '.join(
          f'{k} {v["instructions_per_work"]:.2f}' for k, v in sorted(
              c['instructions_per_kernel'].items(), key=lambda kv: -kv[1]['instructions']))])

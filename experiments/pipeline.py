"""`--experiment=pipeline`: search, train, export (and C) for the winner, in one command.

  python -m experiments.run --experiment=pipeline --data_dir=my_images/ --epochs=10 \
      --workdir=pipeline_out [--c_source]

The stages run the experiments of the same names on one --data_dir (CIFAR batches, an image
folder or an .npz: the proxies see its train split, the winner trains and is verified on it):

1. search (WORKDIR/search/): the hardware-aware search under --device's limits; the pick of the
   first seed wins;
2. train (WORKDIR/train/): the winner with --quant (default qat: int8 in the TFLite scheme);
3. export (WORKDIR/train/): model.tflite verified bit for bit in TFLite Micro (and LiteRT's
   reference kernels); with --c_source the C project built and run on the emulated Cortex-M.

Each stage resumes: a finished stage is skipped when the pipeline runs again (its outputs are on
disk), and a stage killed midway resumes as its experiment does (training from its last
epoch's checkpoint). WORKDIR/pipeline.json holds the settings; a rerun with other settings into
the same WORKDIR is refused in one line. At the end WORKDIR/report.json and report.md give the
pick, its accuracy (float and int8), predicted SRAM, flash and latency, the TFLite Micro check
and, with --c_source, the emulator's; the search's Pareto plot is WORKDIR/search/pareto.png.
A failed verification ends the pipeline with one line and exit code 3 (as --experiment=export).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from experiments import common


class PipelineError(ValueError):
  """A workdir that holds another pipeline; one line naming the fix."""


STAGES = ('search', 'train', 'export')


def _sub_config(f, experiment: str, **overrides):
  """`experiment`'s config from the pipeline's settings of the same names."""
  from experiments import run as run_lib
  names = {fl.name for fl in dataclasses.fields(run_lib.CONFIGS[experiment])}
  values = {n: getattr(f, n) for n in names if hasattr(f, n)}
  values.update(overrides)
  return run_lib.make_config(experiment, **values)


def _check_manifest(workdir: pathlib.Path, settings: dict):
  path = workdir / 'pipeline.json'
  if path.is_file():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      old = None
    if old != settings:
      differ = sorted(k for k in set(old or {}) | set(settings)
                      if (old or {}).get(k) != settings.get(k))
      raise PipelineError(f'{workdir} holds a pipeline with other settings (differs in '
                          f'{", ".join(differ[:4]) or "its pipeline.json"}); pass a new '
                          f'--workdir, or the same flags to resume')
    return
  workdir.mkdir(parents=True, exist_ok=True)
  common.write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True) + '\n')


def _check_before_any_work(f):
  """What the later stages would refuse, refused before the search runs and before
  pipeline.json is written (so the corrected command is not refused as another pipeline): the
  device and runtime names, and QAT's float steps when --train_images or the data's files
  bound them."""
  import hardware
  from engine.train import data as data_lib
  from engine.train import train as train_lib
  from search_spaces import nb201
  hardware.get_device(f.device)     # ValueError naming the valid devices
  hardware.get_runtime(f.runtime)   # ValueError naming the valid runtimes
  # the train stage's data (experiments.train's default without --data_dir), counted from its
  # files without loading it: an upper bound, so a schedule refused here is refused there too
  data_dir = f.data_dir or str(nb201.data_dir() / 'cifar10')
  bounds = [n for n in (f.train_images, data_lib.train_images_at_most(data_dir, f.dataset)) if n]
  if bounds:  # at most this many steps per epoch, whatever the data holds
    cfg = train_lib.TrainConfig(arch='', epochs=f.epochs, quant=f.quant, batch_size=f.train_batch,
                                init_from=f.init_from)
    cfg.check_schedule(max(min(bounds) // f.train_batch, 1))


def _done(path: pathlib.Path, stage: str) -> bool:
  if path.is_file():
    print(f'pipeline: {stage} already done ({path}); skipped')
    return True
  print(f'pipeline: {stage} ...', flush=True)
  return False


def run(f, workdir='pipeline_out'):
  from experiments import export as export_exp
  from experiments import search as search_exp
  from experiments import train as train_exp
  workdir = pathlib.Path(workdir)
  _check_before_any_work(f)
  settings = json.loads(json.dumps(dataclasses.asdict(f), default=str))
  settings.pop('progress', None)  # does not change a result
  _check_manifest(workdir, settings)

  search_dir = workdir / 'search'
  if not _done(search_dir / 'results.json', 'search'):
    from engine.train import trainable
    search_exp.run(_sub_config(f, 'search', seeds=str(f.seed)), search_dir,
                   keep=trainable.int8_exportable(f.search_space))
  found = json.loads((search_dir / 'results.json').read_text())['results'][0]

  train_dir = workdir / 'train'
  if not _done(train_dir / 'results.json', 'train'):
    train_exp.run(_sub_config(f, 'train', arch=found['arch_str']), train_dir)
  trained = json.loads((train_dir / 'results.json').read_text())

  if not _done(train_dir / 'export.json', 'export'):
    export_exp.run(_sub_config(f, 'export', runtime='tflm'), train_dir)
  exported = json.loads((train_dir / 'export.json').read_text())
  if not exported.get('verified', False):  # an export.json left by a failed verification
    from deploy import export as export_lib
    raise export_lib.VerificationFailed(
        '; '.join(exported.get('verification_failures', ['see export.json'])) +
        f' ({train_dir / "export.json"}; delete it to export again)')

  report = _report(f, found, trained, exported, workdir, _deployed_costs(f, train_dir))
  common.write_text_atomic(workdir / 'report.json', json.dumps(report, indent=1) + '\n')
  common.write_text_atomic(workdir / 'report.md', _markdown(report) + '\n')
  print(_markdown(report))
  print(f'wrote {workdir / "report.json"} and report.md')


def _deployed_costs(f, train_dir) -> dict:
  """The hardware model's costs of the network that was trained and exported (its own width
  and cells, which may be smaller than the size the search costed) on --device/--runtime."""
  from deploy import export as export_lib
  from engine.train import train as train_lib
  cfg = train_lib.TrainConfig(**json.loads((train_dir / 'config.json').read_text()))
  costs = export_lib.predicted_costs(cfg.network().graph, f.device, f.runtime)
  size = {'C': cfg.C, 'N': cfg.N} if cfg.search_space == 'nb201' else {}
  return {**size, **{k: costs[k] for k in ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj')}}


def _report(f, found, trained, exported, workdir, deployed) -> dict:
  tflm = exported['tflm']
  report = {
      'search_space': f.search_space, 'device': f.device, 'runtime': f.runtime,
      'arch': found['arch_str'], 'data': trained.get('data', {}).get('source', f.data_dir),
      # the search's pick as it costed it (the space's own size), predicted by the hardware model;
      # test_acc: the benchmark's (NB201: CIFAR-10, 200 epochs)
      'search': {k: found.get(k) for k in ('sram_bytes', 'flash_bytes', 'latency_ms',
                                           'energy_mj', 'params', 'feasible', 'test_acc')},
      # the trained and exported network (--train_width, --train_cells), predicted likewise
      'deployed': deployed,
      'train': {'epochs': f.epochs, **{k: trained.get(k) for k in (
          'quant', 'test_images', 'float_test_acc', 'fake_quant_test_acc', 'int_eval_images',
          'int_test_acc')}},
      'export': {'model_bytes': exported['model_bytes'], 'images': exported['images'],
                 'tflm_bitexact_fraction': tflm['bitexact_fraction'],
                 'tflm_test_acc': tflm['test_acc'],
                 'tflm_arena_bytes': tflm.get('arena_total_bytes'),
                 'verified': exported['verified']},
      'files': {'pareto_plot': str(workdir / 'search' / 'pareto.png'),
                'model': str(workdir / 'train' / 'model.tflite')},
  }
  if found.get('finalists'):  # --finalists: the stage's choice among the search's top K
    report['finalists'] = [{k: r.get(k) for k in ('arch_str', 'objective_rank', 'val_acc')}
                           for r in found['finalists']]
  if 'c' in exported:
    c = exported['c']
    report['c'] = {k: c.get(k) for k in ('target', 'images', 'bitexact_fraction',
                                         'instructions_per_inference', 'arena_bytes')}
    report['files']['c_project'] = c.get('dir')
  return report


def _fmt(value, spec='.2f', unit=''):
  return '-' if value is None else f'{value:{spec}}{unit}'


def _size(d: dict) -> str:
  return f' (C={d["C"]} N={d["N"]})' if 'C' in d else ''


def _markdown(r: dict) -> str:
  s, d, t, e = r['search'], r['deployed'], r['train'], r['export']
  acc = lambda v: None if v is None else 100 * v
  kb = lambda v: None if v is None else v / 1024
  lines = [
      f'# Pipeline: {r["search_space"]} for {r["device"]} ({r["runtime"]})', '',
      f'Winner: `{r["arch"]}`; data: {r["data"]}', '',
      *([f'Chosen by the finalist stage among the search\'s {len(r["finalists"])} best by the '
         f'objective (validation accuracy after brief training: '
         + ', '.join(f'#{x["objective_rank"]} ' + (_fmt(acc(x['val_acc']), '.1f', '%') if
                                                      x['val_acc'] == x['val_acc'] else 'failed')
                     for x in r['finalists']) + ').', ''] if r.get('finalists') else []),
      f'| | as searched (the space\'s own size) | as trained and exported{_size(d)} |',
      '|---|---|---|',
      f'| predicted SRAM | {_fmt(kb(s.get("sram_bytes")), ".1f", " KB")} | '
      f'{_fmt(kb(d["sram_bytes"]), ".1f", " KB")} |',
      f'| predicted flash | {_fmt(kb(s.get("flash_bytes")), ".1f", " KB")} | '
      f'{_fmt(kb(d["flash_bytes"]), ".1f", " KB")} |',
      f'| predicted latency | {_fmt(s.get("latency_ms"), ".1f", " ms")} | '
      f'{_fmt(d["latency_ms"], ".1f", " ms")} |', '',
      '| trained and exported | value |', '|---|---|',
      f'| trained ({t.get("quant")}, {t.get("epochs")} epochs, {t.get("test_images")} test '
      f'images): float test acc | {_fmt(acc(t.get("float_test_acc")), ".2f", "%")} |',
      f'| fake-quant int8 test acc | {_fmt(acc(t.get("fake_quant_test_acc")), ".2f", "%")} |',
      f'| integer-only int8 test acc ({t.get("int_eval_images")} images) | '
      f'{_fmt(acc(t.get("int_test_acc")), ".2f", "%")} |',
      f'| TFLite Micro test acc ({e["images"]} images) | '
      f'{_fmt(acc(e["tflm_test_acc"]), ".2f", "%")} |',
      f'| TFLite Micro == integer reference | {e["tflm_bitexact_fraction"]:.2%} of images |',
      f'| model.tflite | {e["model_bytes"]} bytes; TFLM arena {e["tflm_arena_bytes"]} bytes |',
  ]
  if 'c' in r:
    c = r['c']
    lines.append(f'| C on QEMU ({c["target"]}) == integer reference | '
                 f'{_fmt(c.get("bitexact_fraction"), ".2%")} of {c.get("images")} images; '
                 f'{_fmt(c.get("instructions_per_inference"), ",.0f")} instructions |')
  lines += ['', f'Pareto plot: {r["files"]["pareto_plot"]}']
  return '\n'.join(lines)

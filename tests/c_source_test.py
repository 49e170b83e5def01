"""Generated C (deploy.c_source) on the host and on an emulated Cortex-M, bit for bit against the
integer reference; the arena is the hardware model's TFLM plan."""
import json
import os

import numpy as np
import pytest

from deploy import c_source
from deploy import export as export_lib
from deploy import mcu
from hardware import memory
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from deploy_test import ARCH, DEAD_NODE, SMALL, UNUSED_NODE, _calibrated
from deploy_test import trained_ptq  # noqa: F401 (a fixture)


def _need(target):
  why = mcu.tools_missing(target)
  if why:
    if os.environ.get('CI'):  # .ci/run installs the toolchain and QEMU: missing is a failure
      pytest.fail(why)
    pytest.skip(why)


def _project(tmp_path, arch=ARCH, config=SMALL):
  net, v, x = _calibrated(arch, config)
  model, ref = net.tflite(v, ''), net.integer(v)
  project = c_source.generate(model, tmp_path / 'c')
  return nb201.parse_arch_str(arch), project, ref.quantize_input(x).astype(np.int8), ref.reference(x)


@pytest.mark.parametrize('arch', [ARCH, DEAD_NODE, UNUSED_NODE])
def test_host_build_equals_the_integer_reference(tmp_path, arch):
  _need('host')
  _, project, q, want = _project(tmp_path, arch)
  mcu.build(project.out_dir, 'host')
  np.testing.assert_array_equal(mcu.run(project.out_dir, q, 'host').logits, want)


@pytest.mark.parametrize('target', ['m4', 'm7'])
def test_emulated_cortex_m_equals_the_integer_reference(tmp_path, target):
  _need(target)
  ops, project, q, want = _project(tmp_path)
  elf = mcu.build(project.out_dir, target)
  r = mcu.run(project.out_dir, q[:8], target)
  np.testing.assert_array_equal(r.logits, want[:8])
  assert r.instructions.shape == (8, len(project.layers))
  convs = [i for i, layer in enumerate(project.layers) if layer.kernel == 'conv']
  assert np.all(r.instructions[:, convs] > 1000)
  # -icount is deterministic: the same image costs the same instructions again, to one tick
  # of the 25 MHz counter (40 instructions: where a layer starts within a tick moves)
  again = mcu.run(project.out_dir, q[:1], target)
  diff = np.abs(again.instructions[0] - r.instructions[0])
  assert diff.max() <= mcu.INSTRUCTIONS_PER_TICK
  s = mcu.sizes(elf)
  assert s['.bss'] >= project.arena_bytes
  weights = sum(project.const_bytes.values())
  assert weights <= s['.rodata'] < weights + 4096  # constants are the flash, plus layer structs
  assert 0 < mcu.stack_bytes(project.out_dir, target)['total'] < 1024


@pytest.mark.parametrize('arch', [
    '|nor_conv_1x1~0|+|avg_pool_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|',
    DEAD_NODE])  # the convs reading dead node 1 are constant operands of ADDs, in both
def test_arena_is_the_hardware_models_tflm_plan(tmp_path, arch):
  config = nb201.NB201Config(C=8, N=2)
  ops, project, _, _ = _project(tmp_path, arch, config)
  plan = memory.tflm_greedy_arena(memory.tflm_buffers(nb201_graph.lower(ops, config)))
  assert project.arena_bytes == plan
  # no two tensors live at the same time share bytes
  layers = json.loads((project.out_dir / 'layers.json').read_text())
  assert layers['arena_bytes'] == plan and len(layers['layers']) == len(project.layers)


def test_hardware_model_of_the_c_project_predicts_its_flash(tmp_path):
  # the catalog's zeronas-c sizes were read off a C=4 N=1 build of ARCH; here another arch and
  # size, with folded constants
  _need('m4')
  config = nb201.NB201Config(C=8, N=2)
  ops, project, _, _ = _project(tmp_path, DEAD_NODE, config)
  s = mcu.sizes(mcu.build(project.out_dir, 'm4'))
  predicted = export_lib.predicted_c_costs(nb201_graph.lower(ops, config),
                                           runtimes=(export_lib.C_RUNTIME,))
  flash = s['.text'] + s['.rodata'] + s['.data']
  assert abs(predicted[export_lib.C_RUNTIME]['flash_bytes'] / flash - 1) < 0.05
  assert project.const_bytes['constants'] > 0


def test_unsupported_builtin_is_one_clear_error(tmp_path):
  from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
  import flatbuffers
  net, v, _ = _calibrated()
  model = net.tflite(v, '')
  m = s.ModelT.InitFromPackedBuf(model, 0)
  relu = next(c for c in m.operatorCodes if c.builtinCode == s.BuiltinOperator.RELU)
  relu.builtinCode = relu.deprecatedBuiltinCode = s.BuiltinOperator.TANH
  b = flatbuffers.Builder(1 << 20)
  b.Finish(m.Pack(b), file_identifier=b'TFL3')
  with pytest.raises(c_source.UnsupportedModel, match='no C kernel for TFLite builtin TANH'):
    c_source.generate(bytes(b.Output()), tmp_path / 'c')


def test_export_writes_and_verifies_the_c_project(data_dir, trained_ptq):
  _need('m4')
  workdir = trained_ptq
  report = export_lib.export(workdir, data_dir / 'cifar10', verify_images=24, litert=False,
                             progress=False, log=lambda *_: None, c_source=True, c_images=12)
  c = report['c']
  assert c['images'] == 12 and c['bitexact_fraction'] == 1.0 and report['verified']
  assert c['arena_equals_plan']
  assert (workdir / 'c_project' / 'model.c').is_file()
  assert 'C project' in (workdir / 'export.txt').read_text()


def test_hardware_model_against_the_recorded_emulator_rows():
  """The 52 archs measured by `experiments.bench_mcu` (docs/data/bench_mcu_m4.csv: QEMU M4
  instructions, arm-none-eabi-size, generated arena) against the current hardware model."""
  import csv
  import pathlib
  from hardware import latency
  rows = list(csv.DictReader((pathlib.Path(__file__).parent.parent / 'docs' / 'data' /
                              'bench_mcu_m4.csv').open()))
  assert len(rows) >= 50
  config = nb201.NB201Config(C=16, N=5)
  pred = [export_lib.predicted_c_costs(nb201_graph.lower(nb201.parse_arch_str(r['arch']), config))
          for r in rows]
  assert [int(r['arena']) for r in rows] == [p['plan_bytes'] for p in pred]
  flash = np.array([p[export_lib.C_RUNTIME]['flash_bytes'] for p in pred])
  assert np.all(np.abs(flash / np.array([float(r['flash_bytes']) for r in rows]) - 1) < 0.1)
  lat = [p[export_lib.C_RUNTIME]['latency_ms'] for p in pred]
  assert latency.kendall_tau(lat, [float(r['instructions']) for r in rows]) >= 0.9


def test_bench_mcu_measures_an_arch_on_the_emulator(tmp_path):
  """experiments.bench_mcu's per-arch row (it broke once when export.measure changed its
  arguments, with no test on this path)."""
  _need('m4')
  import subprocess
  import sys
  # its own process: bench_mcu's absl flags (e.g. --archs) would clash with experiments.run's
  code = ('import json, sys\n'
          'from engine.train import trainable\n'
          'from experiments import bench_mcu\n'
          f'net = trainable.trainable("nb201", {ARCH!r}, C={SMALL.C}, N={SMALL.N})\n'
          'row = bench_mcu.measure(net, "m4", "nucleo-l4r5zi", sys.argv[1])\n'
          'print(json.dumps([sorted(row) == sorted(bench_mcu.FIELDS), row["instructions"], '
          'row["arena"], row["macs"]]))\n')
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'c')], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  fields_ok, instructions, arena, macs = json.loads(out.stdout.strip().splitlines()[-1])
  assert fields_ok and instructions > 1000 and arena > 0 and macs > 0

"""Export -> TFLite Micro and LiteRT, bit for bit against the integer reference."""
import json
import os
import sys

import jax
import numpy as np
import pytest

from deploy import export as export_lib
from deploy import runtimes
from engine.train import train
from engine.train import trainable
from search_spaces import nb201

# every op kind of NB201: 3x3 and 1x1 convs, a pool, skips, a three-term node sum (node 3)
ARCH = '|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
SMALL = nb201.NB201Config(C=4, N=1)


def _calibrated(arch=ARCH, config=SMALL, seed=0):
  """(the arch's `engine.train.trainable.Trainable` at config's C and N, an untrained calibrated
  int8 model of it, the images it was calibrated on)."""
  net = trainable.trainable('nb201', arch, C=config.C, N=config.N)
  rng = np.random.default_rng(seed)
  x = np.asarray(train._normalize(rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)))
  return net, trainable.init_calibrated(net, jax.random.key(seed), x), x


# node 1 has no live term, so the convs reading it output their bias: constants the export
# folds and ADD broadcasts (the graph path keeps them, `hardware.graph.prune(constants=True)`)
DEAD_NODE = '|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'


# node 1's outgoing edges are all none: pruned from the graph and the model
UNUSED_NODE = '|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|'


@pytest.mark.parametrize('arch', [ARCH, DEAD_NODE, UNUSED_NODE])
def test_tflm_and_litert_equal_the_integer_reference_bit_for_bit(arch):
  net, v, x = _calibrated(arch)
  model, ref = net.tflite(v, ''), net.integer(v)
  q = ref.quantize_input(x).astype(np.int8)
  want = ref.reference(x)
  np.testing.assert_array_equal(runtimes.tflm_run(model, q), want)
  np.testing.assert_array_equal(ref.logits(x), want)  # the compiled run, too
  # LiteRT's XNNPACK kernels round once (on a network this small): the single-rounding
  # reference, but for their float32 requantization's rare near-ties (on this draw of weights
  # 7 of ARCH's 320 logits, by at most 2 steps; with the weights the NB201 walk's own Flax
  # network drew before, none: the same model gives the same XNNPACK outputs)
  once = net.integer(v, rounding='single').reference(x)
  xnnpack = runtimes.litert_run(model, q)
  assert np.mean(xnnpack == once) >= 0.97
  assert np.max(np.abs(xnnpack.astype(int) - once)) <= 2
  # and the two roundings do differ on this network, so each check can fail
  assert not np.array_equal(want, once)
  # LiteRT's reference kernels: double rounding but for FULLY_CONNECTED
  lite_ref = net.integer(v, rounding='litert_reference')
  np.testing.assert_array_equal(runtimes.litert_run(model, q, 'reference'), lite_ref.logits(x))
  if arch == UNUSED_NODE:  # node 1's pool is gone: only the reductions' 2x2 and the global pool
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
    m = s.ModelT.InitFromPackedBuf(model, 0)
    pool = [i for i, c in enumerate(m.operatorCodes)
            if c.builtinCode == s.BuiltinOperator.AVERAGE_POOL_2D]
    assert sum(o.opcodeIndex in pool for o in m.subgraphs[0].operators) == 3


@pytest.mark.slow
def test_litert_reference_kernels_equal_their_reference_at_nb201_size():
  # C=16 N=5: XNNPACK's float32 requantization leaves the single-rounding reference on many
  # images, the reference kernels stay bit-exact with theirs (FULLY_CONNECTED rounding once,
  # which the TFLM rounding gets wrong on some images)
  config = nb201.NB201Config(C=16, N=5)
  net, v, x = _calibrated('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|'
                          'nor_conv_3x3~1|nor_conv_1x1~2|', config)
  model, ref = net.tflite(v, ''), net.integer(v)
  q = ref.quantize_input(x).astype(np.int8)
  want = net.integer(v, rounding='litert_reference').logits(x)
  np.testing.assert_array_equal(runtimes.litert_run(model, q, 'reference'), want)
  np.testing.assert_array_equal(runtimes.tflm_run(model, q), ref.logits(x))


def test_exported_model_uses_stock_builtins_only():
  from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
  net, v, _ = _calibrated()
  model = net.tflite(v, '')
  m = s.ModelT.InitFromPackedBuf(model, 0)
  names = {k: v for k, v in vars(s.BuiltinOperator).items() if not k.startswith('_')}
  used = {next(k for k, c in names.items() if c == code.builtinCode) for code in m.operatorCodes}
  assert used == {'CONV_2D', 'PAD', 'RELU', 'ADD', 'AVERAGE_POOL_2D', 'DEPTHWISE_CONV_2D',
                  'RESHAPE', 'FULLY_CONNECTED'}
  assert all(not code.customCode for code in m.operatorCodes)


@pytest.fixture(scope='module')
def trained_ptq(data_dir, tmp_path_factory):
  """A PTQ workdir of a briefly trained fp32 run (one per module: the export tests share it)."""
  tmp_path = tmp_path_factory.mktemp('trained')
  cfg = train.TrainConfig(arch=ARCH, C=4, N=1, epochs=1, batch_size=64, lr=0.05,
                          train_images=256, test_images=64, int_eval_images=0)
  ptq = dict(quant='ptq', epochs=0, init_from=str(tmp_path / 'fp32'), calib_batches=2)
  for config, workdir in ((cfg, 'fp32'), (train.TrainConfig(**{**cfg.__dict__, **ptq}), 'ptq')):
    # 4 steps learn nothing measurable on 64 test images, so the run may end in AtChance (no
    # results.json); its checkpoint, saved before the final evaluation, is all export reads,
    # and what these tests check (bit-exactness, sizes) does not depend on accuracy
    try:
      train.train(config, data_dir / 'cifar10', tmp_path / workdir, progress=False)
    except train.AtChance:
      pass
  return tmp_path / 'ptq'


def test_export_of_a_trained_run_is_bitexact_in_tflm(data_dir, trained_ptq):
  workdir = trained_ptq
  report = export_lib.export(workdir, data_dir / 'cifar10', verify_images=48, progress=False,
                             log=lambda *_: None)
  assert report['verified'] and not report['verification_failures']
  assert report['tflm']['bitexact_fraction'] == 1.0
  assert report['litert']['xnnpack']['bitexact_fraction'] == 1.0
  assert report['litert']['reference']['bitexact_fraction'] == 1.0
  assert report['tflm']['arena_total_bytes'] > report['tflm']['arena_head_bytes'] > 0
  # the hardware model's flash (without the runtime's code) against the file: within 5%
  assert abs(report['errors']['flash_without_code_vs_model_bytes']) < 0.05
  saved = json.loads((workdir / 'export.json').read_text())
  assert saved['model_bytes'] == (workdir / 'model.tflite').stat().st_size
  io = np.load(workdir / 'io_check.npz')
  assert io['inputs'].dtype == np.int8 and io['inputs'].shape == (48, 32, 32, 3)
  np.testing.assert_array_equal(runtimes.tflm_run((workdir / 'model.tflite').read_bytes(),
                                                  io['inputs']), io['tflm_logits'])


def test_an_fp32_run_is_refused_with_a_ptq_command_that_works(data_dir, trained_ptq, tmp_path):
  """Export refuses an fp32 run in one line that names the PTQ command; run as given (plus
  smaller evaluation sizes), it quantizes the run, and the result exports."""
  import shlex
  import subprocess
  fp32 = trained_ptq.parent / 'fp32'
  with pytest.raises(export_lib.ExportError, match='trained in fp32') as err:
    export_lib.export(fp32, data_dir / 'cifar10', progress=False, log=lambda *_: None)
  command = str(err.value).split('quantize it with ')[1]
  assert '\n' not in command and '<its training data>' not in command  # export's data dir
  assert command.endswith(' --workdir=<new dir>')
  argv = shlex.split(command.replace('<new dir>', str(tmp_path / 'ptq')))
  assert argv[:3] == ['python', '-m', 'experiments.run']
  out = subprocess.run([sys.executable, *argv[1:], '--test_images=64', '--int_eval_images=0',
                        '--calib_batches=2', '--progress=false'],
                       capture_output=True, text=True, timeout=600)
  # PTQ of a net trained 4 steps may end at chance (one line, its checkpoint written first),
  # never at a bad or missing flag
  assert out.returncode == 0 or 'chance' in out.stderr, out.stderr[-2000:]
  report = export_lib.export(tmp_path / 'ptq', data_dir / 'cifar10', verify_images=8,
                             progress=False, log=lambda *_: None)
  assert report['verified']


def test_export_flags_an_unfinished_run_and_checks_its_inputs_first(data_dir, trained_ptq,
                                                                      tmp_path):
  """A run without results.json (stopped at chance, diverged or killed) still exports and
  verifies bit for bit, but says its accuracies are not results; a bad --device fails before
  any file is written; data with another class count than the network's head is refused (a
  CIFAR run's config.json stores num_classes 0)."""
  import shutil
  workdir = tmp_path / 'ptq'
  shutil.copytree(trained_ptq, workdir)
  for name in ('results.json', 'model.tflite', 'export.json', 'export.txt'):
    (workdir / name).unlink(missing_ok=True)
  with pytest.raises(ValueError, match='stm32f74'):
    export_lib.export(workdir, data_dir / 'cifar10', verify_images=8, litert=False,
                      device='stm32f74', log=lambda *_: None)
  assert not (workdir / 'model.tflite').exists()
  three = tmp_path / 'three.npz'
  np.savez(three, x=np.zeros((6, 32, 32, 3), np.uint8), y=np.arange(6) % 3)
  with pytest.raises(export_lib.ExportError, match='has 3 classes but .* 10 outputs'):
    export_lib.export(workdir, three, verify_images=8, litert=False, log=lambda *_: None)
  lines = []
  report = export_lib.export(workdir, data_dir / 'cifar10', verify_images=8, litert=False,
                             device='nrf52840', log=lines.append)
  assert report['verified'] and report['training_finished'] is False
  assert lines[0].startswith(f'note: {workdir} holds no finished training')
  text = (workdir / 'export.txt').read_text()
  assert 'these test accuracies are not results' in text
  assert ': fits' in text or 'DOES NOT FIT' in text
  assert report['predicted']['fits_flash'] == (report['predicted']['flash_bytes'] <= 1024 * 1024)


def test_a_tflm_mismatch_fails_the_export_with_one_line(data_dir, trained_ptq, tmp_path,
                                                        monkeypatch, capsys):
  """Tampered golden vectors: the integer reference's logits are shifted on one image, so TFLite
  Micro (run for real) no longer equals them. The command exits 3 with one line; the report is
  still written and says which check failed."""
  import shutil
  from experiments import run
  workdir = tmp_path / 'ptq'
  shutil.copytree(trained_ptq, workdir)
  real = export_lib.reference_logits

  def tampered(*args, **kwargs):
    logits = np.array(real(*args, **kwargs))
    logits[0, 0] += 1 if logits[0, 0] < 127 else -1
    return logits

  monkeypatch.setattr(export_lib, 'reference_logits', tampered)
  code = run.cli(['prog', '--experiment=export', f'--workdir={workdir}',
                  f'--data_dir={data_dir / "cifar10"}', '--export_images=16', '--nolitert',
                  '--noprogress'])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 3 and len(lines) == 1, lines
  assert lines[0].startswith('error: verification failed: TFLite Micro output differs from the '
                             'integer reference on 1 of 16 images')
  saved = json.loads((workdir / 'export.json').read_text())
  assert saved['verified'] is False and saved['tflm']['mismatched_images'] == 1


def test_c_source_without_the_arm_toolchain_is_one_line_exit_2(trained_ptq):
  """No arm-none-eabi-gcc or qemu-system-arm on PATH: exit 2 before any work, naming the
  packages to install."""
  from cli import assert_one_line_error, run as cli_run
  r = cli_run('--experiment=export', f'--workdir={trained_ptq}', '--c_source',
              env_extra={'PATH': os.path.dirname(sys.executable)})
  assert_one_line_error(r, '--c_source needs the Arm toolchain and QEMU',
                        'apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi '
                        'qemu-system-arm')


def test_export_refuses_a_search_space_other_than_the_runs(trained_ptq, capsys):
  """export takes the space from the trained run; a --search_space that names another is an
  error, not ignored (the run's own space is accepted)."""
  from experiments import run
  code = run.cli(['zeronas', '--experiment=export', f'--workdir={trained_ptq}',
                  '--search_space=tinycnn'])
  err = capsys.readouterr().err
  assert code == 2 and err.strip() == (f'error: {trained_ptq} holds a nb201 run, not tinycnn; '
                                       f'pass --search_space=nb201 or leave it out (export '
                                       f"takes the run's)"), err


@pytest.mark.parametrize('make', ['missing', 'fp32', 'empty_ckpt'])
def test_bad_export_workdir_is_one_line_exit_2(tmp_path, make, capsys):
  """In this process (`experiments.run.cli`, as tests/cli_errors_test.py): a new process per
  case cost 8-9 s of start-up in the cold suite; the one-line contract is the same."""
  from experiments import run
  wd = tmp_path / 'run'
  if make != 'missing':
    wd.mkdir()
    cfg = train.TrainConfig(arch=ARCH, quant='fp32' if make == 'fp32' else 'qat')
    (wd / 'config.json').write_text(json.dumps(cfg.__dict__))
  code = run.cli(['zeronas', '--experiment=export', f'--workdir={wd}'])
  err = capsys.readouterr().err
  assert code == 2, err
  assert len(err.strip().splitlines()) == 1 and err.startswith('error: '), err


def test_disconnected_arch_is_refused():
  # its graph is the input alone (`hardware.graph.prune`): refused before training or export
  disconnected = '|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|'
  with pytest.raises(ValueError, match='disconnected') as err:
    trainable.trainable('nb201', disconnected, C=4, N=1)
  assert '\n' not in str(err.value)
  from deploy import graph_tflite
  from search_spaces.nb201 import space as nb201_space
  with pytest.raises(ValueError, match='disconnected'):
    graph_tflite.to_tflite(nb201_space.sized_lower(nb201.parse_arch_str(disconnected), C=4, N=1))


@pytest.mark.parametrize('arch', [ARCH, '|nor_conv_1x1~0|+|avg_pool_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|', DEAD_NODE])
def test_hardware_model_of_the_tflm_arena_matches_tflm(arch):
  from hardware import memory
  from search_spaces.nb201 import graph as nb201_graph
  config = nb201.NB201Config(C=8, N=2)
  net, v, x = _calibrated(arch, config)
  model, ref = net.tflite(v, ''), net.integer(v)
  measured = runtimes.tflm_arena(model, ref.quantize_input(x[:1]).astype(np.int8))
  predicted = memory.tflm_arena(nb201_graph.lower(nb201.parse_arch_str(arch), config))
  assert net.graph == nb201_graph.lower(nb201.parse_arch_str(arch), config, name=net.arch)
  assert predicted['planned'] == measured['head']  # the planner, replicated exactly
  assert abs(predicted['total'] / measured['total'] - 1) < 0.01


def test_an_emulator_or_compiler_failure_is_a_failed_verification():
  """A C project that does not build or run (deploy.mcu.BuildError) is a verification that could
  not pass: one line and exit 3 (`experiments.run.main`), not a traceback."""
  from deploy import mcu
  from experiments import common
  err = mcu.BuildError('qemu-system-arm exited with 1: qemu: fatal\n\nguest crashed\n')
  assert common.failed_verification_message(err) == (
      'verification failed: the generated C project could not be checked: qemu-system-arm '
      'exited with 1: qemu: fatal (its last line: guest crashed)')

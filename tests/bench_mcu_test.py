"""experiments/bench_mcu.py: which stored rows a rerun reuses. The emulation itself is tested in
c_source_test.py (test_bench_mcu_measures_an_arch_on_the_emulator); here `measure` is a stand-in
that counts its calls."""
import json
import subprocess
import sys

import cli

# run in its own process: bench_mcu's absl flags (e.g. --archs) would clash with
# experiments.run's in a shared pytest worker
_SCRIPT = r'''
import json, sys
from absl import flags
from deploy import mcu
from experiments import bench_mcu

calls = []
def fake_measure(net, target, device, workdir):
  calls.append(net.arch)
  return {'arch': net.arch, 'target': target, 'width': net.size.get('C', ''),
          'cells': net.size.get('N', ''),
          'instructions': 1000 * len(calls), 'emulator_s': 0.1, 'macs': 10 * len(calls),
          'flash_bytes': 5000, 'text': 1000, 'rodata': 4000, 'bss': 900, 'arena': 800,
          'stack': 100, 'per_kernel': json.dumps({'conv': [10, 25]})}
bench_mcu.measure = fake_measure
mcu.tools_missing = lambda target: None

out = {}
for name, args in json.loads(sys.argv[1]):
  calls.clear()
  flags.FLAGS(['bench_mcu', *args])
  try:
    bench_mcu.main(['bench_mcu'])
    out[name] = len(calls)
  except SystemExit as exit_:
    out[name] = f'exit {exit_.code}'
  finally:
    flags.FLAGS.unparse_flags()
print(json.dumps(out))
'''


def _runs(runs):
  result = subprocess.run([sys.executable, '-c', _SCRIPT, json.dumps(runs)], cwd=cli.REPO,
                          env=cli.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_a_rerun_reuses_only_rows_measured_with_the_same_settings(tmp_path):
  """Before, rows were matched by arch alone: a rerun with another --target, --width or
  --cells reprinted the rows measured with the first run's settings as its own."""
  out = f'--out={tmp_path / "bench.csv"}'
  base = ['--archs=3', '--width=4', '--cells=1', '--target=m4', out]
  done, _ = _runs([
      ('first', base),
      ('same again', base),
      ('another width', ['--archs=3', '--width=8', '--cells=1', '--target=m4', out]),
      ('another cells', ['--archs=3', '--width=4', '--cells=2', '--target=m4', out]),
      ('another target', ['--archs=3', '--width=4', '--cells=1', '--target=m7', out]),
      ('another device', base + ['--device=stm32f746']),  # predictions only: rows reused
  ])
  assert done == {'first': 3, 'same again': 0, 'another width': 3, 'another cells': 3,
                  'another target': 3, 'another device': 0}
  lines = (tmp_path / 'bench.csv').read_text().splitlines()
  assert lines[0].startswith('arch,target,width,cells,')
  assert len(lines) == 1 + 12


def test_a_csv_of_an_older_layout_is_refused_in_one_line(tmp_path):
  """Its rows carry no settings, so none could be told apart: one line, not reused."""
  path = tmp_path / 'old.csv'
  path.write_text('arch,instructions,emulator_s,macs,flash_bytes,text,rodata,bss,arena,stack,'
                  'per_kernel\n')
  done, stderr = _runs([('old', ['--archs=2', f'--out={path}'])])
  assert done == {'old': 'exit 2'}
  assert stderr.strip().splitlines()[-1] == (
      f'error: --out={path} has no target, width, cells column (an older bench_mcu wrote it); '
      f'add the settings its rows were measured with, or pass a new file')


def test_any_space_is_measured_and_a_width_off_nb201_is_refused(tmp_path):
  """It sampled NB201 archs only. A tinycnn run measures tinycnn archs with an int8 path (no
  swish), with blank width and cells."""
  out = tmp_path / 'tiny.csv'
  done, stderr = _runs([('tinycnn', ['--search_space=tinycnn', '--archs=3', f'--out={out}']),
                        ('again', ['--search_space=tinycnn', '--archs=3', f'--out={out}']),
                        ('width', ['--search_space=tinycnn', '--width=4', f'--out={out}'])])
  assert done == {'tinycnn': 3, 'again': 0, 'width': 'exit 2'}
  rows = out.read_text().splitlines()[1:]
  assert len(rows) == 3 and all('swish' not in r and ',m4,,,' in r for r in rows), rows
  assert 'tinycnn runs at its own size' in stderr.strip().splitlines()[-1]


_FAILING = r'''
import sys
from deploy import export, mcu
from experiments import bench_mcu
from absl import flags

def failing_measure(net, target, device, workdir):
  raise export.VerificationFailed(f'{net.arch}: the emulated logits differ from the integer '
                                  f'reference')
bench_mcu.measure = failing_measure
mcu.tools_missing = lambda target: None
flags.FLAGS(['bench_mcu', '--search_space=tinycnn', '--archs=2', f'--out={sys.argv[1]}'])
bench_mcu.main(['bench_mcu'])
'''


def test_a_failed_emulator_check_is_one_line_and_the_verification_exit_code(tmp_path):
  """It was a RuntimeError traceback (exit 1)."""
  result = subprocess.run([sys.executable, '-c', _FAILING, str(tmp_path / 'b.csv')],
                          cwd=cli.REPO, env=cli.subprocess_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 3, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('error: verification failed: f')
  assert 'differ from the integer reference' in result.stderr

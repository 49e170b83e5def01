"""experiments/validate_hardware.py: reading the MLPerf Tiny results file, and its one-line
errors for a damaged one. Its module runs in subprocesses: its absl flags (e.g. --seed) would
clash with experiments.run's in a shared pytest worker."""
import json
import subprocess
import sys

import cli

# each file given: its systems, or the ValueError's message
_LOAD = r'''
import json, pathlib, sys
from experiments import validate_hardware as vh
out = []
for path in sys.argv[1:]:
  try:
    out.append(vh.load_mlperf_systems(pathlib.Path(path)))
  except ValueError as err:
    out.append(str(err))
print(json.dumps(out))
'''

HEADER = 'version,submitter,system,core,clock_mhz,software_stack,benchmark,latency_ms,top1_pct'
ROWS = ['1.0,acme,Board-A,Cortex-M4,80,TensorFlow Lite for Microcontrollers,ic,300.5,85',
        '1.0,acme,Board-A,Cortex-M4,80,TensorFlow Lite for Microcontrollers,kws,90.25,90',
        '1.0,acme,Board-A,Cortex-M4,80,TensorFlow Lite for Microcontrollers,vww,120,80',
        '1.0,acme,Board-A,Cortex-M4,80,TensorFlow Lite for Microcontrollers,ad,5.5,']


def _write(folder, header=HEADER, rows=ROWS):
  path = folder / 'mlperf_tiny' / 'mlperf_tiny_cortex_m_only.csv'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('\n'.join([header, *rows]) + '\n')
  return path


def _load(*paths):
  result = subprocess.run([sys.executable, '-c', _LOAD, *map(str, paths)], cwd=cli.REPO,
                          env=cli.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_results_file_gives_its_systems(tmp_path):
  [[system]] = _load(_write(tmp_path))
  assert system['name'] == 'v1.0 acme Board-A' and system['clock_mhz'] == 80.0
  assert system['family'] == 'tflm'
  assert system['latency'] == {'ic': 300.5, 'kws': 90.25, 'vww': 120.0, 'ad': 5.5}


DAMAGED = {  # name: (header, rows, what the line says)
    'no latency column': (HEADER.replace(',latency_ms', ''),
                          [r.rsplit(',', 2)[0] + ',' + r.rsplit(',', 1)[1] for r in ROWS],
                          'lacks the column(s) latency_ms'),
    'renamed clock column': (HEADER.replace('clock_mhz', 'clock'), ROWS,
                             'lacks the column(s) clock_mhz'),
    'a word for a latency': (HEADER, [ROWS[0].replace('300.5', 'fast'), *ROWS[1:]],
                             "csv:2: latency_ms is 'fast', not a positive number"),
    'blank clock': (HEADER, [r.replace(',80,', ',,') for r in ROWS],
                    "csv:2: clock_mhz is '', not a positive"),
    'too few benchmarks': (HEADER, ROWS[:2], 'has no system with latencies of 3 or more'),
    'empty file': ('', [], 'lacks the column(s) version'),
}


def test_a_damaged_results_file_is_a_value_error_naming_it(tmp_path):
  paths = {name: _write(tmp_path / str(i), header, rows)
           for i, (name, (header, rows, _)) in enumerate(DAMAGED.items())}
  for (name, (_, _, fragment)), message in zip(DAMAGED.items(), _load(*paths.values())):
    assert isinstance(message, str), (name, message)
    assert str(paths[name]) in message and fragment in message, (name, message)
    assert 'ZERONAS_DATA_DIR' in message, name


def test_the_tool_given_a_damaged_results_file_says_so_in_one_line(tmp_path):
  """It ended in a KeyError traceback (a missing column) or 'could not convert string to
  float' naming no file."""
  path = _write(tmp_path, HEADER.replace(',latency_ms', ''), ROWS)
  result = subprocess.run([sys.executable, '-m', 'experiments.validate_hardware',
                           '--part=mlperf'], cwd=cli.REPO, capture_output=True, text=True,
                          env=cli.subprocess_env(ZERONAS_DATA_DIR=str(tmp_path)), timeout=600)
  cli.assert_one_line_error(result, str(path), 'latency_ms')


_READ_LATENCIES = r'''
import pathlib, sys
from experiments import validate_hardware as vh
for path in sys.argv[1:]:
  try:
    vh._read_columns(pathlib.Path(path), ['edgegpu_latency'])
    print('read')
  except ValueError as err:
    print(err)
'''


def test_a_damaged_latency_file_is_a_value_error_naming_it(tmp_path):
  """A missing column ended in a KeyError traceback."""
  good = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|'
  files = {'no arch_str column': 'arch,edgegpu_latency\nx,1.5\n',
           'a word for a latency': f'arch_str,edgegpu_latency\n{good},fast\n',
           'no rows': 'arch_str,edgegpu_latency\n',
           'fine': f'arch_str,edgegpu_latency\n{good},1.5\n'}
  paths = []
  for i, text in enumerate(files.values()):
    paths.append(tmp_path / f'{i}.csv')
    paths[-1].write_text(text)
  result = subprocess.run([sys.executable, '-c', _READ_LATENCIES, *map(str, paths)],
                          cwd=cli.REPO, env=cli.subprocess_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  for (name, _), path, line in zip(files.items(), paths, lines):
    if name == 'fine':
      assert line == 'read'
    else:
      assert line.startswith(f'cannot read {path}') and 'ZERONAS_DATA_DIR' in line, (name, line)

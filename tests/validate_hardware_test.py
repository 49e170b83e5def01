"""experiments/validate_hardware.py: reading the MLPerf Tiny results file, and its one-line
errors for a damaged one."""
import subprocess
import sys

import pytest

import cli
from experiments import validate_hardware as vh

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


def test_a_results_file_gives_its_systems(tmp_path):
  [system] = vh.load_mlperf_systems(_write(tmp_path))
  assert system['name'] == 'v1.0 acme Board-A' and system['clock_mhz'] == 80.0
  assert system['family'] == 'tflm'
  assert system['latency'] == {'ic': 300.5, 'kws': 90.25, 'vww': 120.0, 'ad': 5.5}


@pytest.mark.parametrize('header, rows, fragment', [
    (HEADER.replace(',latency_ms', ''), [r.rsplit(',', 2)[0] + ',' + r.rsplit(',', 1)[1]
                                         for r in ROWS], 'lacks the column(s) latency_ms'),
    (HEADER.replace('clock_mhz', 'clock'), ROWS, 'lacks the column(s) clock_mhz'),
    (HEADER, [ROWS[0].replace('300.5', 'fast'), *ROWS[1:]],
     "csv:2: latency_ms is 'fast', not a positive number"),
    (HEADER, [r.replace(',80,', ',,') for r in ROWS], "csv:2: clock_mhz is '', not a positive"),
    (HEADER, ROWS[:2], 'has no system with latencies of 3 or more'),
    ('', [], 'lacks the column(s) version'),
], ids=['no latency column', 'renamed clock column', 'a word for a latency', 'blank clock',
        'too few benchmarks', 'empty file'])
def test_a_damaged_results_file_is_a_value_error_naming_it(tmp_path, header, rows, fragment):
  path = _write(tmp_path, header, rows)
  with pytest.raises(ValueError) as err:
    vh.load_mlperf_systems(path)
  assert str(path) in str(err.value) and fragment in str(err.value), err.value
  assert 'ZERONAS_DATA_DIR' in str(err.value)


def test_the_tool_given_a_damaged_results_file_says_so_in_one_line(tmp_path):
  """It ended in a KeyError traceback (a missing column) or 'could not convert string to
  float' naming no file."""
  path = _write(tmp_path, HEADER.replace(',latency_ms', ''), ROWS)
  result = subprocess.run([sys.executable, '-m', 'experiments.validate_hardware',
                           '--part=mlperf'], cwd=cli.REPO, capture_output=True, text=True,
                          env=cli.subprocess_env(ZERONAS_DATA_DIR=str(tmp_path)), timeout=600)
  cli.assert_one_line_error(result, str(path), 'latency_ms')

"""`python -m experiments.run --experiment=cost`: cost CSVs per search space, the device
catalog, and one-line errors for unknown devices and runtimes."""
import csv

import pytest

import cli

ARCH = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
COST = ['sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params', 'fits']


def _run(*args, env_extra=None):
  return cli.run('--experiment=cost', *args, env_extra=env_extra)


def _read(path):
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def _assert_plausible(row, sram_kb=320, flash_kb=1024):
  sram, flash = int(row['sram_bytes']), int(row['flash_bytes'])
  lat, energy = float(row['latency_ms']), float(row['energy_mj'])
  macs, params = int(row['macs']), int(row['params'])
  assert 0 < sram and 0 < params < flash  # int8 weights + biases + runtime code > params
  assert lat > 0 and energy > 0 and macs > 0
  assert energy == pytest.approx(lat * 330 / 1e3, rel=1e-4)  # stm32f746: 330 mW active
  assert row['fits'] == str(int(sram <= sram_kb * 1024 and flash <= flash_kb * 1024))


def test_nb201_arch_string(tmp_path, data_dir):
  out = tmp_path / 'cost.csv'
  result = _run('--search_space=nb201', f'--archs={ARCH}', '--device=stm32f746',
                '--runtime=cmsis-nn', f'--output={out}', '--noprogress')
  assert result.returncode == 0, result.stderr
  header, rows = _read(out)
  assert header == ['arch_index', 'arch_str', *COST]
  assert len(rows) == 1
  row = rows[0]
  assert row['arch_index'] == '1' and row['arch_str'] == ARCH  # arch 1 of the NB201 table
  _assert_plausible(row)
  assert row['fits'] == '1'
  # the CSV holds the hardware model's figures for the lowered arch, not just plausible ones
  import hardware
  from search_spaces import nb201
  from search_spaces.nb201 import graph as nb201_graph
  want = hardware.cost(nb201_graph.lower(nb201.parse_arch_str(ARCH), nb201.NB201Config()),
                       device='stm32f746', runtime='cmsis-nn')
  for key in ('sram_bytes', 'flash_bytes', 'macs', 'params'):
    assert int(row[key]) == round(float(want[key])), key
  assert float(row['latency_ms']) == pytest.approx(float(want['latency_ms']), rel=1e-5)
  assert '1 nb201 archs on stm32f746' in result.stdout and 'cmsis-nn: 1 fit' in result.stdout


def test_nb201_without_table_leaves_arch_index_blank(tmp_path):
  out = tmp_path / 'cost.csv'
  result = _run('--archs=random:3', '--runtime=tflm', f'--output={out}', '--noprogress',
                env_extra={'ZERONAS_DATA_DIR': str(tmp_path / 'no_data')})
  assert result.returncode == 0, result.stderr
  _, rows = _read(out)
  assert len(rows) == 3 and all(r['arch_index'] == '' for r in rows)
  assert len({r['arch_str'] for r in rows}) == 3
  assert 'arch_index left blank' in result.stdout


def test_mlperf_tiny_default_is_all_four(tmp_path):
  out = tmp_path / 'cost.csv'
  result = _run('--search_space=mlperf_tiny', f'--output={out}')
  assert result.returncode == 0, result.stderr
  header, rows = _read(out)
  assert header == ['arch', *COST]
  assert [r['arch'] for r in rows] == ['ic', 'kws', 'vww', 'ad']
  for row in rows:
    _assert_plausible(row)
  assert '4 mlperf_tiny archs' in result.stdout
  # random:64, given or the default, cannot sample four fixed models: a note says it means all
  assert 'note: --archs=random:64 (the default) costs all 4 MLPerf Tiny models' in result.stdout


def test_mlperf_tiny_subset_matches_all(tmp_path):
  out_all, out_two = tmp_path / 'all.csv', tmp_path / 'two.csv'
  assert _run('--search_space=mlperf_tiny', '--archs=all', f'--output={out_all}').returncode == 0
  assert _run('--search_space=mlperf_tiny', '--archs=kws,ic',
              f'--output={out_two}').returncode == 0
  by_name = {r['arch']: r for r in _read(out_all)[1]}
  two = _read(out_two)[1]
  assert [r['arch'] for r in two] == ['kws', 'ic']
  assert all(r == by_name[r['arch']] for r in two)


def test_tinycnn_random(tmp_path):
  out = tmp_path / 'cost.csv'
  result = _run('--search_space=tinycnn', '--archs=random:5', '--seed=3', f'--output={out}')
  assert result.returncode == 0, result.stderr
  header, rows = _read(out)
  assert header == ['arch', *COST]
  assert len(rows) == 5 and len({r['arch'] for r in rows}) == 5
  for row in rows:
    assert row['arch'].endswith(('-max', '-avg'))
    _assert_plausible(row)


def test_tinycnn_encodings(tmp_path):
  out = tmp_path / 'cost.csv'
  result = _run('--search_space=tinycnn', '--archs=f8k3-relu-max,f32k5-f32k5-f32k5-swish-avg',
                f'--output={out}')
  assert result.returncode == 0, result.stderr
  _, rows = _read(out)
  small, big = rows
  assert int(small['params']) < int(big['params'])
  assert float(small['latency_ms']) < float(big['latency_ms'])


def test_list_devices_prints_catalog():
  result = _run('--list_devices')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].split()[:2] == ['device', 'core']
  row = next(l for l in lines if l.startswith('stm32f746'))
  assert row.split()[1:5] == ['cortex-m7', '216', '320', '1024']
  assert 'cmsis-nn' in result.stdout and 'rp2040' in result.stdout


@pytest.mark.parametrize('args, fragments', [
    (['--device=stm32f999'], ["unknown device 'stm32f999'", 'stm32f746', 'rp2040']),
    (['--runtime=onnx'], ["unknown runtime 'onnx'", 'cmsis-nn', 'tflm', 'tinyengine']),
    (['--search_space=mlperf_tiny', '--archs=ic,zz'], ["'zz'", 'ic, kws, vww, ad']),
    # the --archs forms of the other spaces: named as not taken here
    (['--search_space=mlperf_tiny', '--archs=random:8'],
     ['--archs=random:8', 'takes all or model names', 'not random:N, a file or an index']),
    (['--search_space=mlperf_tiny', '--archs=3'], ['--archs=3', 'not random:N']),
    (['--search_space=tinycnn', '--archs=random:0'], ['random:N']),
    (['--search_space=tinycnn', '--archs=f8k9-relu-max'], ['f16k3-f32k5-relu-max']),
    (['--search_space=mbv2', '--archs=random:0'], ['random:N']),
])
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, args, fragments):
  out = tmp_path / 'x.csv'
  result = _run(f'--output={out}', '--noprogress', *args)
  cli.assert_one_line_error(result, *fragments)
  assert not out.exists()


def test_disconnected_nb201_archs_are_noted(tmp_path, capsys):
  """They 'fit' at the stem's and head's cost alone: the run says so (in this process)."""
  from experiments import run
  cut = '|none~0|+|none~0|none~1|+|none~0|none~1|none~2|'
  assert run.cli(['zeronas', '--experiment=cost', f'--archs={cut}', '--noprogress',
                  f'--output={tmp_path / "c.csv"}']) == 0
  assert 'note: 1 of the 1 archs have no path from input to output' in capsys.readouterr().out

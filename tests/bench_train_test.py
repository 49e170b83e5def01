"""experiments/bench_train.py: times the training step of any space's arch, through the network
the trainer trains (`engine.train.trainable`)."""
import subprocess
import sys

import cli


def _bench(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.bench_train', *args], cwd=cli.REPO,
                        env=cli.subprocess_env(), capture_output=True, text=True, timeout=600)


def test_a_plug_in_space_arch_is_timed_in_both_modes():
  """It timed NB201 archs only (NB201's own Flax network, named directly)."""
  result = _bench('--search_space=tinycnn', '--arch=f8k3-relu-max', '--batch=8', '--steps=1')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith('tinycnn f8k3-relu-max batch 8')
  assert [l.split(':')[0].strip() for l in lines[1:3]] == ['fp32', 'quant']
  assert all('images/s' in l for l in lines[1:3])


def test_a_width_on_a_space_without_one_is_one_line():
  cli.assert_one_line_error(_bench('--search_space=tinycnn', '--arch=f8k3-relu-max',
                                   '--width=4'), '--width', 'tinycnn trains at its own size')

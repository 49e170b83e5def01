"""Shared by the command-line tests: run `python -m experiments.run` and check its errors."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(*args, env_extra=None):
  """The entry point in a subprocess on CPU, without the tests' forced host devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env_extra or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.run', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, *fragments):
  """Exit code 2 and exactly one stderr line, `error: ...`, containing every fragment."""
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]

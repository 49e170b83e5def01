"""Shared by the command-line tests: run `python -m experiments.run` and check its errors."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


# The tests' cheap compile settings (conftest.py), without their forced host devices: a user's
# run has one CPU device. These flags cut XLA's compile time; results agree within float rounding.
SUBPROCESS_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                        '--xla_llvm_disable_expensive_passes=true '
                        '--xla_cpu_use_fusion_emitters=false')


def run(*args, env_extra=None):
  """The entry point in a subprocess on CPU, one device, cheap compiles."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env_extra or {}))
  env['XLA_FLAGS'] = SUBPROCESS_XLA_FLAGS
  return subprocess.run([sys.executable, '-m', 'experiments.run', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, *fragments):
  """Exit code 2 and exactly one stderr line, `error: ...`, containing every fragment."""
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


def call_main(main, *args):
  """A companion tool's absl `main` in this process with these command-line flags: its return
  value, or its exit code when it exits. Flags are reset afterwards."""
  from absl import flags
  flags.FLAGS(['prog', *args])
  try:
    return main(['prog'])
  except SystemExit as exit_:
    return exit_.code
  finally:
    flags.FLAGS.unparse_flags()

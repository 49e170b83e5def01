"""Shared by the command-line tests: run `python -m experiments.run` and check its errors."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


# The tests' cheap compile settings (in-process through conftest.py, and in the command-line
# subprocesses). They cut XLA's compile time; results agree within float rounding.
# LLVM optimisation level 0: tests compile many small programs once each, and at the default
# level XLA:CPU spends ~3x longer compiling them (50 s -> 17 s for one tiny NTK) than running them.
# Skipping LLVM's expensive passes takes another ~13% off (measured on a scorer test). XLA:CPU's
# older (non-MLIR) fusion emitters compile these programs' thousands of small fusions far faster:
# scoring, NTK and zero-cost tests 226-231 s -> 123-144 s with no cache (BENCHMARKS.md).
CHEAP_COMPILE_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                           '--xla_llvm_disable_expensive_passes=true '
                           '--xla_cpu_use_fusion_emitters=false')


def subprocess_env(**extra) -> dict:
  """The environment of a command-line subprocess: CPU, one device (as a user's run: no forced
  host devices), the cheap compile settings; `extra` variables on top."""
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=CHEAP_COMPILE_XLA_FLAGS, **extra)


def run(*args, env_extra=None):
  """The entry point in a subprocess on CPU, one device, cheap compiles."""
  return subprocess.run([sys.executable, '-m', 'experiments.run', *args], cwd=REPO,
                        env=subprocess_env(**(env_extra or {})), capture_output=True, text=True,
                        timeout=600)


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

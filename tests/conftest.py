"""Shared test fixtures: the third-party data directory and small settings."""
import os
import pathlib

import cli  # imports no JAX: subprocess helpers and flag strings

# Several host devices so sharding is exercised on CPU, and the tests' cheap compile settings
# (cli.CHEAP_COMPILE_XLA_FLAGS, which the command-line subprocesses use too); must precede JAX's
# start-up.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4 '
                      + cli.CHEAP_COMPILE_XLA_FLAGS)
# The engine's own XLA:CPU settings (engine/xla_cpu.py), as the entry points apply them.
from engine import xla_cpu  # noqa: E402

xla_cpu.apply()

import jax  # noqa: E402
import pytest  # noqa: E402

# A persistent XLA cache shared by the test processes (pytest-xdist workers) and later runs: the
# same programs compiled by another worker or test are loaded, not compiled again. Empty
# $ZERONAS_TEST_JAX_CACHE turns it off.
_CACHE = os.environ.get('ZERONAS_TEST_JAX_CACHE',
                        str(pathlib.Path.home() / '.cache' / 'zeronas-mcu' / 'jax-tests'))
if _CACHE:
  jax.config.update('jax_compilation_cache_dir', _CACHE)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from search_spaces import nb201  # noqa: E402


@pytest.fixture(scope='session')
def data_dir() -> pathlib.Path:
  """../shared/data (or $ZERONAS_DATA_DIR). Missing data fails in CI and skips elsewhere."""
  path = nb201.data_dir()
  if not (path / 'nb201').is_dir():
    message = f'third-party data not found at {path}; set ZERONAS_DATA_DIR'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope='session')
def arch_table(data_dir):
  return nb201.load_arch_index(str(data_dir / 'nb201' / 'nb201_test_acc_200ep_nats.csv'))

"""engine/xla_cpu.py: the settings are added once, and a user's own setting wins."""
import os

from engine import xla_cpu

YNN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
OPT = '--xla_backend_optimization_level=1'


def test_adds_the_settings_once(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert xla_cpu.apply()
  flags = os.environ['XLA_FLAGS']
  assert flags == f'--xla_force_host_platform_device_count=2 {YNN} {OPT}'
  assert not xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == flags


def test_the_users_setting_wins(monkeypatch):
  mine = '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'
  monkeypatch.setenv('XLA_FLAGS', mine)
  assert xla_cpu.apply()  # only the option the user did not name is added
  assert os.environ['XLA_FLAGS'] == f'{mine} {OPT}'
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0 ' + mine)
  assert not xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == '--xla_backend_optimization_level=0 ' + mine


def test_starts_from_no_flags(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == f'{YNN} {OPT}'


def test_importing_changes_nothing_and_the_entry_point_applies_the_settings():
  """`import engine` / `import experiments.run` leave $XLA_FLAGS alone (no import side
  effects); the entry points' flag parsing adds the settings before JAX starts its backend."""
  import subprocess
  import sys
  code = ('import os; os.environ.pop("XLA_FLAGS", None)\n'
          'import engine, experiments.run\n'
          'print(os.environ.get("XLA_FLAGS"))\n'
          'from experiments import common; common.parse_flags_or_fail(["run"])\n'
          'from jax._src import xla_bridge\n'
          'print(os.environ.get("XLA_FLAGS"), bool(xla_bridge._backends))\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  before, after = out.stdout.strip().splitlines()
  assert before == 'None'
  assert YNN in after and after.endswith('False')  # set, and no backend had started yet


def test_nothing_is_added_on_an_accelerator_run(monkeypatch):
  """The GPU path: $JAX_PLATFORMS naming a GPU first, or an installed GPU plugin with it unset,
  gets no CPU settings; an explicit cpu gets them whatever is installed."""
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert xla_cpu.accelerator_expected() and not xla_cpu.apply()
  assert 'XLA_FLAGS' not in os.environ
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.setattr(xla_cpu.importlib.metadata, 'entry_points',
                      lambda group: ['jax_cuda12_plugin'] if group == 'jax_plugins' else [])
  assert xla_cpu.accelerator_expected() and not xla_cpu.apply()
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not xla_cpu.accelerator_expected() and xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == f'{YNN} {OPT}'


def _blas_threads_after_start_up(env_extra: dict) -> list[int]:
  """The thread counts of every BLAS loaded in an entry point's process (scipy's, which JAX's
  LAPACK calls use, loaded before the flags are parsed, and numpy's) after an SVD."""
  import json
  import subprocess
  import sys
  code = ('import scipy.linalg, threadpoolctl\n'
          'from experiments import common; common.parse_flags_or_fail(["run"])\n'
          'import jax.numpy as jnp; jnp.linalg.svd(jnp.ones((4, 3))).S.block_until_ready()\n'
          'import json; print(json.dumps([i["num_threads"] for i in '
          'threadpoolctl.threadpool_info() if i["user_api"] == "blas"]))\n')
  env = {k: v for k, v in os.environ.items() if k not in xla_cpu._THREAD_VARIABLES}
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**env, **env_extra})
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_blas_runs_on_one_thread_unless_the_user_chose():
  """Libraries loaded before the flags are parsed (scipy's OpenBLAS here) and after get one
  thread; a user's $OPENBLAS_NUM_THREADS is kept."""
  threads = _blas_threads_after_start_up({})
  assert len(threads) >= 2 and set(threads) == {xla_cpu.BLAS_THREADS}, threads
  assert set(_blas_threads_after_start_up({'OPENBLAS_NUM_THREADS': '2'})) == {2}

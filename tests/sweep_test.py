"""engine/sweep.py: the resumable chunked sweep on one process or several: each chunk computed
once by its owner, a crash resumes at the missing chunks, two processes on jax.distributed write
the rows of one, and bad multi-process settings are one line and exit 2."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cli
from engine import sweep
from experiments import run as run_lib


def _io(calls):
  """(work, save, load) over items 0..n-1 whose value is item**2, counting `work` per start."""
  def work(start, stop, advance):
    calls.append(start)
    advance(stop - start)
    return np.arange(start, stop) ** 2

  def save(path, start, stop, part):
    np.save(path.with_suffix('.tmp.npy'), part)
    os.replace(path.with_suffix('.tmp.npy'), path.with_suffix('.npy'))

  def load(path, start, stop):
    try:
      return np.load(path.with_suffix('.npy'))
    except OSError:
      return None
  return work, save, load


def test_shares_are_disjoint_and_cover_every_chunk():
  shares = [sweep.Share(i, 3) for i in range(3)]
  owners = [[s.process_id for s in shares if s.owns(c)] for c in range(10)]
  assert owners == [[c % 3] for c in range(10)]
  assert [s.writes_outputs for s in shares] == [True, False, False]


def test_two_shares_compute_each_chunk_once_and_return_the_same_parts(tmp_path, monkeypatch):
  monkeypatch.setattr(sweep, 'POLL_S', 0.01)
  calls = {0: [], 1: []}
  out = {}

  def one(pid):
    work, save, load = _io(calls[pid])
    out[pid] = sweep.run(23, 5, tmp_path, work, save, load, sweep.Share(pid, 2), progress=False,
                         log=lambda *_: None)

  threads = [threading.Thread(target=one, args=(pid,)) for pid in (1, 0)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(30)
  assert calls == {0: [0, 10, 20], 1: [5, 15]}
  want = np.arange(23) ** 2
  for pid in (0, 1):
    np.testing.assert_array_equal(np.concatenate(out[pid]), want)


def test_a_crash_resumes_at_the_missing_chunks(tmp_path, monkeypatch):
  calls = []
  work, save, load = _io(calls)
  monkeypatch.setenv(sweep.CRASH_ENV, '2')
  with pytest.raises(sweep.SimulatedCrash):
    sweep.run(12, 4, tmp_path, work, save, load, progress=False)
  monkeypatch.delenv(sweep.CRASH_ENV)
  logged = []
  parts = sweep.run(12, 4, tmp_path, work, save, load, progress=False, log=logged.append)
  assert calls == [0, 4, 8] and logged == ['resuming: 2 of 3 chunks (8 items) already done']
  np.testing.assert_array_equal(np.concatenate(parts), np.arange(12) ** 2)
  assert [p is not None for p in sweep.finished(12, 4, tmp_path, load)] == [True] * 3


@pytest.mark.parametrize('kwargs, fragment', [
    (dict(num_processes=2, process_id=2, coordinator_address='h:1'),
     '--process_id=2 is out of range for --num_processes=2; use 0..1'),
    (dict(num_processes=2, process_id=0), '--num_processes=2 needs --coordinator_address'),
    (dict(num_processes=2, process_id=1, coordinator_address='node0'), 'is not host:port'),
    (dict(num_processes=2, process_id=1, coordinator_address='node0:70000'), 'is not host:port'),
    (dict(num_processes=0), '--num_processes must be at least 1'),
])
def test_bad_multi_process_settings_are_one_error(kwargs, fragment):
  with pytest.raises(sweep.DistributedError, match=fragment):
    sweep.connect(**kwargs)


@pytest.mark.parametrize('args, fragment', [
    (['--num_processes=2', '--process_id=5', '--coordinator_address=localhost:12355'],
     'out of range'),
    (['--num_processes=2', '--process_id=1', '--coordinator_address=localhost'],
     'is not host:port'),
])
def test_bad_multi_process_flags_are_one_line_and_exit_2(args, fragment, tmp_path, capsys):
  code = run_lib.cli(['prog', '--experiment=correlate', '--archs=random:4', '--proxies=params',
                      f'--workdir={tmp_path}', '--noprogress', *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and fragment in err[0], err


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# nwot counts units that carry nothing (registry `counts_dead_units`), so every one of the 256
# archs runs (8 chunks of 32) rather than one per network; correlate_test holds that path.
CORRELATE = ['--experiment=correlate', '--archs=random:256', '--proxies=params,flops,nwot',
             '--zc_width=4', '--zc_cells=1', '--zc_batch=8', '--chunk_size=32',
             '--batch_candidates=32', '--noprogress']


def _processes(workdir, n, port, env):
  return [subprocess.Popen([sys.executable, '-m', 'experiments.run', *CORRELATE,
                            f'--workdir={workdir}', f'--num_processes={n}', f'--process_id={i}',
                            f'--coordinator_address=127.0.0.1:{port}'],
                           cwd=cli.REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in range(n)]


def _env():
  env = cli.subprocess_env()
  env.pop('ZERONAS_JAX_CACHE', None)
  return env


@pytest.fixture(scope='module')
def one_process(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('one') / 'out'
  result = cli.run(*CORRELATE, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  return workdir


def test_two_processes_write_the_rows_of_one(one_process, tmp_path):
  """256 NB201 archs (params, flops, nwot) in 8 chunks: two processes on jax.distributed
  (CPU) each score 4 chunks, and process 0's outputs equal a one-process run's byte for byte."""
  procs = _processes(tmp_path / 'two', 2, _free_port(), _env())
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr
  assert 'process 1 of 2: every chunk is on disk' in outs[1][0]
  assert 'scored 128 archs' in outs[0][0] and 'scored 128 archs' in outs[1][0]
  for name in ('scores.csv', 'correlation.md', 'manifest.json'):
    assert (tmp_path / 'two' / name).read_text() == (one_process / name).read_text(), name


@pytest.mark.slow
def test_a_killed_process_and_a_restart_lose_and_duplicate_nothing(one_process, tmp_path):
  """SIGKILL process 1 once it wrote a chunk: jax.distributed ends the job (process 0 too, or it
  waits forever for that share: it is then killed). The same two commands again resume: each
  process scores only its missing chunks, and the outputs equal the one-process run's."""
  workdir = tmp_path / 'two'
  procs = _processes(workdir, 2, _free_port(), _env())
  chunk_1 = workdir / 'chunks' / 'chunk_00001.npz'
  deadline = time.monotonic() + 300
  while not chunk_1.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  try:
    procs[0].wait(timeout=200)  # the coordinator aborts it after the heartbeat timeout ...
  except subprocess.TimeoutExpired:
    procs[0].send_signal(signal.SIGKILL)  # ... or the user does
    procs[0].wait()
  for p in procs:
    p.communicate()
  before = sorted(p.name for p in (workdir / 'chunks').glob('*.npz'))
  assert 'chunk_00001.npz' in before and len(before) < 8 and not (workdir / 'scores.csv').exists()

  procs = _processes(workdir, 2, _free_port(), _env())
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1] + outs[1][1]
  for pid, (stdout, _) in enumerate(outs):
    had = [n for n in before if int(n[6:11]) % 2 == pid]
    if had:
      assert f'resuming: {len(had)} of 4 chunks ({32 * len(had)} archs)' in stdout
    assert f'scored {32 * (4 - len(had))} archs' in stdout or len(had) == 4
  for name in ('scores.csv', 'correlation.md'):
    assert (workdir / name).read_text() == (one_process / name).read_text(), name


def test_score_with_a_workdir_resumes_after_a_crash_to_the_one_pass_csv(tmp_path, monkeypatch):
  """--experiment=score on mbv2 (archs of several groups) with --workdir: a crash after the
  first chunk, then the same command, writes the CSV of one pass without --workdir."""
  args = ['prog', '--experiment=score', '--search_space=mbv2', '--archs=random:10',
          '--proxies=params,flops', '--noprogress']
  assert run_lib.cli(args + [f'--output={tmp_path / "one.csv"}']) == 0
  monkeypatch.setenv(sweep.CRASH_ENV, '1')
  with pytest.raises(sweep.SimulatedCrash):
    run_lib.cli(args + [f'--workdir={tmp_path / "w"}', '--chunk_size=4'])
  monkeypatch.delenv(sweep.CRASH_ENV)
  assert sorted(p.name for p in (tmp_path / 'w' / 'chunks').iterdir()) == ['chunk_00000.npz']
  assert run_lib.cli(args + [f'--workdir={tmp_path / "w"}', '--chunk_size=4']) == 0
  assert (tmp_path / 'w' / 'scores.csv').read_text() == (tmp_path / 'one.csv').read_text()
  assert len((tmp_path / 'one.csv').read_text().splitlines()) == 11
  # another setting into the same workdir is refused in one line
  assert run_lib.cli(args[:-2] + ['--proxies=params', f'--workdir={tmp_path / "w"}',
                                  '--chunk_size=4', '--noprogress']) == 2


@pytest.mark.slow  # (18 s; correlate's two-process test covers the same sweep in the default suite)
def test_two_processes_score_the_rows_of_one(tmp_path):
  """--experiment=score over two processes on jax.distributed: the CSV of one process."""
  base = ['--experiment=score', '--search_space=mbv2', '--archs=random:24',
          '--proxies=params,flops', '--chunk_size=5', '--noprogress']
  one = cli.run(*base, f'--output={tmp_path / "one.csv"}')
  assert one.returncode == 0, one.stderr
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-m', 'experiments.run', *base,
                             f'--workdir={tmp_path / "two"}', '--num_processes=2',
                             f'--process_id={i}', f'--coordinator_address=127.0.0.1:{port}'],
                            cwd=cli.REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert (tmp_path / 'two' / 'scores.csv').read_text() == (tmp_path / 'one.csv').read_text()

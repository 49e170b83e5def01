"""`--experiment=correlate`: its outputs, resuming after a crash or a kill, a mismatched resume,
chunk-independent scores; and the aggregate columns of `--experiment=score`.

The fast tests use the analytic proxies (no compile); the chunk-invariance test compiles only a
small linear-region network, and the real SIGKILL test is marked slow."""
import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

import cli
from engine.train import data as data_lib
from engine import proxies, scoring
from experiments import common, correlate, score
from experiments import run as run_lib
from search_spaces import registry

PROXIES = 'params,flops,agg:params+flops:logrank,agg:flops+params'
OUTPUTS = ('manifest.json', 'scores.csv', 'correlation.md', 'correlation.json', 'scatter.png',
           'ranks.png', 'agreement.md', 'agreement.json')


def _reference(data_dir):
  return data_dir / 'nb201' / 'nb201_zc_proxies_subset_naslib.csv'


def _benchmark(data_dir):
  return data_dir / 'nb201' / 'nb201_test_acc_200ep_nats.csv'


@pytest.fixture(scope='module')
def archs_file(tmp_path_factory, data_dir):
  """12 CIFAR-10 archs of the reference file, then one that is not in it."""
  with _reference(data_dir).open(newline='') as fh:
    indices = [r['arch_index'] for r in csv.DictReader(fh) if r['dataset'] == 'cifar10'][:12]
  path = tmp_path_factory.mktemp('archs') / 'archs.txt'
  path.write_text('\n'.join(indices + ['5']) + '\n')
  return path


def _flags(workdir, archs_file, data_dir, **extra):
  """(config, workdir) of `--experiment=correlate`, for calling correlate.run in-process."""
  values = dict(dataset='cifar10', archs=str(archs_file), proxies=PROXIES, seed=0,
                benchmark_file=str(_benchmark(data_dir)), reference_file=str(_reference(data_dir)),
                chunk_size=5, batch_candidates=4, progress=False)
  values.update(extra)
  return run_lib.make_config('correlate', **values), str(workdir)


def _cli_args(f, workdir):
  return ['--experiment=correlate', f'--dataset={f.dataset}', f'--archs={f.archs}',
          f'--proxies={f.proxies}', f'--seed={f.seed}', f'--benchmark_file={f.benchmark_file}',
          f'--reference_file={f.reference_file}', f'--workdir={workdir}',
          f'--chunk_size={f.chunk_size}', f'--batch_candidates={f.batch_candidates}',
          '--noprogress']


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, archs_file, data_dir):
  """One uninterrupted command-line run: 13 archs in chunks of 5, 5, 3."""
  f, workdir = _flags(tmp_path_factory.mktemp('full') / 'out', archs_file, data_dir)
  result = cli.run(*_cli_args(f, workdir))
  assert result.returncode == 0, result.stderr
  return workdir, result


def test_correlate_writes_every_output(full_run):
  workdir, result = full_run
  for name in OUTPUTS:
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, 'chunks'))) == [
      'chunk_00000.npz', 'chunk_00001.npz', 'chunk_00002.npz']
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  assert len(rows) == 13 and rows[-1]['arch_index'] == '5'
  assert list(rows[0])[2:] == ['params', 'params_flag', 'flops', 'flops_flag',
                               'agg:params+flops:logrank', 'agg:params+flops:logrank_flag',
                               'agg:flops+params', 'agg:flops+params_flag', 'cifar10_test_acc']
  table = json.load(open(os.path.join(workdir, 'correlation.json')))
  assert [r['name'] for r in table['rows']] == PROXIES.split(',')
  params = table['rows'][0]
  assert params['used'] == 13 and params['flagged'] == 0 and params['spearman'] > 0.5
  # top-10% precision by hand from scores.csv: of the ceil(1.3) = 2 archs with the most params,
  # the share among the 2 most accurate (ties by arch-list order)
  top = lambda key: {i for _, i in sorted((-float(r[key]), i) for i, r in enumerate(rows))[:2]}
  assert params['top10_precision'] == len(top('params') & top('cifar10_test_acc')) / 2
  assert 'Pearson r' in open(os.path.join(workdir, 'correlation.md')).read()
  agreement = json.load(open(os.path.join(workdir, 'agreement.json')))['rows']
  # params and flops are exact counts, so they rank the 12 shared archs as NASLib does.
  assert [(r['name'], r['matched'], r['spearman']) for r in agreement] == [
      ('params', 12, 1.0), ('flops', 12, 1.0)]
  try:
    import pyarrow.parquet as pq
  except ImportError:
    assert 'pyarrow is not installed' in result.stdout
    return
  parquet = pq.read_table(os.path.join(workdir, 'scores.parquet')).to_pydict()
  assert parquet['arch_index'] == [int(r['arch_index']) for r in rows]
  assert parquet['agg:flops+params'] == [float(r['agg:flops+params']) for r in rows]


def test_resume_after_a_crash_gives_the_uninterrupted_rows(full_run, archs_file, data_dir,
                                                           tmp_path, monkeypatch):
  f, workdir = _flags(tmp_path / 'out', archs_file, data_dir)
  monkeypatch.setenv('ZERONAS_JAX_CACHE', '')  # no persistent XLA cache for the whole session
  monkeypatch.setenv(correlate.CRASH_ENV, '1')
  with pytest.raises(correlate.SimulatedCrash):
    correlate.run(f, workdir)
  assert os.listdir(tmp_path / 'out' / 'chunks') == ['chunk_00000.npz']
  assert not (tmp_path / 'out' / 'scores.csv').exists()
  monkeypatch.delenv(correlate.CRASH_ENV)
  correlate.run(f, workdir)
  for name in ('scores.csv', 'correlation.md', 'agreement.md'):
    assert (tmp_path / 'out' / name).read_text() == open(
        os.path.join(full_run[0], name)).read(), name


def test_rerun_with_other_settings_fails_in_one_line(full_run, archs_file, data_dir, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(full_run[0], workdir)
  f, _ = _flags(workdir, archs_file, data_dir, seed=1)
  result = cli.run(*_cli_args(f, workdir))
  cli.assert_one_line_error(result, 'other settings', 'seed', 'new --workdir', 'delete')


def test_partial_tabulates_the_finished_chunks_and_scores_nothing(full_run, archs_file,
                                                                   data_dir, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(full_run[0], workdir)
  (workdir / 'chunks' / 'chunk_00001.npz').unlink()  # archs 5-9 not scored yet
  f, _ = _flags(workdir, archs_file, data_dir)
  result = cli.run(*_cli_args(f, workdir), '--partial')  # the process that wrote the chunks
  assert result.returncode == 0, result.stderr
  assert 'partial: 8 of 13 archs scored so far' in result.stdout
  assert sorted(os.listdir(workdir / 'chunks')) == ['chunk_00000.npz', 'chunk_00002.npz']
  full = list(csv.DictReader(open(os.path.join(full_run[0], 'scores.csv'))))
  partial = list(csv.DictReader(open(workdir / 'partial' / 'scores.csv')))
  finished = full[:5] + full[10:]
  assert [r['arch_index'] for r in partial] == [r['arch_index'] for r in finished]
  for ours, theirs in zip(partial, finished):  # aggregates differ: they rank a smaller pool
    assert [ours[k] for k in ('params', 'flops', 'cifar10_test_acc')] == [
        theirs[k] for k in ('params', 'flops', 'cifar10_test_acc')]
  table = json.load(open(workdir / 'partial' / 'correlation.json'))
  assert table['archs'] == 8 and table['rows'][0]['used'] == 8
  assert '**partial**: the 8 of 13 archs' in (workdir / 'partial' / 'correlation.md').read_text()
  assert (workdir / 'scores.csv').read_text() == open(
      os.path.join(full_run[0], 'scores.csv')).read()  # the full run's outputs are left alone
  other, _ = _flags(workdir, archs_file, data_dir, seed=1)
  cli.assert_one_line_error(cli.run(*_cli_args(other, workdir), '--partial'), 'other settings',
                            'seed')


@pytest.mark.parametrize('args, fragments', [
    (['--proxies=params,agg:params+flops:zscore'], ["unknown aggregate method 'zscore'"]),
    (['--reference_file=/no/such.csv'], ['--reference_file=/no/such.csv not found']),
    (['--chunk_size=0'], ['--chunk_size=0', 'positive']),
    (['--archs=reference+random:10'], ['N must be between the 724 reference archs']),
    (['--partial'], ['no correlate run to tabulate', 'without --partial']),
    (['--partial', '--search_space=tinycnn'],
     ['is not read by --experiment=correlate on --search_space=tinycnn', 'own sizes']),
])
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, data_dir, args, fragments):
  result = cli.run('--experiment=correlate', '--archs=1', '--proxies=params',
                   f'--reference_file={_reference(data_dir)}',
                   f'--workdir={tmp_path / "out"}', '--noprogress', *args)
  cli.assert_one_line_error(result, *fragments)


def test_chunks_scored_by_fresh_scorers_equal_one_pass(tmp_path, monkeypatch):
  """A resumed process rebuilds the scorer (new inputs, new compile): same numbers, because
  keys come from the seed and the arch, and inputs from the seed."""
  settings = proxies.ScoreSettings(lr_batches=2, lr_batch_size=64)
  ops = np.array([[3, 2, 4, 1, 3, 0], [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3],
                  [4, 0, 2, 0, 0, 3], [2, 2, 2, 2, 2, 2], [0, 3, 1, 4, 2, 3]])
  make = lambda: scoring.Scorer(registry.get('nb201'), ['linear_regions', 'params'], settings,
                                        seed=3)
  whole = make().score_archs((), ops, 4)

  def sweep():  # a fresh scorer per process
    scorer = make()
    return correlate.sweep(ops, 3, tmp_path,
                           lambda start, stop, p: scorer.score_archs((), ops[start:stop], 4, p),
                           scorer, progress=False)

  monkeypatch.setenv(correlate.CRASH_ENV, '1')
  with pytest.raises(correlate.SimulatedCrash):
    sweep()
  monkeypatch.delenv(correlate.CRASH_ENV)
  resumed = sweep()
  assert resumed.keys() == whole.keys()
  for name in whole:
    np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
  assert len(set(whole['linear_regions'].tolist())) > 1


def test_a_sweep_runs_one_arch_per_network_and_expands_to_every_arch(tmp_path, monkeypatch):
  """Archs NB201 calls one network run once in a sweep: the expanded scores (all chunks, or
  the finished ones with --partial) equal scoring every arch, params each arch's own."""
  space = registry.get('nb201')
  settings = proxies.ScoreSettings(zc_width=2, zc_cells=1, zc_batch=4, zc_input_size=8)
  # rows 0/2 and 1/4 are one network each (dead edges), row 3 its own: 3 networks
  pool, c1, c3 = 4, 2, 3
  archs = space.relax.from_rows((), np.array([
      [0, pool, 0, pool, 0, 0], [0, 0, c1, c1, pool, c1], [0, c1, 0, pool, 0, 0], [c3] * 6,
      [0, 0, c3, c1, c1, c3]]))
  # the proxies, settings and K of scoring_test's one-network test: one program between them
  names = ['synflow', 'jacob_cov', 'params']
  one = jax.devices()[:1]
  scorer = scoring.Scorer(space, names, settings, seed=3, batch_candidates=4, devices=one)
  runs, expand = correlate.per_network(space, scorer, archs)
  assert [space.encode(a) for a in runs] == [space.encode(archs[i]) for i in (0, 1, 3)]
  ops = space.to_array(runs)
  score = lambda start, stop, p: scorer.score_archs((), runs[start:stop], 4, p)
  done, swept = expand(correlate.sweep(ops, 2, tmp_path, score, scorer, progress=False))
  monkeypatch.setattr(scoring.Scorer, 'one_per_network', lambda self, archs: (None, None))
  every = scoring.Scorer(space, names, settings, seed=3, batch_candidates=4,
                         devices=one).score_archs((), archs)
  assert done.all() and swept.keys() == every.keys()
  for name in every:
    np.testing.assert_array_equal(swept[name], every[name], err_msg=name)
  assert every['params'][0] != every['params'][2]
  (tmp_path / 'chunk_00000.npz').unlink()  # runs 0-1 (archs 0, 1, 2, 4) not finished
  done, partial = expand(*correlate.finished_scores(ops, 2, tmp_path)[::-1])
  assert done.tolist() == [False, False, False, True, False]
  for name in every:
    np.testing.assert_array_equal(partial[name], every[name][done], err_msg=name)


def test_score_writes_aggregate_columns(tmp_path, data_dir):
  out = tmp_path / 'scores.csv'
  f = run_lib.make_config('score', archs='1', proxies='params,agg:params+flops',
                          benchmark_file=str(_benchmark(data_dir)), output='scores.csv',
                          batch_candidates=1, progress=False)
  score.run(f, tmp_path)
  row = next(csv.DictReader(out.open()))
  assert list(row) == ['arch_index', 'arch_str', 'params', 'flops', 'agg:params+flops',
                       'agg:params+flops_flag', 'connected']
  assert row['agg:params+flops'] == '2.0' and row['agg:params+flops_flag'] == ''


def test_setting_says_cifar10_images_stand_in_for_imagenet16():
  f = types.SimpleNamespace(dataset='ImageNet16-120', archs='random:3', seed=0)
  images = data_lib.ImageSet(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64),
                             'cifar10 train (data_batch_1)')
  settings = proxies.ScoreSettings(dataset='ImageNet16-120')
  truth = correlate.Truth([], np.zeros(0), 'imagenet16_120_test_acc', 'the benchmark')
  scorer = scoring.Scorer(registry.get('nb201'), ['nwot', 'params'], settings)
  text = '\n'.join(correlate.describe_setting(f, registry.get('nb201'), truth, scorer,
                                              ['nwot', 'params'], images, 3))
  assert 'CIFAR-10 training images stand in, box-downsampled to 16x16, into a 120-class' in text
  assert 'C=16 N=5, batch 64 with labels, 16x16 inputs, 120 classes' in text


def _env(cache):
  return cli.subprocess_env(ZERONAS_JAX_CACHE=str(cache))


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_rows(tmp_path, data_dir):
  """SIGKILL a real sweep (linear regions on CIFAR-10) once its first chunk is on disk, rerun
  the same command, and compare with an uninterrupted run byte for byte."""
  def args(workdir):
    return [sys.executable, '-m', 'experiments.run', '--experiment=correlate',
            '--archs=random:40', '--proxies=linear_regions,params', '--chunk_size=4',
            '--batch_candidates=2', f'--data_dir={data_dir / "cifar10"}',
            f'--benchmark_file={_benchmark(data_dir)}', f'--workdir={workdir}', '--noprogress']
  env = _env(tmp_path / 'cache')
  run = lambda workdir: subprocess.run(args(workdir), cwd=cli.REPO, env=env,
                                       capture_output=True, text=True, timeout=600)
  reference = run(tmp_path / 'whole')
  assert reference.returncode == 0, reference.stderr

  killed = subprocess.Popen(args(tmp_path / 'killed'), cwd=cli.REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = tmp_path / 'killed' / 'chunks' / 'chunk_00000.npz'
  deadline = time.monotonic() + 600
  while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert killed.returncode == -signal.SIGKILL
  done = len(os.listdir(tmp_path / 'killed' / 'chunks'))
  assert 1 <= done < 10 and not (tmp_path / 'killed' / 'scores.csv').exists()

  resumed = run(tmp_path / 'killed')
  assert resumed.returncode == 0, resumed.stderr
  assert f'resuming: {done} of 10 chunks' in resumed.stdout
  assert ((tmp_path / 'killed' / 'scores.csv').read_text()
          == (tmp_path / 'whole' / 'scores.csv').read_text())


def test_reference_archs_come_first_then_distinct_random_ones(data_dir):
  reference = correlate.load_reference(_reference(data_dir), 'cifar100')
  base = np.unique(reference['arch_index'])
  np.testing.assert_array_equal(correlate.reference_archs('reference', reference, 0), base)
  picked = correlate.reference_archs('reference+random:3000', reference, 0)
  assert len(picked) == len(np.unique(picked)) == 3000
  np.testing.assert_array_equal(picked[:len(base)], base)
  np.testing.assert_array_equal(picked, correlate.reference_archs('reference+random:3000',
                                                                  reference, 0))
  with pytest.raises(ValueError, match='needs --reference_file'):
    correlate.reference_archs('reference', None, 0)
  with pytest.raises(ValueError, match='reference or reference\\+random:N'):
    correlate.reference_archs('reference+rand:5000', reference, 0)


def test_reference_sample_measures_agreement_on_every_reference_arch(tmp_path, data_dir):
  f, workdir = _flags(tmp_path / 'out', 'reference+random:800', data_dir, proxies='params,flops',
                      chunk_size=400)
  correlate.run(f, workdir)
  with open(tmp_path / 'out' / 'scores.csv', newline='') as fh:
    assert len(list(csv.DictReader(fh))) == 800
  agreement = json.loads((tmp_path / 'out' / 'agreement.json').read_text())
  rows = {r['name']: r for r in agreement['rows']}
  assert rows['params']['matched'] == rows['params']['reference_archs'] == 724
  assert rows['params']['spearman'] > 0.99


def test_committed_sweep_chunks_belong_to_the_documented_command(data_dir):
  """results/ntk_cond_c16n5_1000 (results/README.md): its manifest is the one the documented
  command writes on a CPU, and every chunk on disk holds that command's archs with a finite value
  or a flag, so the next session resumes it instead of failing or mixing runs."""
  root = pathlib.Path(__file__).resolve().parents[1] / 'results' / 'ntk_cond_c16n5_1000'
  f = run_lib.make_config(
      'correlate', dataset='cifar10', archs='reference+random:1000', proxies='ntk_cond',
      ntk_width=16, ntk_cells=5, ntk_batch=64, repeats=1, cotangent_chunk=16, chunk_size=16,
      batch_candidates=1, benchmark_file=str(_benchmark(data_dir)),
      reference_file=str(_reference(data_dir)), data_dir=str(data_dir / 'cifar10'))
  table = common.arch_index_table(f.benchmark_file, required=True)
  reference = correlate.load_reference(f.reference_file, f.dataset)
  ops = table.index_to_ops[correlate.reference_archs(f.archs, reference, f.seed)]
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  config = correlate.run_config(['ntk_cond'], proxies.ScoreSettings.from_config(f), f, images, ops,
                                1, 'cpu')
  assert json.loads((root / 'manifest.json').read_text()) == config
  files = sorted((root / 'chunks').iterdir())
  done, scores = correlate.finished_scores(ops, f.chunk_size, root / 'chunks')
  # every file is one of the sweep's chunks and is read back for its archs (the last chunk
  # is short: 1,000 = 62 x 16 + 8)
  starts = range(0, len(ops), f.chunk_size)
  on_disk = [s for i, s in enumerate(starts) if correlate.chunk_path(root / 'chunks', i).is_file()]
  assert len(on_disk) == len(files)
  assert int(done.sum()) == sum(len(ops[s:s + f.chunk_size]) for s in on_disk)
  assert np.all(np.isfinite(scores['ntk_cond']) | (scores['ntk_cond_flag'] != 0))


def test_a_damaged_chunk_reads_as_unfinished_and_is_rescored(tmp_path):
  """A chunk cut short or emptied (a full disk, a copy gone wrong) is rescored, not a traceback;
  files are written with the umask's mode, not mkstemp's 0600 (shared workdirs)."""
  ops = np.arange(12).reshape(2, 6)
  path = tmp_path / 'chunk_00000.npz'
  correlate.write_chunk(path, ops, {'synflow': np.array([1.0, 2.0])})
  assert correlate.read_chunk(path, ops)['synflow'].tolist() == [1.0, 2.0]
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~os.umask(os.umask(0o022))
  assert correlate.read_chunk(path, ops[::-1]) is None  # another chunk's archs
  path.write_bytes(path.read_bytes()[:100])
  assert correlate.read_chunk(path, ops) is None
  path.write_bytes(b'')
  assert correlate.read_chunk(path, ops) is None


def test_score_refuses_a_correlate_workdir_and_the_reverse(tmp_path):
  """Both jobs sweep the same chunks but write other tables: score resuming a correlate run's
  workdir would overwrite its scores.csv without its accuracy column. A manifest written before
  the job was recorded counts as correlate's."""
  config = {'version': correlate.MANIFEST_VERSION, 'seed': 0}  # correlate's: no 'job'
  correlate.check_manifest(tmp_path, config)
  correlate.check_manifest(tmp_path, config)  # the same job resumes
  ordered = {**config, 'proxies': ['synflow', 'nwot']}
  (tmp_path / 'manifest.json').write_text(json.dumps(ordered))
  correlate.check_manifest(tmp_path, {**ordered, 'proxies': ['nwot', 'synflow']})  # any order
  with pytest.raises(correlate.ResumeError, match=r'differs in proxies\)'):
    correlate.check_manifest(tmp_path, {**ordered, 'proxies': ['nwot']})
  (tmp_path / 'manifest.json').write_text(json.dumps(config))
  with pytest.raises(correlate.ResumeError, match='holds a correlate run, whose tables a score'):
    correlate.check_manifest(tmp_path, {**config, 'job': 'score'})
  (tmp_path / 'manifest.json').write_text(json.dumps({**config, 'job': 'score'}))
  with pytest.raises(correlate.ResumeError, match='holds a score run, whose tables a correlate'):
    correlate.check_manifest(tmp_path, config)

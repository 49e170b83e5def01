"""Bad input, tried as a new user would: a wrong file for a file flag, an output or workdir that
cannot be written, a foreign workdir, garbage values. Each ends before any work with one line on
stderr, exit code 2 and no traceback; an internal bug still shows its traceback (issue 33).

Runs in this process (`experiments.run.cli`), like tests/run_flags_test.py."""
import json
import os
import pickle

import numpy as np
import pytest

from experiments import common
from experiments import run
from search_spaces import nb201

ARCH = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
TINY = 'f16k3-f32k5-relu-max'
ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0  # permissions do not stop root


def cli(capsys, *args):
  """(exit code, stderr lines) of the command line in this process; a traceback would raise."""
  code = run.cli(['zeronas', '--noprogress', *args])
  err = capsys.readouterr().err
  assert 'Traceback' not in err, err
  return code, err.strip().splitlines()


def assert_one_line(code, lines, *fragments):
  assert code == 2, lines
  assert 1 <= len(lines) <= 2 and lines[-1].startswith('error: '), lines
  for fragment in fragments:
    assert fragment in lines[-1], lines[-1]


def _files(tmp):
  """The bad inputs, made once per test in `tmp`."""
  (tmp / 'wrong_columns.csv').write_text('a,b\n1,2\n')
  (tmp / 'wrong_types.csv').write_text(f'arch_index,arch_str\nx,{ARCH}\n')
  (tmp / 'bad_index.csv').write_text(f'arch_index,arch_str\n99999,{ARCH}\n')
  (tmp / 'partial.csv').write_text(f'arch_index,arch_str\n0,{ARCH}\n')
  (tmp / 'empty.csv').write_text('')
  (tmp / 'binary.csv').write_bytes(b'\x00\xff\xfe\x80 garbage')
  (tmp / 'folder').mkdir()
  (tmp / 'gt_columns.csv').write_text('arch,seed\nfoo,0\n')
  (tmp / 'gt_types.csv').write_text(f'arch,seed,test_acc\n{TINY},x,0.5\n')
  (tmp / 'archs_bad.txt').write_text(f'{ARCH}\n|nor_conv_3x3~0|+|bogus~0|\n')
  for name, text in (('foreign', '{"foo": 1}'), ('corrupt', '{not json'), ('a_list', '[1, 2]'),
                     ('bad_arch', '{"arch": "|x~0|"}'), ('bad_width', json.dumps(
                         {'arch': ARCH, 'C': 'wide'}))):
    (tmp / name).mkdir()
    (tmp / name / 'config.json').write_text(text)
  cifar = tmp / 'cifar' / 'cifar-10-batches-py'
  cifar.mkdir(parents=True)
  for batch in ('data_batch_1', 'test_batch'):
    (cifar / batch).write_bytes(pickle.dumps([1, 2]))


SCORE = ['--experiment=score', '--proxies=params']
TRAIN = ['--experiment=train', f'--arch={ARCH}', '--epochs=1']
# (name, args with {t} for the test's folder, fragments of the one line)
BAD = [
    # --benchmark_file: wrong content (issue 33: IndexError, KeyError before)
    ('bench wrong columns', SCORE + ['--archs=1', '--benchmark_file={t}/wrong_columns.csv',
                                     '--output={t}/o.csv'], ['arch_index', 'arch_str']),
    ('bench wrong types', SCORE + ['--archs=1', '--benchmark_file={t}/wrong_types.csv',
                                   '--output={t}/o.csv'], ['not an NB201 benchmark table']),
    ('bench bad index', SCORE + ['--archs=1', '--benchmark_file={t}/bad_index.csv',
                                 '--output={t}/o.csv'], ['not an NB201 benchmark table']),
    ('bench partial', SCORE + ['--archs=1', '--benchmark_file={t}/partial.csv',
                               '--output={t}/o.csv'], ['all 15625 archs']),
    ('bench empty', SCORE + ['--archs=1', '--benchmark_file={t}/empty.csv',
                             '--output={t}/o.csv'], ['--benchmark_file=']),
    ('bench binary', SCORE + ['--archs=1', '--benchmark_file={t}/binary.csv',
                              '--output={t}/o.csv'], ['not UTF-8']),
    ('bench folder', SCORE + [f'--archs={ARCH}', '--benchmark_file={t}/folder',
                              '--output={t}/o.csv'], ['is a folder']),
    ('bench missing', SCORE + [f'--archs={ARCH}', '--benchmark_file={t}/nope.csv',
                               '--output={t}/o.csv'], ['not found']),
    ('cost bench wrong columns', ['--experiment=cost', '--archs=random:2',
                                  '--benchmark_file={t}/wrong_columns.csv', '--output={t}/o.csv'],
     ['arch_index']),
    ('search tinycnn ground truth columns', [
        '--experiment=search', '--search_space=tinycnn', '--proxies=params',
        '--benchmark_file={t}/gt_columns.csv', '--workdir={t}/w'], ['lacks the test_acc column']),
    ('correlate tinycnn ground truth types', [
        '--experiment=correlate', '--search_space=tinycnn', '--proxies=params',
        '--benchmark_file={t}/gt_types.csv', '--workdir={t}/w'], ['gt_types.csv:2']),
    # outputs and workdirs that cannot be written (IsADirectoryError, FileExistsError before)
    ('output folder', SCORE + [f'--archs={ARCH}', '--output={t}/folder'], ['is a folder']),
    ('cost output folder', ['--experiment=cost', '--archs=random:2', '--output={t}/folder'],
     ['is a folder']),
    ('output under /dev/null', SCORE + [f'--archs={ARCH}', '--output=/dev/null/x.csv'],
     ['/dev/null is not a folder']),
    ('output a device', SCORE + [f'--archs={ARCH}', '--output=/dev/null'],
     ['not a regular file']),
    ('output under a file', SCORE + [f'--archs={ARCH}', '--output={t}/empty.csv/x.csv'],
     ['is not a folder']),
    ('output empty', SCORE + [f'--archs={ARCH}', '--output='], ['--output is empty']),
    ('search workdir /dev/null', ['--experiment=search', '--search_space=tinycnn',
                                  '--proxies=params', '--workdir=/dev/null'], ['not a folder']),
    ('correlate workdir a file', ['--experiment=correlate', '--search_space=tinycnn',
                                  '--proxies=params', '--workdir={t}/empty.csv'],
     ['not a folder']),
    ('train workdir /dev/null', TRAIN + ['--workdir=/dev/null'], ['not a folder']),
    ('train workdir under /dev/null', TRAIN + ['--workdir=/dev/null/run'],
     ['/dev/null is not a folder']),
    # foreign or corrupt workdirs (TypeError, JSONDecodeError before)
    ('export foreign config.json', ['--experiment=export', '--workdir={t}/foreign'],
     ['not written by --experiment=train', 'foo']),
    ('export corrupt config.json', ['--experiment=export', '--workdir={t}/corrupt'],
     ['not JSON']),
    ('export config.json a list', ['--experiment=export', '--workdir={t}/a_list'],
     ['JSON list']),
    ('export config.json bad arch', ['--experiment=export', '--workdir={t}/bad_arch'],
     ['not written by --experiment=train']),
    ('export config.json bad width', ['--experiment=export', '--workdir={t}/bad_width'],
     ["C='wide'"]),
    ('export a file', ['--experiment=export', '--workdir={t}/empty.csv'], []),
    ('train init_from foreign', TRAIN + ['--init_from={t}/foreign', '--workdir={t}/w'],
     ['--init_from=', 'foo']),
    ('train distill_from corrupt', TRAIN + ['--distill_from={t}/corrupt', '--workdir={t}/w'],
     ['--distill_from=', 'not JSON']),
    ('train init_from missing', TRAIN + ['--init_from={t}/nope', '--workdir={t}/w'],
     ['--init_from=', 'not found']),
    ('train init_from a file', TRAIN + ['--init_from={t}/empty.csv', '--workdir={t}/w'],
     ['not a folder']),
    ('train workdir foreign', TRAIN + ['--workdir={t}/foreign'], ['--workdir=', 'foo']),
    # other input files
    ('archs file not text', SCORE + ['--archs={t}/binary.csv', '--output={t}/o.csv'],
     ['not a UTF-8 text file']),
    ('archs file bad line', SCORE + ['--archs={t}/archs_bad.txt', '--output={t}/o.csv'],
     ['archs_bad.txt:2', 'bogus']),
    ('archs a long garbage string', SCORE + ['--archs=' + 'x' * 300, '--output={t}/o.csv'],
     ['--archs=']),
    ('reference_file missing', ['--experiment=correlate', '--proxies=params',
                                '--reference_file={t}/nope.csv', '--archs=reference',
                                '--workdir={t}/w'], ['--reference_file=', 'not found']),
    ('reference_file folder', ['--experiment=correlate', '--proxies=params',
                               '--reference_file={t}/folder', '--archs=reference',
                               '--workdir={t}/w'], ['is a folder']),
    ('data_dir not CIFAR pickles', SCORE + [f'--archs={ARCH}', '--data_dir={t}/cifar',
                                           '--output={t}/o.csv'],
     ['not a CIFAR python pickle batch']),
]


@pytest.mark.parametrize('args, fragments', [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, fragments):
  _files(tmp_path)
  args = [a.replace('{t}', str(tmp_path)) for a in args]
  assert_one_line(*cli(capsys, *args), *fragments)
  assert not (tmp_path / 'o.csv').exists() and not (tmp_path / 'w').exists()  # no work started


def test_full_table_without_the_accuracy_column(tmp_path, capsys):
  """A table that indexes every arch but has no accuracy (e.g. the AnalogNAS CSV) cannot rank
  the search's picks: refused before the search, not a KeyError after it."""
  rows = [f'{i},{nb201.format_arch_str(ops)}' for i, ops in enumerate(nb201.all_ops())]
  (tmp_path / 'index_only.csv').write_text('arch_index,arch_str\n' + '\n'.join(rows) + '\n')
  assert_one_line(*cli(capsys, '--experiment=search', '--proxies=params',
                       f'--benchmark_file={tmp_path / "index_only.csv"}',
                       f'--workdir={tmp_path / "w"}'), 'no cifar10_test_acc column')


@pytest.mark.skipif(ROOT, reason='permissions do not stop root')
def test_unwritable_and_unreadable_paths(tmp_path, capsys):
  locked = tmp_path / 'locked'
  locked.mkdir()
  secret = tmp_path / 'secret.csv'
  secret.write_text('arch_index,arch_str\n')
  secret.chmod(0)
  locked.chmod(0o555)
  try:
    assert_one_line(*cli(capsys, *SCORE, f'--archs={ARCH}', f'--output={locked / "x.csv"}'),
                    'no permission')
    assert_one_line(*cli(capsys, '--experiment=search', '--search_space=tinycnn',
                         '--proxies=params', f'--workdir={locked / "w"}'), 'no permission')
    assert_one_line(*cli(capsys, *SCORE, '--archs=1', f'--benchmark_file={secret}',
                         f'--output={tmp_path / "o.csv"}'), 'not readable')
  finally:
    locked.chmod(0o755)


# ---------------------------------------------------------------- the boundary itself

def test_internal_bugs_keep_their_traceback(tmp_path, monkeypatch):
  """Errors raised inside a library (a shape bug in numpy) or of the kinds only bugs raise
  (KeyError, TypeError) are not turned into one line."""
  from experiments import score
  out = f'--output={tmp_path / "o.csv"}'
  for bug, kind in ((lambda: np.zeros(3).reshape(2), ValueError), (lambda: {}['x'], KeyError),
                    (lambda: len(1), TypeError),
                    (lambda: open(tmp_path / 'not_a_flag' / 'x'), FileNotFoundError)):
    monkeypatch.setattr(score, 'run', lambda config, workdir, bug=bug: bug())
    with pytest.raises(kind):
      run.cli(['zeronas', *SCORE, f'--archs={ARCH}', out])


def test_oserror_on_a_user_path_is_one_line(tmp_path, capsys, monkeypatch):
  """An OSError late in a run (a disk full, a folder removed) on a path the user gave names
  the flag; the same error elsewhere is a bug."""
  from experiments import score
  def disk_full(config, workdir):
    raise OSError(28, 'No space left on device', config.output + 'abc.tmp')
  monkeypatch.setattr(score, 'run', disk_full)
  out = tmp_path / 'o.csv'
  assert_one_line(*cli(capsys, *SCORE, f'--archs={ARCH}', f'--output={out}'),
                  f'--output={out}', 'No space left on device')
  assert common.user_error_message(OSError(28, 'No space', '/elsewhere/x'),
                                   {'output': str(out)}) is None


def test_missing_optional_package_is_one_line():
  err = ModuleNotFoundError("No module named 'ai_edge_litert'", name='ai_edge_litert')
  assert 'pip install -e ".[deploy]"' in common.user_error_message(err)
  assert common.user_error_message(ModuleNotFoundError('x', name='numpyy')) is None


def test_write_atomic_never_replaces_a_device_or_folder(tmp_path):
  with pytest.raises(IsADirectoryError):
    common.write_text_atomic(tmp_path, 'x')
  with pytest.raises(FileExistsError):
    common.write_text_atomic('/dev/null', 'x')
  assert os.path.exists('/dev/null') and not os.path.isfile('/dev/null')


# ---------------------------------------------------------------- generated bad input

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import assume, given, settings, strategies as st  # noqa: E402

# argv cannot hold NUL; surrogates are not text
_TEXT = st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'),
                max_size=40)
_ARCH_CHARS = '|~+_0123456789' + ''.join(sorted(set(''.join(nb201.OPS))))


def _mutations():
  """An NB201 arch string with characters deleted, inserted or replaced."""
  def mutate(draw):
    text = list(ARCH)
    for _ in range(draw(st.integers(1, 4))):
      i = draw(st.integers(0, len(text)))
      kind = draw(st.sampled_from(['delete', 'insert', 'replace']))
      c = draw(st.sampled_from(_ARCH_CHARS))
      if kind == 'delete' and i < len(text):
        del text[i]
      elif kind == 'replace' and i < len(text):
        text[i] = c
      else:
        text.insert(i, c)
    return ''.join(text)
  return st.composite(lambda draw: mutate(draw))()


def _bad_arch_spec(spec: str) -> bool:
  """Whether --archs=spec is refused (`common.select_archs`): an index out of range, random:
  without a count, or anything else that is no file and no arch string."""
  s = spec.strip()
  if s.lstrip('-').isdecimal():
    return not 0 <= int(s) < nb201.NUM_ARCHS
  if s.startswith('random:'):
    return not s.split(':', 1)[1].isdecimal()
  if s == 'all' or common.is_file(s):
    return False
  try:
    nb201.parse_arch_str(s)
  except ValueError:
    return True
  return False


_QUIET = dict(deadline=None, database=None,
              suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


@settings(max_examples=90, **_QUIET)
@given(st.one_of(_mutations(), _TEXT, st.integers(nb201.NUM_ARCHS, 10**12).map(str),
                 st.integers(1, 10**6).map(lambda n: f'random:{-n}'),
                 st.sampled_from(['random:\u00b2', '\u00b2', '-\u00b2', 'random:', '', '-0x1'])))
def test_generated_bad_archs(tmp_path_factory, capsys, spec):
  assume(_bad_arch_spec(spec))
  out = tmp_path_factory.mktemp('o') / 'o.csv'
  code = run.cli(['zeronas', '--noprogress', *SCORE, f'--archs={spec}', f'--output={out}'])
  err = capsys.readouterr().err
  assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert not out.exists()


# Numeric flags each experiment reads, and the experiment (with its required flags).
_NUMERIC = {
    'score': (SCORE + [f'--archs={ARCH}'], ['seed', 'batch_candidates', 'candidate_chunk',
                                            'ntk_batch', 'repeats', 'ntk_width', 'zc_batch',
                                            'zico_splits', 'cotangent_chunk']),
    'train': (TRAIN, ['epochs', 'lr', 'weight_decay', 'warmup_epochs', 'label_smoothing',
                      'distill_alpha', 'distill_temperature', 'train_width', 'train_batch',
                      'calib_batches', 'train_images', 'test_images']),
    'search': (['--experiment=search', '--searcher=evolution'],
               ['sram_reserve_kb', 'flash_reserve_kb', 'evolution_samples', 'population',
                'tournament', 'space_samples']),
}


def _bad_value(name: str, value: str) -> bool:
  """Whether the flag's parser refuses `value` (absl's types and bounds, and run's finiteness)."""
  from absl import flags
  try:
    run._checked(name, flags.FLAGS[name].parser.parse(value))
  except (ValueError, TypeError):
    return True
  return False


@settings(max_examples=80, **_QUIET)
@given(st.sampled_from(sorted(_NUMERIC)), st.data(),
       st.one_of(_TEXT, st.integers(-10**9, 0).map(str), st.floats(allow_nan=True).map(str),
                 st.sampled_from(['-1', '0', '1.5', '1e400', 'nan', '-inf', '0x10', '', ' '])))
def test_generated_bad_numeric_flags(tmp_path_factory, capsys, experiment, data, value):
  args, names = _NUMERIC[experiment]
  name = data.draw(st.sampled_from(names))
  assume(_bad_value(name, value))
  out = tmp_path_factory.mktemp('o')
  extra = [f'--output={out / "o.csv"}'] if experiment == 'score' else [f'--workdir={out / "w"}']
  code = run.cli(['zeronas', '--noprogress', *args, *extra, f'--{name}={value}'])
  err = capsys.readouterr().err
  assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err


# String flags, each value made invalid by a character no valid one holds ('!').
_STRINGS = {'search': ['seeds', 'proxy_weights', 'proxies', 'device', 'runtime', 'searcher'],
            'cost': ['device', 'runtime', 'archs']}


@settings(max_examples=60, **_QUIET)
@given(st.sampled_from([(e, n) for e, names in _STRINGS.items() for n in names]), _TEXT, _TEXT)
def test_generated_bad_string_flags(tmp_path_factory, capsys, flag, head, tail):
  experiment, name = flag
  value = f'{head}!{tail}' if name != 'proxy_weights' else f'params={head}!{tail}'
  out = tmp_path_factory.mktemp('o')
  args = (['--experiment=search', '--search_space=tinycnn', f'--workdir={out / "w"}']
          + (['--proxies=params'] if name != 'proxies' else []) if experiment == 'search' else
          ['--experiment=cost', '--search_space=tinycnn', f'--output={out / "o.csv"}'])
  code = run.cli(['zeronas', '--noprogress', *args, f'--{name}={value}'])
  err = capsys.readouterr().err
  assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert not any(out.iterdir())


def test_at_least_200_generated_bad_inputs():
  """Issue 33's count: the three generated tests together try at least 200 bad command lines
  in the default suite (each example passes its `assume`, so each is a refused input)."""
  generated = (test_generated_bad_archs, test_generated_bad_numeric_flags,
               test_generated_bad_string_flags)
  total = sum(t._hypothesis_internal_use_settings.max_examples for t in generated)
  assert total >= 200, total

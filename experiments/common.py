"""Shared pieces of the experiments: arch selection, settings from flags, CSV output, errors."""
from __future__ import annotations

import csv
import dataclasses
import dis
import io
import json
import logging
import os
import pathlib
import sys
import tempfile

import numpy as np

from engine.train import data as data_lib
from engine import proxies as proxies_lib
from engine.files import write_atomic, write_text_atomic  # noqa: F401 (the experiments' helpers)
from search_spaces import nb201

# Each dataset's NB201 test-accuracy column in the benchmark table.
ACC_COLUMN = {'cifar10': 'cifar10_test_acc', 'cifar100': 'cifar100_test_acc',
              'ImageNet16-120': 'imagenet16_120_test_acc'}


class UsageError(ValueError):
  """A command line that cannot run as given; the message names the flag and the fix."""


USER_ERRORS = (nb201.ArchError, data_lib.DataError, proxies_lib.ProxyError, FileNotFoundError,
               ValueError)

REPO = pathlib.Path(__file__).resolve().parents[1]

# Path flags: what each names, and the fix when it cannot be used.
PATH_FLAGS = {
    'output': 'pass a file path in a folder you can write to, e.g. --output=scores.csv',
    'workdir': 'pass a folder you can write to (it is created if missing)',
    'benchmark_file': 'pass a readable CSV, or leave it unset for the shared data\'s table',
    'reference_file': 'pass the readable NASLib zero-cost CSV',
    'data_dir': 'pass a readable folder holding cifar-10-batches-py/, an image folder (one '
                'subfolder per class) or an .npz file',
    'init_from': 'pass a workdir written by --experiment=train',
    'distill_from': 'pass a workdir written by --experiment=train',
    'archs': 'pass a readable file with one arch per line',
}

# Optional packages: a missing one is a setup step, not a crash.
OPTIONAL_PACKAGES = {'tflite_micro': '.[deploy]', 'ai_edge_litert': '.[deploy]',
                     'flatbuffers': '.[deploy]', 'matplotlib': '.[test]'}


def _raised_by_a_check(err: BaseException) -> bool:
  """Whether `err` comes from a `raise` statement of this project's code (a check that
  rejected an input), not from a library (numpy, jax) or a call that failed inside our code
  (`int(...)`, `array.reshape(...)`): those are bugs in how we called it."""
  tb = err.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  file = pathlib.Path(os.path.abspath(tb.tb_frame.f_code.co_filename))
  if REPO not in file.parents or 'site-packages' in file.parts or '.venv' in file.parts:
    return False
  return any(i.offset == tb.tb_lasti and i.opname == 'RAISE_VARARGS'
             for i in dis.get_instructions(tb.tb_frame.f_code))


def _path_flag_of(filenames, paths: dict):
  """(flag, value) of the user-given path that one of `filenames` is, lies under, lies above
  (/dev/null of /dev/null/x.csv), or is the temporary sibling of (write_atomic); else None."""
  for name in filenames:
    if name is None:
      continue
    hit = pathlib.Path(os.path.abspath(os.fsdecode(name)))
    for flag, value in paths.items():
      given = pathlib.Path(os.path.abspath(value))
      if (hit == given or given in hit.parents or hit in given.parents
          or (hit.parent == given.parent and hit.name.startswith(given.name))):
        return flag, value
  return None


def user_error_message(err: BaseException, paths: dict | None = None) -> str | None:
  """The one line to show for `err` if it is the user's to fix, else None (a bug: let its
  traceback show). `paths`: {flag: value} of the paths the user gave.

  User errors: this project's error classes and the ValueErrors its checks raise (never one
  raised inside numpy or jax); an OSError on a user-given path; a missing optional package or
  tool."""
  paths = {k: str(v) for k, v in (paths or {}).items() if v not in (None, '')}
  if isinstance(err, UsageError):
    return str(err)
  if isinstance(err, OSError):
    if err.filename is None and err.errno is None:  # raised by a check, with its own message
      return str(err) if _raised_by_a_check(err) else None
    found = _path_flag_of((err.filename, err.filename2), paths)
    if found is None:
      return None
    flag, value = found
    where = os.fsdecode(err.filename)
    where = '' if os.path.abspath(where) == os.path.abspath(value) else f' ({where})'
    return f'--{flag}={value}: {err.strerror or err}{where}; {PATH_FLAGS.get(flag, "fix the path")}'
  if isinstance(err, ValueError):
    if not _raised_by_a_check(err):
      return None
    return str(err)
  if isinstance(err, ImportError):
    if isinstance(err, ModuleNotFoundError) and err.name in OPTIONAL_PACKAGES:
      return (f'the optional package {err.name} is not installed; pip install -e '
              f'"{OPTIONAL_PACKAGES[err.name]}"')
    return str(err) if 'pip install' in str(err) and _raised_by_a_check(err) else None
  mcu = sys.modules.get('deploy.mcu')  # only importable tools can be missing
  if mcu is not None and isinstance(err, mcu.ToolMissing):
    return str(err)
  return None


def path_flags(config, workdir=None) -> dict:
  """{flag: value} of the paths set in an experiment's config (and its workdir)."""
  found = {name: getattr(config, name, None) for name in PATH_FLAGS}
  found['workdir'] = workdir
  archs = found.get('archs')
  if archs is not None and not is_file(archs):
    del found['archs']  # an arch string or random:N, not a path
  return {k: v for k, v in found.items() if v not in (None, '')}


# Exit codes: 2 for a command line the user must fix; 3 for a run that worked as asked but whose
# result failed its verification (a runtime's output differs from the integer reference).
BAD_INPUT_EXIT = 2
VERIFICATION_FAILED_EXIT = 3


def fail(message: str, code: int = BAD_INPUT_EXIT):
  """One line on stderr and exit `code` (2: the contract for every bad input)."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(code)


def failed_verification_message(err: BaseException) -> str | None:
  """The one line for a verification that failed (deploy.export.VerificationFailed), else
  None. Not the user's input to fix: the exit code says so (VERIFICATION_FAILED_EXIT)."""
  export = sys.modules.get('deploy.export')  # only a run that exported can fail to verify
  if export is not None and isinstance(err, export.VerificationFailed):
    return f'verification failed: {err}'
  mcu = sys.modules.get('deploy.mcu')
  if mcu is not None and isinstance(err, mcu.BuildError):
    # the generated C project did not build or run in the emulator: the check could not pass
    first, *rest = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (f'verification failed: the generated C project could not be checked: {first}'
            + (f' (its last line: {rest[-1]})' if rest else ''))
  return None


def read_text(path, flag: str) -> str:
  """A user-given text file's contents; unreadable or not UTF-8 is a UsageError naming --flag."""
  try:
    return pathlib.Path(path).read_text()
  except UnicodeDecodeError:
    raise UsageError(f'--{flag}={path} is not a UTF-8 text file; {PATH_FLAGS[flag]}') from None
  except OSError as err:
    raise UsageError(f'--{flag}={path}: cannot read it ({err.strerror}); '
                     f'{PATH_FLAGS[flag]}') from None


def _first_existing(path: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(os.path.abspath(path))
  while not os.path.lexists(path) and path != path.parent:
    path = path.parent
  return path


def check_output_file(value, flag: str = 'output', example: str = 'scores.csv'):
  """Before any work: `value` can be written as a file (it, or the folders it needs, can be
  created). UsageError otherwise; `example`: the file name a folder's error suggests."""
  fix = PATH_FLAGS.get(flag, 'pass a file path you can write to')
  if not str(value).strip():
    raise UsageError(f'--{flag} is empty; {fix}')
  path = pathlib.Path(value)
  try:
    if path.is_dir():
      raise UsageError(f'--{flag}={value} is a folder; pass a file path, e.g. '
                       f'--{flag}={path / example}')
    if os.path.lexists(path) and not path.is_file():
      raise UsageError(f'--{flag}={value} exists and is not a regular file; {fix}')
    if path.is_file() and not os.access(path, os.W_OK):
      raise UsageError(f'--{flag}={value} is read-only; {fix}')
    _check_can_create(path.parent, flag, value, fix)
  except OSError as err:  # a name too long, a loop of links
    raise UsageError(f'--{flag}={value}: {err.strerror}; {fix}') from None


def check_workdir(value, flag: str = 'workdir'):
  """Before any work: `value` is a folder that can be written in, or can be created."""
  fix = PATH_FLAGS.get(flag, 'pass a folder you can write to')
  if not str(value).strip():
    raise UsageError(f'--{flag} is empty; {fix}')
  path = pathlib.Path(value)
  try:
    if os.path.lexists(path) and not path.is_dir():
      raise UsageError(f'--{flag}={value} is a file, not a folder; {fix}')
    _check_can_create(path, flag, value, fix)
  except OSError as err:
    raise UsageError(f'--{flag}={value}: {err.strerror}; {fix}') from None


def _check_can_create(folder, flag, value, fix):
  """`folder` exists and can be written in, or its nearest existing ancestor can."""
  base = _first_existing(pathlib.Path(folder))
  if not base.is_dir():
    raise UsageError(f'--{flag}={value}: {base} is not a folder; {fix}')
  if not os.access(base, os.W_OK | os.X_OK):
    raise UsageError(f'--{flag}={value}: no permission to write in {base}; {fix}')
  # os.access lets root through everywhere, and /proc or a read-only mount only refuse a real
  # write: try one (a probe file, removed at once)
  try:
    handle, probe = tempfile.mkstemp(prefix='.zeronas-probe-', dir=base)
  except OSError as err:
    raise UsageError(f'--{flag}={value}: cannot write in {base} ({err.strerror}); {fix}') from None
  os.close(handle)
  os.unlink(probe)


def check_input_file(value, flag: str):
  """A user-given file to read: it exists, is a file and is readable."""
  fix = PATH_FLAGS.get(flag, 'pass a readable file')
  path = pathlib.Path(value)
  try:
    if path.is_dir():
      raise UsageError(f'--{flag}={value} is a folder, not a file; {fix}')
    if not path.is_file():
      raise UsageError(f'--{flag}={value} not found; {fix}')
    if not os.access(path, os.R_OK):
      raise UsageError(f'--{flag}={value} is not readable (permissions); {fix}')
  except OSError as err:
    raise UsageError(f'--{flag}={value}: {err.strerror}; {fix}') from None


def check_train_run(value, flag: str, fix: str | None = None):
  """A workdir of --experiment=train (--init_from, --distill_from, export's --workdir, or a
  train --workdir being resumed): if it holds a config.json, that is a train config. A missing
  config.json is left to the experiment, which says what it needs."""
  path = pathlib.Path(value) / 'config.json'
  if not is_file(path):
    return
  what = fix or PATH_FLAGS.get(flag, 'pass a workdir written by --experiment=train')
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as err:
    detail = (err.strerror if isinstance(err, OSError) else 'not UTF-8' if
              isinstance(err, UnicodeError) else f'not JSON: {err}')
    raise UsageError(f'--{flag}={value} holds a config.json that is not a training run\'s '
                     f'({detail}); {what}') from None
  from engine.train import train as train_lib  # heavy (jax, orbax): the train experiments only
  fields = {f.name: f for f in dataclasses.fields(train_lib.TrainConfig)}
  problem = None
  if not isinstance(data, dict):
    problem = f'a JSON {type(data).__name__}, not an object'
  elif set(data) - set(fields):
    problem = f'unknown keys {", ".join(sorted(set(data) - set(fields)))}'
  elif 'arch' not in data:
    problem = 'no arch'
  else:
    try:
      train_lib.TrainConfig(**data).network()
      bad = [k for k in ('C', 'N', 'epochs', 'seed', 'num_classes') if k in data
             and (not isinstance(data[k], int) or isinstance(data[k], bool) or data[k] < 0)]
      if bad:
        problem = f'{bad[0]}={data[bad[0]]!r} is not a non-negative integer'
    except (TypeError, ValueError, AttributeError) as err:
      problem = str(err)
  if problem:
    raise UsageError(f'--{flag}={value} holds a config.json not written by --experiment=train '
                     f'({problem}); {what}')
  check_checkpoint(value, flag)


def check_size_flags(space, verb: str = 'trains', names=('width', 'cells')):
  """A tool's `--width`/`--cells` (C and N) size the network of a space with size settings
  (`SearchSpace.sized_lower`); given for a space without them (it trains at its own size), a
  UsageError naming them."""
  from absl import flags
  from search_spaces import registry
  given = [f'--{name}' for name in names if flags.FLAGS[name].present]
  if given and space.sized_lower is None:
    own = ', '.join(n for n in registry.names() if registry.get(n).sized_lower is not None)
    raise UsageError(f'{" and ".join(given)}: only a space with size settings ({own}) '
                     f'has a width and cells; {space.name} {verb} at its own size, leave '
                     f'{"them" if len(given) > 1 else "it"} out')


def check_checkpoint(value, flag: str, folder=None):
  """The latest checkpoint of the training run in `folder` (default: --flag's `value`) has an
  index orbax can read: a damaged one is a UsageError before any work
  (`engine.train.train.check_checkpoint_index`)."""
  from engine.train import train as train_lib
  other = 'train in a new --workdir' if flag == 'workdir' else f'pass another --{flag}'
  fix = f'delete that folder to use the checkpoint before it, or {other}'
  try:
    train_lib.check_checkpoint_index(pathlib.Path(folder or value), fix)
  except train_lib.CheckpointError as err:
    raise UsageError(f'--{flag}={value}: {err}') from None


def accuracy_table_hint(space) -> str:
  """What --benchmark_file takes for a space without a benchmark table: a trained ground truth,
  from experiments.ground_truth where that can sweep the space, else the user's own."""
  if space.enumerate is not None and space.train_net is not None:
    return (f'a trained ground truth with arch, seed and test_acc columns, as written by '
            f'python -m experiments.ground_truth --search_space={space.name}')
  return (f'a table of your own trained accuracies with arch, seed and test_acc columns '
          f'(experiments.ground_truth cannot sweep {space.name}: it needs a finite list of '
          f'archs and a training network)')


def _check_benchmark_file(value, space_name: str, dataset: str | None, needs_accuracy: bool):
  """--benchmark_file's content, before any work: NB201's table (per dataset) or a space's
  trained ground truth (arch, seed, test_acc)."""
  check_input_file(value, 'benchmark_file')
  from search_spaces import registry
  space = registry.get(space_name) if space_name in registry.names() else None
  if space is None:
    return
  if space.datasets is not None:
    table = arch_index_table(value, required=True)
    column = ACC_COLUMN.get(dataset)
    if needs_accuracy and column is not None and column not in table.columns:
      raise UsageError(f'--benchmark_file={value} has no {column} column (the accuracy for '
                       f'--dataset={dataset}); pass the NB201 accuracy table, e.g. '
                       f'{nb201.default_benchmark_file()}')
    return
  fix = f'pass {accuracy_table_hint(space)}'
  rows = list(csv.reader(io.StringIO(read_text(value, 'benchmark_file'))))
  header = rows[0] if rows else []
  missing = [c for c in ('arch', 'seed', 'test_acc') if c not in header]
  if missing:
    raise UsageError(f'--benchmark_file={value} lacks the {", ".join(missing)} column'
                     f'{"s" if len(missing) > 1 else ""}; {fix}')
  at = {c: header.index(c) for c in ('arch', 'seed', 'test_acc')}
  for n, row in enumerate(rows[1:], 2):
    if not row:
      continue
    try:
      int(row[at['seed']])
      float(row[at['test_acc']])
      row[at['arch']]
    except (ValueError, IndexError):
      raise UsageError(f'--benchmark_file={value}:{n}: not a row of arch, an integer seed and a '
                       f'numeric test_acc; {fix}') from None


def check_paths(config, workdir, experiment: str):
  """Every path the user gave, checked before any work starts (a long job must not fail at its
  end on an unwritable output): outputs writable, inputs readable and of the right kind."""
  get = lambda name: getattr(config, name, None)
  if get('output') is not None:
    check_output_file(get('output'))
  if workdir is not None:
    if experiment == 'export':  # reads a trained run and writes beside it
      check_train_run(workdir, 'workdir', 'pass a workdir written by --experiment=train')
      if os.path.lexists(workdir):  # a missing one: export says what it needs
        check_workdir(workdir)
    else:
      check_workdir(workdir)
    if experiment == 'train':
      check_train_run(workdir, 'workdir', 'pass a new --workdir (or the one of this run)')
    if experiment == 'pipeline':  # its train stage resumes in WORKDIR/train
      check_checkpoint(workdir, 'workdir', pathlib.Path(workdir) / 'train')
  for flag in ('init_from', 'distill_from'):
    if get(flag):
      check_input_folder(get(flag), flag)
      check_train_run(get(flag), flag)
  if get('reference_file'):
    check_input_file(get('reference_file'), 'reference_file')
  if get('benchmark_file'):
    _check_benchmark_file(get('benchmark_file'), get('search_space'), get('dataset'),
                          experiment in ('search', 'correlate'))


def check_input_folder(value, flag: str):
  """A user-given folder to read: it exists and is a folder."""
  fix = PATH_FLAGS.get(flag, 'pass an existing folder')
  path = pathlib.Path(value)
  try:
    if not os.path.lexists(path):
      raise UsageError(f'--{flag}={value} not found; {fix}')
    if not path.is_dir():
      raise UsageError(f'--{flag}={value} is a file, not a folder; {fix}')
    if not os.access(path, os.R_OK | os.X_OK):
      raise UsageError(f'--{flag}={value} is not readable (permissions); {fix}')
  except OSError as err:
    raise UsageError(f'--{flag}={value}: {err.strerror}; {fix}') from None


def parse_flags_or_fail(argv):
  """absl's flag parsing for `app.run(main, flags_parser=...)`: a bad flag value, an unknown
  flag or a malformed number is one line and exit 2 (absl alone prints two lines, exits 1).

  Every entry point parses its flags here, before JAX starts its backend, so this is also where
  the process gets the engine's XLA:CPU settings (`engine.xla_cpu`; importing a module never
  changes the environment)."""
  from absl import flags

  from engine import xla_cpu
  xla_cpu.apply()
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    message = str(err).removeprefix('flag ')  # absl: 'flag --seed=-1: -1 is not a ...'
    if isinstance(err, flags.UnrecognizedFlagError):
      message += '; see --help for the flags'
    fail(message)


def is_file(path) -> bool:
  """Path.is_file() that says False, not raises, for a name too long or otherwise impossible (an
  arch string is tried as a file name first)."""
  try:
    return pathlib.Path(path).is_file()
  except (OSError, ValueError):
    return False


def arch_index_table(benchmark_file=None, required=False):
  """The NB201 index table, or None when it is not available and not required. A file that is
  not the table is an ArchError naming it."""
  path = pathlib.Path(benchmark_file) if benchmark_file else nb201.default_benchmark_file()
  if not is_file(path):
    if required or benchmark_file:
      raise nb201.ArchError(f'NB201 arch indices need the benchmark table, not found at {path}; '
                            f'pass --benchmark_file or set ZERONAS_DATA_DIR')
    return None
  try:
    return nb201.load_arch_index(str(path))
  except (ValueError, KeyError, IndexError, TypeError, csv.Error) as err:
    detail = (f'{type(err).__name__}: {err}' if not isinstance(err, nb201.ArchError) else
              str(err).replace(str(path), 'it'))
    if isinstance(err, UnicodeError):
      detail = 'not UTF-8 text'
    raise nb201.ArchError(
        f'--benchmark_file={path} is not an NB201 benchmark table ({detail}); pass a CSV with '
        f'arch_index (0..{nb201.NUM_ARCHS - 1}) and arch_str columns for all '
        f'{nb201.NUM_ARCHS} archs, e.g. {nb201.default_benchmark_file()}') from None


def _parse_arch_token(token: str, table_fn) -> np.ndarray:
  token = token.strip()
  if token.lstrip('-').isdecimal():
    index = int(token)
    if not 0 <= index < nb201.NUM_ARCHS:
      raise nb201.ArchError(f'arch index {index} out of range; NB201 indices are 0..'
                            f'{nb201.NUM_ARCHS - 1}')
    return table_fn().index_to_ops[index]
  return np.array(nb201.parse_arch_str(token))


def select_archs(spec: str, seed: int, benchmark_file=None) -> np.ndarray:
  """--archs -> op indices [M, 6]: all | random:N | file | arch string | index."""
  table = lambda: arch_index_table(benchmark_file, required=True)
  spec = spec.strip()
  if spec == 'all':
    found = arch_index_table(benchmark_file)
    return found.index_to_ops.copy() if found is not None else nb201.all_ops()
  if spec.startswith('random:'):
    count = spec.split(':', 1)[1]
    if not count.isdecimal():
      raise nb201.ArchError(f'bad --archs={spec!r}; use random:N with N a positive integer')
    return nb201.sample_ops(np.random.default_rng(seed), int(count))
  if spec.startswith('|') or spec.lstrip('-').isdecimal():
    return _parse_arch_token(spec, table)[None]
  path = pathlib.Path(spec)
  if not is_file(path):
    raise nb201.ArchError(f'--archs={spec!r} is not all, random:N, an arch string, an index or '
                          f'an existing file')
  lines = [l for l in read_text(path, 'archs').splitlines()
           if l.strip() and not l.startswith('#')]
  if not lines:
    raise nb201.ArchError(f'{path} lists no archs; put one arch string or index per line')
  rows = []
  for n, line in enumerate(lines, 1):
    try:
      rows.append(_parse_arch_token(line, table))
    except nb201.ArchError as err:
      raise nb201.ArchError(f'{path}:{n}: {err}') from None
  return np.stack(rows)


def load_images(data_dir, dataset: str, stand_in: str = 'noise'):
  """Training images for the proxies: CIFAR batches, or the train split of the user's image
  folder or .npz (`data_lib.load_train_test`, at 32x32: the samplers resize to the networks'
  input size); without --data_dir the `stand_in`: None (Gaussian inputs) for 'noise', crops of
  matplotlib's sample photographs for 'photos'.

  CIFAR-100 and ImageNet16-120 fall back to CIFAR-10 images when only those are present; the
  returned `source` says so."""
  if not data_dir:
    return data_lib.sample_photos() if stand_in == 'photos' else None
  if data_lib.data_format(data_dir, dataset) != 'cifar':
    images = data_lib.load_train_test(data_dir, dataset)[0]
    images.source += '; the proxies use its train split'
    return images
  try:
    images = data_lib.load_cifar(data_dir, 'cifar100' if dataset == 'cifar100' else 'cifar10')
    if dataset not in ('cifar10', 'cifar100'):  # ImageNet16-120 images are never shipped
      images.source += f' standing in for {dataset} (resized to its input size)'
    return images
  except data_lib.DataError:
    if dataset == 'cifar10':
      raise
    images = data_lib.load_cifar(data_dir, 'cifar10')
    images.source += f' standing in for {dataset} (its images are not in {data_dir})'
    return images


def enable_compile_cache():
  """Persistent XLA cache: reruns with the same shapes skip most of the compile time."""
  import jax
  path = os.environ.get('ZERONAS_JAX_CACHE',
                        str(pathlib.Path.home() / '.cache' / 'zeronas-mcu' / 'jax'))
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def workdirs_flag(values, flag: str, experiment: str) -> list:
  """A required comma-separated list of workdirs (absl DEFINE_list) as paths; one line, exit 2,
  when it is empty."""
  workdirs = [pathlib.Path(d) for d in values or [] if d]
  if not workdirs:
    fail(f'--{flag} is required: one or more --experiment={experiment} workdirs, comma-separated')
  return workdirs


def format_number(value, digits=None):
  """One CSV/JSON number format: '' for None, ints as ints, floats at full (round-trip)
  precision or `digits` significant digits, and inf / nan spelled out (never a silent blank)."""
  if value is None:
    return ''
  if isinstance(value, str):
    return value
  if isinstance(value, (bool, np.bool_, int, np.integer)):
    return int(value)
  value = float(value)
  if not np.isfinite(value):
    return str(value)
  return repr(value) if digits is None else f'{value:.{digits}g}'


def write_csv_atomic(path, header, rows):
  """A CSV written with `write_text_atomic`."""
  buffer = io.StringIO(newline='')
  writer = csv.writer(buffer)
  writer.writerow(header)
  writer.writerows(rows)
  write_text_atomic(path, buffer.getvalue())


@dataclasses.dataclass
class ScoresCsv:
  """A scores.csv of `--experiment=correlate` or `score` (any space): its rows with an arch."""
  path: pathlib.Path
  archs: np.ndarray                   # arch_str per row
  indices: np.ndarray                 # NB201 arch_index per row (-1: none, a plug-in space)
  columns: dict[str, np.ndarray]      # each registered proxy's values (float)
  flagged: dict[str, np.ndarray]      # each proxy's rows whose `_flag` column is not empty
  accuracy: dict[str, np.ndarray]     # the ACC_COLUMN columns the file has


def read_scores_csv(path) -> ScoresCsv:
  """Reads a scores.csv (or the one in a workdir); a missing file or no rows is a ValueError."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / 'scores.csv'
  try:
    with path.open(newline='') as fh:
      # (line, row) of the rows with an arch: the header is line 1
      numbered = [(n, r) for n, r in enumerate(csv.DictReader(fh), 2) if r.get('arch_str')]
  except (OSError, UnicodeDecodeError, csv.Error) as err:
    raise ValueError(f'cannot read {path} ({getattr(err, "strerror", None) or err}); pass a '
                     f'scores.csv written by --experiment=correlate or score, or its '
                     f'workdir') from None
  lines, rows = [n for n, _ in numbered], [r for _, r in numbered]
  fix = 'pass a scores.csv of a finished --experiment=correlate or score run'
  if not rows:
    raise ValueError(f'{path} has no rows with an arch_str; {fix}')
  names = [n for n in rows[0] if n in proxies_lib.REGISTRY]
  if not names:
    raise ValueError(f'{path} has no proxy column; {fix}')

  def number(line, row, name, kind=float):
    try:
      return kind(row[name])
    except (TypeError, ValueError):
      raise ValueError(f'{path}:{line}: {name} is {row[name]!r}, not a number; {fix}') from None

  column = lambda name: np.array([number(n, r, name) for n, r in zip(lines, rows)])
  indices = np.array([number(n, r, 'arch_index', int) if r.get('arch_index') else -1
                      for n, r in zip(lines, rows)])
  return ScoresCsv(
      path, np.array([r['arch_str'] for r in rows], object), indices,
      {n: column(n) for n in names},
      {n: np.array([bool(r.get(n + '_flag')) for r in rows]) for n in names},
      {c: column(c) for c in ACC_COLUMN.values() if c in rows[0]})


class _QuietOrbax(logging.Filter):
  def filter(self, record):
    return record.levelno >= logging.ERROR or 'orbax' not in record.pathname


def quiet_logs():
  """Silences the library logging that is noise to a user of an entry point: JAX's INFO that it
  found no TPU (and its multi-process setup), and Orbax's per-step INFO/WARNING through absl
  (train's checkpoints, also the finalist stage's), which would bury a one-line error."""
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  logging.getLogger('jax._src.distributed').setLevel(logging.WARNING)
  absl_logger = logging.getLogger('absl')
  if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietOrbax())

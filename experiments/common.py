"""Shared pieces of the experiments: arch selection, settings from flags, CSV output, errors."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import sys

import numpy as np

from engine import data as data_lib
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


def fail(message: str):
  """One line on stderr and exit code 2: the contract for every bad input."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(2)


def parse_flags_or_fail(argv):
  """absl's flag parsing for `app.run(main, flags_parser=...)`: a bad flag value, an unknown
  flag or a malformed number is one line and exit 2 (absl alone prints two lines, exits 1)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    message = str(err).removeprefix('flag ')  # absl: 'flag --seed=-1: -1 is not a ...'
    if isinstance(err, flags.UnrecognizedFlagError):
      message += '; see --help for the flags'
    fail(message)


def arch_index_table(benchmark_file=None, required=False):
  """The NB201 index table, or None when it is not available and not required."""
  path = pathlib.Path(benchmark_file) if benchmark_file else nb201.default_benchmark_file()
  if not path.is_file():
    if required or benchmark_file:
      raise nb201.ArchError(f'NB201 arch indices need the benchmark table, not found at {path}; '
                            f'pass --benchmark_file or set ZERONAS_DATA_DIR')
    return None
  return nb201.load_arch_index(str(path))


def _parse_arch_token(token: str, table_fn) -> np.ndarray:
  token = token.strip()
  if token.lstrip('-').isdigit():
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
    if not count.isdigit():
      raise nb201.ArchError(f'bad --archs={spec!r}; use random:N with N a positive integer')
    return nb201.sample_ops(np.random.default_rng(seed), int(count))
  if spec.startswith('|') or spec.lstrip('-').isdigit():
    return _parse_arch_token(spec, table)[None]
  path = pathlib.Path(spec)
  if not path.is_file():
    raise nb201.ArchError(f'--archs={spec!r} is not all, random:N, an arch string, an index or '
                          f'an existing file')
  lines = [l for l in path.read_text().splitlines() if l.strip() and not l.startswith('#')]
  if not lines:
    raise nb201.ArchError(f'{path} lists no archs; put one arch string or index per line')
  rows = []
  for n, line in enumerate(lines, 1):
    try:
      rows.append(_parse_arch_token(line, table))
    except nb201.ArchError as err:
      raise nb201.ArchError(f'{path}:{n}: {err}') from None
  return np.stack(rows)


def settings_from_flags(f) -> proxies_lib.ScoreSettings:
  return proxies_lib.ScoreSettings.from_config(f)


def load_images(data_dir, dataset: str, stand_in: str = 'noise'):
  """CIFAR training images for the proxies; without --data_dir the `stand_in`: None (Gaussian
  inputs) for 'noise', crops of matplotlib's sample photographs for 'photos'.

  CIFAR-100 and ImageNet16-120 fall back to CIFAR-10 images when only those are present; the
  returned `source` says so."""
  if not data_dir:
    return data_lib.sample_photos() if stand_in == 'photos' else None
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
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (int, np.integer)):
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
  """A scores.csv of `--experiment=correlate` or `score`, rows with an arch_index only."""
  path: pathlib.Path
  indices: np.ndarray                 # NB201 arch_index per row
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
      rows = list(csv.DictReader(fh))
  except OSError as err:
    raise ValueError(f'cannot read {path} ({err.strerror}); pass a scores.csv written by '
                     f'--experiment=correlate or score, or its workdir') from None
  rows = [r for r in rows if r.get('arch_index')]
  if not rows:
    raise ValueError(f'{path} has no rows with an arch_index; pass a scores.csv of a finished '
                     f'--experiment=correlate or score run')
  names = [n for n in rows[0] if n in proxies_lib.REGISTRY]
  column = lambda name: np.array([float(r[name]) for r in rows])
  return ScoresCsv(
      path, np.array([int(r['arch_index']) for r in rows]),
      {n: column(n) for n in names},
      {n: np.array([bool(r.get(n + '_flag')) for r in rows]) for n in names},
      {c: column(c) for c in ACC_COLUMN.values() if c in rows[0]})

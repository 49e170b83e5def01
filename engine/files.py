"""Atomic file writes, shared by the experiments and deploy: a crash or a kill leaves either the
old file or the new one, never half of one (sweeps resume from what is on disk); and a check that
an orbax checkpoint's index can be read (`check_ocdbt`)."""
from __future__ import annotations

import errno
import os
import pathlib
import tempfile


def write_atomic(path, write, binary: bool = True, suffix: str = '.tmp'):
  """`write(file)` into a temporary file beside `path`, renamed into place when complete.
  `suffix` ends the temporary name (a writer that picks its format by extension needs it)."""
  path = pathlib.Path(path)
  if os.path.lexists(path) and not path.is_file():
    # os.replace would swap out a device (/dev/null) and fail late on a folder: refuse first
    code = errno.EISDIR if path.is_dir() else errno.EEXIST
    raise OSError(code, 'exists and is not a regular file' if code == errno.EEXIST else
                  os.strerror(code), str(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
  try:
    # mkstemp makes the file 0600; give it the mode any new file gets here (the umask's), so a
    # workdir shared by several hosts or users reads alike
    os.chmod(tmp, 0o666 & ~_umask())
    with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _umask() -> int:
  try:  # Linux says it without changing it (setting it races with other threads' files)
    with open('/proc/self/status') as status:
      return next(int(line.split()[1], 8) for line in status if line.startswith('Umask:'))
  except (OSError, StopIteration, ValueError, IndexError):
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str):
  """`text` written with `write_atomic`."""
  write_atomic(path, lambda f: f.write(text), binary=False)


def write_bytes_atomic(path, data: bytes):
  """`data` written with `write_atomic`."""
  write_atomic(path, lambda f: f.write(data))


def check_ocdbt(folder):
  """Reads the OCDBT index (manifest and b-tree) of each item of one orbax checkpoint,
  `folder`/<item>/manifest.ocdbt, synchronously and without writing; tensorstore's ValueError
  (DATA_LOSS, OUT_OF_RANGE: naming the file) when one is damaged.

  Why before a restore: orbax restores every array at once on its own asyncio loop; when the
  manifest they all read is damaged, the restore fails on the first (one clean error), but the
  others finish after that loop has closed and tensorstore prints an 'Event loop is closed'
  traceback for each, up to process exit. Skipping the exit (os._exit) would not stop the ones
  printed while the process still runs, and hiding stderr would hide real errors; reading the
  index here, with no asyncio involved, fails before orbax starts any of them."""
  import tensorstore as ts  # orbax's own storage layer (its dependency)
  for manifest in sorted(pathlib.Path(folder).glob('*/manifest.ocdbt')):
    base = f'file://{manifest.parent.absolute()}/'
    ts.KvStore.open({'driver': 'ocdbt', 'base': base}).result().list().result()

"""Resumable chunked sweeps, on one process or many (the one utility of correlate and the
ground-truth sweep).

A sweep cuts N items into chunks of a fixed size, always the same way. Each finished chunk is one
file in the chunk folder, written all-or-nothing (temp file + rename), so a killed sweep resumes
at the chunks that are missing, losing and duplicating nothing. The caller says how a chunk is
computed (`work`), saved and loaded; the sweep says which chunks are left.

Several processes (`Share`): chunk i belongs to process i mod P, a disjoint, deterministic share
that does not depend on timing, so a restarted process recomputes exactly the missing chunks of
its own share. Every process waits until the whole folder is complete before it returns, and
only process 0 writes the sweep's outputs (`Share.writes_outputs`); its merge reads the same
chunk files a single-process run writes, so the outputs are the same. `connect` starts the
processes on `jax.distributed` (a coordinator address, or the cluster auto-detection JAX does
for SLURM and Cloud TPU). Under jax.distributed, a process that dies takes the job down (the
coordinator stops every process that lost a peer): restart the whole job with the same command
and each process resumes its share.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable

from tqdm import tqdm

# Test hook: end the process (as a crash would) after it wrote this many chunks.
CRASH_ENV = 'ZERONAS_SWEEP_CRASH_AFTER'
# Every process polls the chunk folder at this interval while it waits for the other shares.
POLL_S = 1.0
# How long jax.distributed waits for every process to connect.
CONNECT_TIMEOUT_S = 120


class SimulatedCrash(RuntimeError):
  """Raised by the CRASH_ENV test hook."""


class DistributedError(ValueError):
  """Bad multi-process settings, or processes that could not connect; one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Share:
  """Which chunks this process computes: chunk i when i mod num_processes == process_id."""
  process_id: int = 0
  num_processes: int = 1

  def owns(self, chunk: int) -> bool:
    return chunk % self.num_processes == self.process_id

  @property
  def writes_outputs(self) -> bool:
    return self.process_id == 0

  def __str__(self):
    return f'process {self.process_id} of {self.num_processes}'


def chunk_starts(n: int, chunk_size: int) -> range:
  return range(0, n, chunk_size)


def chunk_path(chunk_dir, i: int) -> pathlib.Path:
  """Chunk i's file in `chunk_dir`, without a suffix (each caller adds its own)."""
  return pathlib.Path(chunk_dir) / f'chunk_{i:05d}'


def run(n: int, chunk_size: int, chunk_dir, work: Callable, save: Callable, load: Callable,
        share: Share = Share(), progress: bool = True, unit: str = 'item',
        log: Callable = print) -> list:
  """Every chunk's part, in order.

  `work(start, stop, advance)` computes items [start, stop) (calling `advance(k)` after k of them
  if it can); `save(path, start, stop, part)` writes a part (atomically); `load(path, start,
  stop)` reads one back, or None when the file is unreadable or belongs to other items (then it
  is computed again). `path` is the chunk's file without a suffix; the caller adds its own."""
  chunk_dir = pathlib.Path(chunk_dir)
  chunk_dir.mkdir(parents=True, exist_ok=True)
  starts = chunk_starts(n, chunk_size)
  stop_of = lambda i: min(starts[i] + chunk_size, n)
  path_of = lambda i: chunk_path(chunk_dir, i)
  parts = [load(path_of(i), starts[i], stop_of(i)) for i in range(len(starts))]
  mine = [i for i in range(len(starts)) if share.owns(i)]
  todo = [i for i in mine if parts[i] is None]
  done = sum(stop_of(i) - starts[i] for i in mine if i not in todo)
  who = f'{share}: ' if share.num_processes > 1 else ''
  if done:
    log(f'{who}resuming: {len(mine) - len(todo)} of {len(mine)} chunks ({done} {unit}s) '
        f'already done')
  crash_after = int(os.environ.get(CRASH_ENV, '0') or 0)
  total = sum(stop_of(i) - starts[i] for i in mine)
  with tqdm(total=total, initial=done, unit=unit, disable=not progress, file=sys.stderr) as bar:
    for count, i in enumerate(todo, 1):
      reported = [0]

      def advance(k, reported=reported):
        reported[0] += k
        bar.update(k)

      part = work(starts[i], stop_of(i), advance)
      bar.update(stop_of(i) - starts[i] - reported[0])  # a `work` that reports nothing
      save(path_of(i), starts[i], stop_of(i), part)
      parts[i] = part
      if count == crash_after:
        raise SimulatedCrash(f'{CRASH_ENV}={crash_after}: stopping after {count} chunks')
  missing = [i for i, p in enumerate(parts) if p is None]
  if missing:
    log(f'{who}share done; waiting for {len(missing)} chunks of the other processes')
  while missing:  # the other shares: a dead peer ends the job (jax.distributed), not a hang
    time.sleep(POLL_S)
    for i in missing:
      parts[i] = load(path_of(i), starts[i], stop_of(i))
    missing = [i for i in missing if parts[i] is None]
  return parts


def finished(n: int, chunk_size: int, chunk_dir, load: Callable) -> list:
  """Per chunk: its part where it is on disk, else None (nothing is computed)."""
  chunk_dir = pathlib.Path(chunk_dir)
  starts = chunk_starts(n, chunk_size)
  return [load(chunk_path(chunk_dir, i), s, min(s + chunk_size, n))
          for i, s in enumerate(starts)]


def parse_address(address: str) -> tuple[str, int]:
  """host:port of a coordinator, or a DistributedError naming the fix."""
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
    raise DistributedError(f'--coordinator_address={address!r} is not host:port (a port in '
                           f'1..65535), e.g. --coordinator_address=node0:12355, or auto for '
                           f'SLURM/TPU cluster detection')
  return host, int(port)


def connect(coordinator_address: str = '', num_processes: int = 1,
            process_id: int = 0) -> Share:
  """This process's share of a sweep. One process (the default) needs nothing; with
  --num_processes > 1 every process calls jax.distributed.initialize with the same coordinator
  (process 0 hosts it) and its own --process_id; `auto` lets JAX detect the cluster (SLURM,
  Cloud TPU) and read the count and id from it."""
  auto = coordinator_address == 'auto'
  if num_processes < 1:
    raise DistributedError(f'--num_processes must be at least 1, got {num_processes}')
  if not auto and not 0 <= process_id < num_processes:
    raise DistributedError(f'--process_id={process_id} is out of range for --num_processes='
                           f'{num_processes}; use 0..{num_processes - 1}')
  if not auto and num_processes == 1:
    if coordinator_address:
      parse_address(coordinator_address)
    return Share()
  if not auto:
    if not coordinator_address:
      raise DistributedError(f'--num_processes={num_processes} needs --coordinator_address='
                             f'host:port (process 0\'s host, a free port), or auto on SLURM/TPU')
    parse_address(coordinator_address)
  import jax
  kwargs = {} if auto else dict(coordinator_address=coordinator_address,
                                num_processes=num_processes, process_id=process_id)
  try:
    jax.distributed.initialize(initialization_timeout=CONNECT_TIMEOUT_S, **kwargs)
  except (RuntimeError, ValueError) as err:  # bind failure, timeout, no cluster detected
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    raise DistributedError(f'jax.distributed could not connect ({first[:200]}); check '
                           f'--coordinator_address (process 0\'s host and a free port), that '
                           f'all {num_processes if not auto else ""} processes were started, '
                           f'and --process_id') from None
  return Share(jax.process_index(), jax.process_count())

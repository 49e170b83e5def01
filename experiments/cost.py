"""`--experiment=cost`: MCU cost (SRAM, flash, latency, energy, MACs, params) per arch, one CSV
row each, for a (device, runtime) pair (`--list_devices`, from any experiment, prints the catalog).

The numbers come from `hardware` through each search space's `cost_rows`; this module only picks
the archs, batches NB201 for a progress bar, and writes the CSV.
"""
from __future__ import annotations

import pathlib

import numpy as np
from tqdm import tqdm

import hardware
from experiments import common

COST_COLUMNS = ('sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params')
_NB201_CHUNK = 1024  # archs per jitted call; a fixed shape, so one compile for any batch


def run(f, workdir=None):
  device = hardware.get_device(f.device)     # ValueError naming the valid devices
  runtime = hardware.get_runtime(f.runtime)  # ValueError naming the valid runtimes
  key_columns, rows = _SPACES[f.search_space](f, device.name, runtime.name)

  out = [[*keys, *(common.format_number(row[c], digits=7) for c in COST_COLUMNS),
          int(row['fits_sram'] and row['fits_flash'])] for keys, row in rows]
  output = pathlib.Path(workdir or '.') / f.output
  common.write_csv_atomic(output, [*key_columns, *COST_COLUMNS, 'fits'], out)

  fit = sum(r[-1] for r in out)
  no_sram = sum(not row['fits_sram'] for _, row in rows)
  no_flash = sum(not row['fits_flash'] for _, row in rows)
  print(f'{len(out)} {f.search_space} archs on {device.name} ({device.sram_kb:g} KB SRAM, '
        f'{device.flash_kb:g} KB flash) with {runtime.name}: {fit} fit'
        f' ({no_sram} exceed SRAM, {no_flash} exceed flash)')
  if rows:
    lat = np.array([row['latency_ms'] for _, row in rows])
    print(f'latency {lat.min():.4g}..{lat.max():.4g} ms; wrote {output}')


def _nb201(f, device, runtime):
  from search_spaces import nb201
  from search_spaces.nb201 import graph as nb201_graph
  config = nb201.NB201Config.for_dataset(f.dataset)
  ops = common.select_archs(f.archs, f.seed, f.benchmark_file)
  table = common.arch_index_table(f.benchmark_file)
  indices = table.ops_to_index(ops).tolist() if table is not None else [''] * len(ops)
  names = [nb201.format_arch_str(o) for o in ops]
  masks = nb201.ops_to_mask(ops)
  rows = []
  with tqdm(total=len(ops), unit='arch', disable=not f.progress or len(ops) <= _NB201_CHUNK,
            file=None) as bar:
    for start in range(0, len(ops), _NB201_CHUNK):
      chunk = masks[start:start + _NB201_CHUNK]
      n = len(chunk)
      if len(ops) > _NB201_CHUNK and n < _NB201_CHUNK:  # pad: reuse the compiled shape
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], _NB201_CHUNK - n, 0)])
      part = nb201_graph.cost_rows(chunk, config, device, runtime,
                                   names=names[start:start + n] + [''] * (len(chunk) - n))
      rows += part[:n]
      bar.update(n)
  if table is None:
    print('note: arch_index left blank: NB201 benchmark table not found (pass --benchmark_file)')
  cut = int((~np.asarray(nb201.is_connected(ops), bool)).sum())
  if cut:  # they cost next to nothing and "fit", but compute a constant: no search picks them
    print(f'note: {cut} of the {len(ops)} archs have no path from input to output (their costs '
          f'are the stem and head alone); searches never pick them')
  return ('arch_index', 'arch_str'), [((i, r['arch']), r) for i, r in zip(indices, rows)]


def _mlperf_tiny(f, device, runtime):
  from search_spaces import mlperf_tiny
  if not _archs_given(f):  # the default, or given: the config cannot tell them apart
    print(f'note: --archs={f.archs} (the default) costs all {len(mlperf_tiny.NAMES)} MLPerf '
          f'Tiny models: mlperf_tiny has no arch space to sample ({", ".join(mlperf_tiny.NAMES)})')
  archs = f.archs if _archs_given(f) else 'all'
  try:
    names = mlperf_tiny.parse_archs(archs.strip())
  except ValueError as err:
    raise common.UsageError(f'--archs={archs}: {err}; --search_space=mlperf_tiny takes all or '
                            f'model names, e.g. --archs=ic,kws (not random:N, a file or an '
                            f'index)') from None
  rows = mlperf_tiny.cost_rows(names, device, runtime)
  return ('arch',), [((r['arch'],), r) for r in rows]


def _plugin(f, device, runtime):
  """Any space registered in search_spaces.registry (--archs by `SearchSpace.parse`)."""
  from search_spaces import registry
  space = registry.get(f.search_space)
  archs = space.parse(f.archs, f.seed)
  rows = hardware.cost_rows({space.encode(a): space.lower(a) for a in archs}, device, runtime)
  return ('arch',), [((r['arch'],), r) for r in rows]


_SPACES = {'nb201': _nb201, 'mlperf_tiny': _mlperf_tiny, 'tinycnn': _plugin, 'mbv2': _plugin}


def _archs_given(f) -> bool:
  """Whether --archs names models; its default (random:64) means all four MLPerf Tiny models."""
  return f.archs != 'random:64'

"""`--experiment=score`: training-free proxy scores for a set of archs of any registered space,
one CSV row each, through the space's scorer (the one the searchers use).

With --workdir the scoring is a resumable sweep (`engine.sweep`, correlate's chunks and
manifest): chunks of --chunk_size archs in WORKDIR/chunks, the CSV written to WORKDIR/--output at
the end; a rerun after a stop scores only the missing chunks, and --num_processes shares the
chunks among processes or hosts (docs/correlation.md, "Several processes or hosts")."""
from __future__ import annotations

import pathlib
import time

import numpy as np
from tqdm import tqdm

from engine.proxies import aggregate
from engine.proxies import ntk as ntk_lib
from engine import search as search_lib
from engine import sweep as sweep_lib
from experiments import common
from search_spaces import registry


def select(space, f) -> list:
  """--archs as archs of `space`: NB201-style benchmark spaces take indices too
  (`common.select_archs`); every space takes all, random:N (drawn with --seed), its own arch
  strings, comma-separated, and a file of them (`SearchSpace.parse`)."""
  if space.datasets is not None:
    return space.relax.from_rows((), common.select_archs(f.archs, f.seed, f.benchmark_file))
  return space.parse(f.archs, f.seed)


def score_by_group(space, scorer, archs, k, progress=None) -> dict:
  """{name: [N]} of archs of any groups, each group in compiled calls of `k` candidates."""
  scores: dict = {}
  for group, idx in search_lib.group_positions(space, archs).items():
    part = scorer.score_archs(group, [archs[i] for i in idx], k, progress)
    for name, values in part.items():
      scores.setdefault(name, np.zeros(len(archs), np.asarray(values).dtype))[idx] = values
  return scores


def run(f, workdir=None):
  space = registry.get(f.search_space)
  if f.num_processes > 1 and not workdir:
    raise ValueError('--num_processes > 1 needs --workdir: a folder every process reaches, for '
                     'the chunks')
  # before anything touches a JAX backend: jax.distributed must start first
  share = sweep_lib.connect(f.coordinator_address, f.num_processes, f.process_id)
  archs = select(space, f)
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  common.enable_compile_cache()  # a rerun with the same proxies and sizes skips the compile
  proxy_names, aggregates = aggregate.split(f.proxies)
  scorer = search_lib.make_scorer(space, proxy_names, f, f.seed, images)
  print(f'inputs: {images.source if images else "N(0, 1) Gaussian noise (no --data_dir given)"}')
  print(f'scoring {len(archs)} {space.name} archs with {", ".join(scorer.names)}, '
        f'{f.batch_candidates or "auto"} per compiled call'
        + (f'; chunks of {f.chunk_size} in {pathlib.Path(workdir) / "chunks"}' if workdir else ''))
  start = time.perf_counter()
  if workdir:  # resumable, on one process or many: correlate's chunks and manifest
    from experiments import correlate
    import jax
    workdir = pathlib.Path(workdir)
    runs, expand = correlate.per_network(space, scorer, archs)
    ops = space.to_array(runs)
    devices = jax.local_devices()
    correlate.check_shared_manifest(workdir, correlate.run_config(
        proxy_names, scorer.settings, f, images, ops, len(devices), devices[0].platform,
        job='score'), share)
    scores = correlate.sweep(
        ops, f.chunk_size, workdir / 'chunks',
        lambda a, b, advance: score_by_group(space, scorer, runs[a:b], f.batch_candidates,
                                             advance), scorer, f.progress, share)
    if not share.writes_outputs:
      print(f'{share}: every chunk is on disk; process 0 writes {workdir / f.output}')
      return
    scores = expand(scores)[1]
  else:
    with tqdm(total=len(archs), unit='arch', disable=not f.progress, file=None) as bar:
      scores = score_by_group(space, scorer, archs, f.batch_candidates, bar.update)
  wall = time.perf_counter() - start

  bench = common.arch_index_table(f.benchmark_file) if space.datasets is not None else None
  flagged = [n for n in scorer.names if n + '_flag' in scores]
  header = (['arch_index'] if space.datasets is not None else []) + ['arch_str']
  for name in scorer.names:
    header += [name] + ([name + '_flag'] if name in flagged else [])
  for agg in aggregates:
    header += [agg.name, agg.name + '_flag']
  valid = np.ones(len(archs), bool)
  if space.relax is not None and space.relax.valid is not None:
    valid = np.asarray(space.relax.valid(space.to_array(archs)), bool)
    header.append('connected')
  indices = bench.ops_to_index(space.to_array(archs)) if bench is not None else None
  combined = {agg.name: aggregate.compute(agg, scores, _flags(scores)) for agg in aggregates}
  rows = []
  for i, arch in enumerate(archs):
    row = ([indices[i] if indices is not None else ''] if space.datasets is not None else [])
    row.append(space.encode(arch))
    for name in scorer.names:
      row.append(common.format_number(float(scores[name][i])))
      if name in flagged:
        row.append(ntk_lib.FLAG_NAMES[int(scores[name + '_flag'][i])])
    for agg in aggregates:
      value, why = combined[agg.name]
      row += [common.format_number(float(value[i])), '+'.join(why[i])]
    if 'connected' in header:
      row.append(int(valid[i]))
    rows.append(row)
  output = pathlib.Path(workdir or '.') / f.output
  common.write_csv_atomic(output, header, rows)

  print(f'wrote {len(rows)} rows to {output} in {wall:.1f} s '
        f'(compile {scorer.compile_s:.1f} s, run {scorer.run_s:.1f} s = '
        f'{scorer.run_s / max(len(archs), 1):.3f} s/arch)')
  for name in flagged:
    flags = scores[name + '_flag']
    if flags.any():
      counts = {ntk_lib.FLAG_NAMES[v]: int((flags == v).sum()) for v in np.unique(flags) if v}
      print(f'flagged {name}: {counts}')
  if space.datasets is not None and bench is None:
    print('note: arch_index left blank: NB201 benchmark table not found (pass --benchmark_file)')


def _flags(scores) -> dict:
  """proxy -> its flag array, for the proxies that have one."""
  return {k[:-len('_flag')]: v for k, v in scores.items() if k.endswith('_flag')}

"""`--experiment=score`: training-free proxy scores for a set of NB201 archs, one CSV row each."""
from __future__ import annotations

import pathlib
import time

import numpy as np
from tqdm import tqdm

from engine import aggregate
from engine import ntk as ntk_lib
from engine import scoring
from experiments import common
from search_spaces import nb201


def run(f, workdir=None):
  settings = common.settings_from_flags(f)
  ops = common.select_archs(f.archs, f.seed, f.benchmark_file)
  table = common.arch_index_table(f.benchmark_file)
  images = common.load_images(f.data_dir, f.dataset, f.stand_in_inputs)
  common.enable_compile_cache()  # a rerun with the same proxies and sizes skips the compile
  print(f'inputs: {images.source if images else "N(0, 1) Gaussian noise (no --data_dir given)"}')
  proxy_names, aggregates = aggregate.split(f.proxies)
  scorer = scoring.Scorer(proxy_names, settings, seed=f.seed, images=images,
                          batch_candidates=f.batch_candidates,
                          candidate_chunk=f.candidate_chunk)
  names = [p.name for p in scorer.proxies]
  print(f'scoring {len(ops)} archs with {", ".join(names)} on {len(scorer.devices)} '
        f'{scorer.devices[0].platform} device(s), {scorer.batch_candidates} per call')
  start = time.perf_counter()
  with tqdm(total=len(ops), unit='arch', disable=not f.progress, file=None) as bar:
    scores = scorer.score_ops(ops, progress=bar.update)
  wall = time.perf_counter() - start

  header = ['arch_index', 'arch_str']
  for p in scorer.proxies:
    header.append(p.name)
    if p.kind == 'network':
      header.append(p.name + '_flag')
  for agg in aggregates:
    header += [agg.name, agg.name + '_flag']
  header.append('connected')
  indices = table.ops_to_index(ops) if table is not None else [''] * len(ops)
  connected = nb201.is_connected(ops)
  combined = {agg.name: aggregate.compute(agg, scores, _flags(scores)) for agg in aggregates}
  rows = []
  for i, arch in enumerate(ops):
    row = [indices[i], nb201.format_arch_str(arch)]
    for p in scorer.proxies:
      row.append(common.format_number(float(scores[p.name][i])))
      if p.kind == 'network':
        row.append(ntk_lib.FLAG_NAMES[int(scores[p.name + '_flag'][i])])
    for agg in aggregates:
      value, flagged = combined[agg.name]
      row += [common.format_number(float(value[i])), '+'.join(flagged[i])]
    row.append(int(connected[i]))
    rows.append(row)
  output = pathlib.Path(workdir or '.') / f.output
  common.write_csv_atomic(output, header, rows)

  t = scorer.timing
  print(f'wrote {len(rows)} rows to {output} in {wall:.1f} s '
        f'(compile {t.compile_s:.1f} s, run {t.run_s:.1f} s = '
        f'{t.run_s / max(t.scored, 1):.3f} s/arch)')
  for p in scorer.proxies:
    if p.kind == 'network':
      flags = scores[p.name + '_flag']
      if flags.any():
        counts = {ntk_lib.FLAG_NAMES[v]: int((flags == v).sum()) for v in np.unique(flags) if v}
        print(f'flagged {p.name}: {counts}')
  if table is None:
    print('note: arch_index left blank: NB201 benchmark table not found (pass --benchmark_file)')


def _flags(scores) -> dict:
  """proxy -> its flag array, for the proxies that have one."""
  return {k[:-len('_flag')]: v for k, v in scores.items() if k.endswith('_flag')}

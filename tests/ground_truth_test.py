"""The ground-truth sweep: stratified order, and a killed sweep resumes without losing or
duplicating rows."""
import collections

from engine import ground_truth as gt
from search_spaces import registry


def test_every_prefix_is_stratified():
  space = registry.get('tinycnn')
  order = gt.stratified_order(space)
  assert len(order) == 1032 and len(set(order)) == 1032
  counts = collections.Counter(space.stratum(a) for a in order[:72])  # 6 per stratum
  assert len(counts) == 12 and max(counts.values()) - min(counts.values()) <= 1


def test_jobs_put_seed_zero_first():
  jobs = gt.jobs(registry.get('tinycnn'), 5, 2, 2)
  assert [s for _, s in jobs] == [0] * 5 + [1, 1, 2, 2]
  assert [a for a, _ in jobs[5:7]] == [a for a, _ in jobs[:2]]


def test_sweep_resumes_without_losing_or_duplicating_rows(tmp_path, data_dir):
  space = registry.get('tinycnn')
  cifar = data_dir / 'cifar10'
  cfg = gt.GroundTruthConfig(epochs=1, batch_size=64)
  first = gt.run_sweep(space, tmp_path, cifar, num_archs=3, noise_archs=0, noise_seeds=0,
                       chunk=1, cfg=cfg, max_images=256)
  (tmp_path / 'chunks' / '0001.csv').unlink()  # as if killed while training the second chunk
  again = gt.run_sweep(space, tmp_path, cifar, num_archs=3, noise_archs=0, noise_seeds=0,
                       chunk=1, cfg=cfg, max_images=256)
  key = lambda rows: [(r['arch'], r['seed'], r['test_acc']) for r in rows]
  assert key(again) == key(first) and len({r['arch'] for r in again}) == 3

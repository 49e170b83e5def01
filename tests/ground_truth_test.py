"""The ground-truth sweep: stratified order, and a killed sweep resumes without losing or
duplicating rows."""
import collections
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from engine.train import data as data_lib
from engine.train import ground_truth as gt
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
  (tmp_path / 'chunks' / 'chunk_00001.csv').unlink()  # as if killed while training the second chunk
  again = gt.run_sweep(space, tmp_path, cifar, num_archs=3, noise_archs=0, noise_seeds=0,
                       chunk=1, cfg=cfg, max_images=256)
  key = lambda rows: [(r['arch'], r['seed'], r['test_acc'], r['flag']) for r in rows]
  assert key(again) == key(first) and len({r['arch'] for r in again}) == 3
  # a smaller job reads only its own chunks; another training length trains again
  fewer = gt.run_sweep(space, tmp_path, cifar, num_archs=2, noise_archs=0, noise_seeds=0,
                       chunk=1, cfg=cfg, max_images=256)
  assert key(fewer) == key(first)[:2]
  longer = gt.run_sweep(space, tmp_path, cifar, num_archs=1, noise_archs=0, noise_seeds=0,
                        chunk=1, cfg=dataclasses.replace(cfg, epochs=2), max_images=256)
  assert [r['epochs'] for r in longer] == ['2']


# ----------------------------------------------------------------------------- row flags

_LABELS = np.arange(200) % 10


def _images():
  """A balanced stand-in split whose images carry their label in one pixel (0, 20, ..., 180)."""
  images = np.zeros((len(_LABELS), 8, 8, 3), np.uint8)
  images[:, 0, 0, 0] = 20 * _LABELS
  return data_lib.ImageSet(images, _LABELS.copy(), 'stand-in')


def _net(kind):
  """A stand-in train_net: 'right' reads the label off its pixel, 'constant' always answers
  class 3, 'nan' diverges. One parameter, so the training loop has something to update."""
  centres = jnp.asarray(data_lib.normalize(
      np.stack([20 * np.arange(10)] * 3, -1).astype(np.uint8))[:, 0])

  def apply(params, x):
    w = params['w']
    if kind == 'right':
      return -(x[:, 0, 0, 0, None] - centres[None]) ** 2 + 0 * w
    if kind == 'constant':
      return jnp.zeros((len(x), 10)).at[:, 3].set(1.0) + 0 * w
    return jnp.full((len(x), 10), jnp.nan) * w
  return lambda arch: (lambda key: {'w': jnp.ones(())}, apply)


@pytest.mark.parametrize('kind, flag', [('right', ''), ('constant', 'at_chance'),
                                        ('nan', 'nonfinite')])
def test_runs_at_chance_or_diverged_are_flagged(kind, flag):
  cfg = gt.GroundTruthConfig(epochs=1, batch_size=50)
  row = gt.train_one(_net(kind), 'arch', _images(), _images(), cfg, seed=0)
  assert row['flag'] == flag
  if kind == 'right':
    assert row['test_acc'] == 100.0


def _write(path, header, rows):
  path.write_text('\n'.join([','.join(header)] + [','.join(map(str, r)) for r in rows]) + '\n')


def test_readers_skip_and_count_flagged_rows(tmp_path):
  space = registry.get('tinycnn')
  path = tmp_path / 'gt.csv'
  _write(path, ['arch', 'seed', 'test_acc', 'flag'],
         [['a', 0, 48.1, ''], ['b', 0, 15.0, 'at_chance'], ['c', 0, 'nan', 'nonfinite'],
          ['d', 0, 'nan', '']])  # nan is never an accuracy, whatever its flag says
  notes = []
  table = gt.load_ground_truth(space, path, log=notes.append)
  assert table == {'a': {0: 48.1}}
  assert table.flagged == {'at_chance': 1, 'nonfinite': 2}
  assert notes == [f'note: 3 runs of {path} are flagged (1 at_chance, 2 nonfinite) and are not '
                   f'used as accuracies']


def test_tables_without_the_flag_column_are_flagged_by_the_same_rule(tmp_path):
  space = registry.get('tinycnn')
  path = tmp_path / 'old.csv'
  # on the sweep's 10,000 test images the chance ceiling is 10.94%
  _write(path, ['arch', 'stratum', 'seed', 'test_acc'],
         [['a', 's', 0, 48.1], ['a', 's', 1, 10.9], ['b', 's', 0, 11.2], ['c', 's', 0, 'nan']])
  table = gt.load_ground_truth(space, path, log=lambda _: None)
  assert table == {'a': {0: 48.1}, 'b': {0: 11.2}}
  assert table.flagged == {'at_chance': 1, 'nonfinite': 1}
  (tmp_path / 'chunks').mkdir()
  path.rename(tmp_path / 'chunks' / '0000.csv')
  assert [r['flag'] for r in gt.collect(tmp_path)] == ['', 'at_chance', '', 'nonfinite']


def test_the_shipped_ground_truth_has_no_flagged_row():
  table = gt.load_ground_truth(registry.get('tinycnn'), log=pytest.fail)
  assert not table.flagged and sum(len(seeds) for seeds in table.values()) == 360  # every row


def test_a_damaged_chunk_is_named(tmp_path):
  (tmp_path / 'chunks').mkdir()
  (tmp_path / 'chunks' / 'chunk_00000.csv').write_text('arch,seed,test_acc\nf8k3-relu-max,0,abc\n')
  with pytest.raises(ValueError, match=r'chunk_00000.csv is damaged .* delete it'):
    gt.collect(tmp_path)

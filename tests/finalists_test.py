"""The finalist stage (engine/search/finalists.py): the validation split, the choice by
validation accuracy, reuse of finished runs, failed finalists, and one real training."""
import dataclasses
import json

import numpy as np
import pytest

from engine.train import data as data_lib
from engine.train import train as train_lib
from engine.search import finalists as fin_lib


def _images(n_per_class, classes, size=32, seed=0):
  """A learnable set: class c's images are bright in a class-specific colour, plus noise."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(classes), n_per_class)
  colours = rng.integers(0, 256, (classes, 3))
  x = colours[labels][:, None, None, :] + rng.normal(0, 20, (len(labels), size, size, 3))
  return np.clip(x, 0, 255).astype(np.uint8), labels


def test_the_validation_split_holds_out_a_fifth_of_each_class_of_the_training_images():
  x, y = _images(50, 3)
  train_set = data_lib.ImageSet(x, y, 'test images', num_classes=3, format='npz')
  train, val = fin_lib.split(train_set)
  assert len(train.labels) + len(val.labels) == len(y)
  assert np.bincount(val.labels).tolist() == [10, 10, 10]
  # disjoint: every image is in exactly one part (the images are distinct)
  rows = {a.tobytes() for a in train.images}
  assert not rows & {a.tobytes() for a in val.images}
  assert 'finalist validation part, 30 images' in val.source


class _FakeTrainer:
  """Stands in for engine.train.train: a fixed validation accuracy per arch (None: diverges);
  writes results.json as the real one does, and counts its calls."""

  def __init__(self, accuracies):
    self.accuracies, self.calls = accuracies, []

  def __call__(self, cfg, data_dir, workdir, progress=True, log=print, data=None):
    assert data is not None and data_dir is None  # the stage's own split, never the test set
    assert 'finalist training part' in data[0].source
    assert 'finalist validation part' in data[1].source
    self.calls.append(cfg.arch)
    acc = self.accuracies[cfg.arch]
    if acc is None:
      raise train_lib.TrainingDiverged('training diverged: test')
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'results.json').write_text(json.dumps({'float_test_acc': acc}))
    return {'float_test_acc': acc}


@pytest.fixture
def stage(tmp_path, monkeypatch):
  x, y = _images(120, 2)  # at least one batch (128) of finalist training images
  np.savez(tmp_path / 'data.npz', x=x, y=y)
  fake = _FakeTrainer({'f8k3-relu-max': 0.50, 'f16k3-relu-max': 0.70, 'f32k3-relu-max': 0.70,
                       'f8k5-relu-max': 0.90, 'f16k5-relu-max': None, 'f32k5-relu-max': None})
  monkeypatch.setattr(train_lib, 'train', fake)
  out = fin_lib.Finalists('tinycnn', 'cifar10', tmp_path / 'data.npz', fin_lib.Settings(k=3),
                          tmp_path / 'finalists', log=lambda *_: None)
  return out, fake


def test_the_best_by_validation_accuracy_wins_the_first_on_ties_and_only_k_train(stage):
  stage, fake = stage
  best, records = stage.choose(['f8k3-relu-max', 'f16k3-relu-max', 'f32k3-relu-max',
                                'f8k5-relu-max'])
  assert best == 1  # 0.70 twice: the better by the objective (listed first)
  assert [r['val_acc'] for r in records] == [0.50, 0.70, 0.70]
  assert [r['objective_rank'] for r in records] == [1, 2, 3]
  assert fake.calls == ['f8k3-relu-max', 'f16k3-relu-max', 'f32k3-relu-max']  # not the 4th


def test_a_finished_finalist_is_read_back_not_trained_again(stage):
  stage, fake = stage
  stage.choose(['f8k3-relu-max', 'f8k5-relu-max'])
  best, records = stage.choose(['f8k5-relu-max', 'f8k3-relu-max'])
  assert fake.calls == ['f8k3-relu-max', 'f8k5-relu-max']
  assert best == 0 and records[0]['val_acc'] == 0.90 and records[0]['train_s'] == 0.0


def test_a_finalist_that_fails_to_train_cannot_win_and_all_failing_stops(stage):
  stage, fake = stage
  best, records = stage.choose(['f16k5-relu-max', 'f8k3-relu-max'])
  assert best == 1 and np.isnan(records[0]['val_acc'])
  with pytest.raises(train_lib.TrainingDiverged, match='none of the 2 finalists trained.*'
                                                       '--finalist_lr'):
    stage.choose(['f16k5-relu-max', 'f32k5-relu-max'])
  # a failed finalist is remembered: the same run is not trained (and failed) again
  assert fake.calls.count('f16k5-relu-max') == 1


def test_the_stage_needs_data():
  with pytest.raises(data_lib.DataError, match='--finalists trains .* pass --data_dir'):
    fin_lib.Finalists('tinycnn', 'cifar10', None, fin_lib.Settings(k=2), '/tmp/x')


def test_data_smaller_than_one_batch_is_one_line_naming_the_search_flags(tmp_path):
  x, y = _images(20, 3)  # 60 images: 48 train, below the batch of 128
  np.savez(tmp_path / 'data.npz', x=x, y=y)
  stage = fin_lib.Finalists('tinycnn', 'cifar10', tmp_path / 'data.npz', fin_lib.Settings(k=1),
                            tmp_path / 'runs', log=lambda *_: None)
  with pytest.raises(data_lib.DataError) as err:
    stage.choose(['f8k3-relu-max'])
  message = str(err.value)
  assert 'fewer than one batch of 128' in message and '--finalists=0' in message
  assert '--train_batch' not in message and '--train_images' not in message  # not search flags


def test_a_real_finalist_trains_with_the_projects_trainer_on_the_split(tmp_path):
  """Two tinycnn finalists trained for real on a learnable image set: each validates on its
  held-out fifth, above chance, and its run is the trainer's own (config.json, results.json)."""
  x, y = _images(500, 2)
  np.savez(tmp_path / 'data.npz', x=x, y=y)
  stage = fin_lib.Finalists('tinycnn', 'cifar10', tmp_path / 'data.npz',
                            fin_lib.Settings(k=2, epochs=2, lr=0.01), tmp_path / 'finalists',
                            log=lambda *_: None)
  best, records = stage.choose(['f8k3-relu-max', 'f8k3-relu-avg'])
  assert best in (0, 1)
  for r in records:
    assert 0.5 < r['val_acc'] <= 1.0  # two classes, learnable: above chance
    assert r['train_s'] > 0
  runs = sorted(p.parent.name for p in (tmp_path / 'finalists').glob('*/results.json'))
  assert len(runs) == 2
  cfg = json.loads((tmp_path / 'finalists' / runs[0] / 'config.json').read_text())
  assert cfg['quant'] == 'fp32' and cfg['epochs'] == 2 and cfg['search_space'] == 'tinycnn'
  res = json.loads((tmp_path / 'finalists' / runs[0] / 'results.json').read_text())
  # the .npz's own test fifth is never used: the validation fifth of its 800 training images
  assert res['test_images'] == 160


def test_only_archs_the_trainer_runs_are_finalists(stage):
  """tinycnn's swish archs have no training path: the stage skips them (with a note) and trains
  the best of the others; with none left it is one line, not a failed training mid-search."""
  import types
  from engine.search import searchers
  from experiments import search as search_exp
  from search_spaces import registry
  stage, fake = stage
  space = registry.get('tinycnn')
  archs = [space.decode(a) for a in ('f8k3-swish-max', 'f8k5-relu-max', 'f8k3-relu-max')]
  problem = types.SimpleNamespace(table=types.SimpleNamespace(space=space, archs=archs))
  result = searchers.Result(index=0, arch=archs[0], objective=1.0, values={}, scored=3,
                            compile_s=0.0, run_s=0.0, log=[], ranked=[0, 1, 2])
  lines = []
  picked, records = search_exp.choose_finalist(stage, problem, result, lines.append)
  assert lines[0].startswith('note: finalists: 1 of the 3 final candidates have no training')
  assert fake.calls == ['f8k5-relu-max', 'f8k3-relu-max'] and picked.index == 1
  assert picked.ranked == [1, 2] and len(records) == 2
  with pytest.raises(ValueError, match='none of the .* 1 final candidates can be trained'):
    search_exp.choose_finalist(stage, problem, dataclasses.replace(result, ranked=[0]),
                               lines.append)


def test_a_pool_smaller_than_k_trains_what_it_holds_and_says_so(stage):
  """--finalists=K above the final pool (e.g. a small --rerank_pool): the stage trains the pool
  and a note says how many and why (it said only 'training the N best')."""
  import types
  from engine.search import searchers
  from experiments import search as search_exp
  from search_spaces import registry
  stage, fake = stage  # k=3
  space = registry.get('tinycnn')
  archs = [space.decode(a) for a in ('f8k5-relu-max', 'f8k3-relu-max')]
  problem = types.SimpleNamespace(table=types.SimpleNamespace(space=space, archs=archs))
  result = searchers.Result(index=0, arch=archs[0], objective=1.0, values={}, scored=2,
                            compile_s=0.0, run_s=0.0, log=[], ranked=[0, 1])
  lines = []
  _, records = search_exp.choose_finalist(stage, problem, result, lines.append)
  assert len(records) == 2 and fake.calls == ['f8k5-relu-max', 'f8k3-relu-max']
  assert lines[0].startswith('note: finalists: training 2, not --finalists=3: the search\'s '
                             'final pool held only 2 trainable')
  assert '--rerank_pool' in lines[0]
  lines.clear()  # a pool of K: no note
  stage.settings = dataclasses.replace(stage.settings, k=2)
  search_exp.choose_finalist(stage, problem, result, lines.append)
  assert lines == ['finalists: training the 2 best by the objective']

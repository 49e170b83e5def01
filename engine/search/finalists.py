"""An opt-in finalist stage (`--finalists=K`): the search's K best candidates by its objective
are trained briefly, for real, with the project's trainer on the user's training images, and
the best by validation accuracy wins.

The validation images are a fixed per-class split of the *training* images (never the test
split), so the stage chooses without seeing the images a pick is tested on. Each finalist is
one `engine.train.train` run (fp32) in its own folder, named by a hash of the arch, the training
settings and the data: another seed or budget that meets the same arch reads its result instead
of training it again, and a killed stage resumes where it stopped. Nothing here names a space:
the arch is the space's arch string and the trainer builds its network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time

import numpy as np

from engine.train import data as data_lib
from engine.train import train as train_lib

VAL_FRACTION = 0.2  # of each class's training images, held out to choose among the finalists


@dataclasses.dataclass(frozen=True)
class Settings:
  """How each finalist is trained. The defaults were set before any measurement (a brief, cheap
  schedule at the proxies' network size), not tuned on a benchmark."""
  k: int                 # finalists (0: no stage)
  epochs: int = 1
  width: int = 8         # NB201's C and N (the zero-cost network's); other spaces train at
  cells: int = 1         # their own size
  lr: float = 0.1
  seed: int = 0


def split(train_set: data_lib.ImageSet) -> tuple[data_lib.ImageSet, data_lib.ImageSet]:
  """(train, validation) parts of a training set: the seeded per-class split of
  `engine.train.data`."""
  train_idx, val_idx = data_lib.split_per_class(train_set.labels, VAL_FRACTION)
  def part(idx, what):
    return dataclasses.replace(train_set, images=train_set.images[idx],
                               labels=train_set.labels[idx],
                               source=f'{train_set.source}: {what} part, {len(idx)} images')
  return part(train_idx, 'finalist training'), part(val_idx, 'finalist validation')


class Finalists:
  """Trains finalists of one space on one data set; `choose` returns the winner."""

  def __init__(self, space_name: str, dataset: str, data_dir, settings: Settings, workdir,
               log=print):
    if data_dir is None:
      raise data_lib.DataError('--finalists trains the best candidates on your data: pass '
                               '--data_dir=<CIFAR batches, an image folder or an .npz file>, or '
                               '--finalists=0')
    self.space_name, self.dataset, self.data_dir = space_name, dataset, str(data_dir)
    self.settings, self.log = settings, log
    self.workdir = pathlib.Path(workdir)
    self._data = {}  # image size -> (train, validation)

  def config(self, arch: str) -> train_lib.TrainConfig:
    s = self.settings
    return train_lib.TrainConfig(arch=arch, C=s.width, N=s.cells, dataset=self.dataset,
                                 epochs=s.epochs, quant='fp32', lr=s.lr,
                                 warmup_epochs=0.2 * s.epochs, seed=s.seed,
                                 search_space=self.space_name)

  def _split_data(self, cfg):
    size = cfg.network().image_size
    if size not in self._data:
      self._data[size] = split(train_lib.load_data(self.data_dir, cfg)[0])
    train_part = self._data[size][0]
    if len(train_part.images) < cfg.batch_size:  # the trainer's own line names its flags, which
      # a search does not take
      raise data_lib.DataError(
          f'--finalists trains on {len(train_part.images)} images of --data_dir={self.data_dir} '
          f'(the rest validates), fewer than one batch of {cfg.batch_size}; pass a --data_dir '
          f'with at least {math.ceil(cfg.batch_size / (1 - VAL_FRACTION))} training images, or '
          f'--finalists=0')
    return self._data[size]

  def folder(self, cfg) -> pathlib.Path:
    key = json.dumps([dataclasses.asdict(cfg), self.data_dir, VAL_FRACTION], sort_keys=True)
    return self.workdir / hashlib.sha256(key.encode()).hexdigest()[:16]

  def accuracy(self, arch: str) -> tuple[float, float]:
    """(validation accuracy, seconds spent now) of one finalist, trained or read back."""
    cfg = self.config(arch)
    folder = self.folder(cfg)
    done, failed = folder / 'results.json', folder / 'failed.txt'
    if done.is_file():
      return float(json.loads(done.read_text())['float_test_acc']), 0.0
    if failed.is_file():  # the same run fails the same way: not trained again
      return float('nan'), 0.0
    start = time.perf_counter()
    try:
      res = train_lib.train(cfg, None, folder, progress=False, log=lambda *_: None,
                            data=self._split_data(cfg))
    except train_lib.TrainingDiverged as err:  # at chance or diverged: it cannot win
      self.log(f'  finalist {arch} failed to train (its rate: --finalist_lr): {err}')
      folder.mkdir(parents=True, exist_ok=True)
      failed.write_text(f'{err}\n')
      return float('nan'), time.perf_counter() - start
    return float(res['float_test_acc']), time.perf_counter() - start

  def choose(self, archs: list[str]) -> tuple[int, list[dict]]:
    """(position in `archs` of the best by validation accuracy, the first on ties; one record
    per finalist) for the first K of `archs`, which come best first by the objective."""
    records = []
    for rank, arch in enumerate(archs[:self.settings.k]):
      acc, seconds = self.accuracy(arch)
      records.append(dict(arch_str=arch, objective_rank=rank + 1, val_acc=acc,
                          train_s=seconds))  # val_acc nan: failed to train
      result = f'validation acc {100 * acc:.2f}%' if np.isfinite(acc) else 'failed to train'
      self.log(f'  finalist {rank + 1}/{min(len(archs), self.settings.k)} {arch}: {result}'
               + (f' (trained {self.settings.epochs} epoch(s) in {seconds:.0f} s)' if seconds
                  else ' (trained before)'))
    accs = np.array([r['val_acc'] for r in records])
    if not np.isfinite(accs).any():
      raise train_lib.TrainingDiverged(f'none of the {len(records)} finalists trained (each '
                                       f'diverged or stayed at chance); lower --finalist_lr or '
                                       f'pass --finalists=0')
    return int(np.nanargmax(accs)), records

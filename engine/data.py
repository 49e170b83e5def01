"""Input batches for the proxies: CIFAR pickle batches with a seeded sampler, or Gaussian noise.

Everything returns numpy NHWC float32, normalised with the CIFAR mean/std used by NB201/TE-NAS.
"""
from __future__ import annotations

import dataclasses
import pathlib
import pickle

import numpy as np

CIFAR_MEAN = np.array([125.3, 123.0, 113.9], np.float32) / 255
CIFAR_STD = np.array([63.0, 62.1, 66.7], np.float32) / 255
_BATCH_FILES = {
    'cifar10': (['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5'],
                'test_batch', b'labels'),
    'cifar100': (['train'], 'test', b'fine_labels'),
}


class DataError(ValueError):
  """Missing or malformed data; the message is one line naming the fix."""


@dataclasses.dataclass
class ImageSet:
  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int64
  source: str         # what the user should be told about where the images came from


def _find_batch_dir(data_dir: pathlib.Path, dataset: str) -> pathlib.Path:
  names = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}
  for cand in (data_dir, data_dir / names.get(dataset, ''), data_dir / dataset / names.get(dataset, '')):
    if cand.is_dir() and any((cand / f).is_file() for f in _BATCH_FILES[dataset][0] + [_BATCH_FILES[dataset][1]]):
      return cand
  raise DataError(f'no {dataset} pickle batches under {data_dir}; point --data_dir at the '
                  f'folder holding {names[dataset]}/ (python pickle format)')


def load_cifar(data_dir, dataset: str = 'cifar10', split: str = 'train') -> ImageSet:
  """Loads the CIFAR batches present for `split` ('train' or 'test'); missing train batches are
  skipped (the shared data holds only data_batch_1), but at least one must exist."""
  if dataset not in _BATCH_FILES:
    raise DataError(f'no pickle loader for {dataset!r}; CIFAR-format datasets: '
                    f'{", ".join(_BATCH_FILES)}')
  folder = _find_batch_dir(pathlib.Path(data_dir), dataset)
  train_files, test_file, label_key = _BATCH_FILES[dataset]
  files = [folder / f for f in (train_files if split == 'train' else [test_file])]
  files = [f for f in files if f.is_file()]
  if not files:
    raise DataError(f'no {split} batch for {dataset} in {folder}')
  images, labels = [], []
  for f in files:
    try:
      with f.open('rb') as fh:
        batch = pickle.load(fh, encoding='bytes')
      data = np.asarray(batch[b'data'], np.uint8)
      images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch[label_key], np.int64))
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError) as err:
      raise DataError(f'{f} is not a CIFAR python pickle batch ({type(err).__name__}: {err})') from None
  names = ', '.join(f.name for f in files)
  return ImageSet(np.concatenate(images), np.concatenate(labels), f'{dataset} {split} ({names})')


def normalize(images_uint8: np.ndarray) -> np.ndarray:
  return (images_uint8.astype(np.float32) / 255 - CIFAR_MEAN) / CIFAR_STD


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """Box-filter downsample NHWC float images to size x size (32 -> 16 for ImageNet16-120)."""
  if images.shape[1] == size:
    return images
  f = images.shape[1] // size
  if f * size != images.shape[1]:
    raise DataError(f'cannot resize {images.shape[1]}px images to {size}px (not a divisor)')
  n, h, w, c = images.shape
  return images.reshape(n, size, f, size, f, c).mean((2, 4))


def sample_batches(rng: np.random.Generator, num_batches: int, batch_size: int,
                   images: ImageSet | None, input_size: int = 32, augment: bool = True,
                   num_classes: int = 0, channels: int = 3):
  """[num_batches, batch_size, S, S, 3] normalised inputs: random images with NB201's train
  augmentation (pad-4 random crop, horizontal flip) when `augment`, or N(0, 1) noise without data
  (with `channels` channels; images are RGB).

  With `num_classes` > 0 it returns (inputs, labels [num_batches, batch_size] int32): the chosen
  images' labels, or uniformly random classes for noise (drawn after the noise, so the inputs
  are the same as without labels)."""
  if images is None:
    x = rng.standard_normal((num_batches, batch_size, input_size, input_size, channels)).astype(
        np.float32)
    if num_classes:
      return x, rng.integers(0, num_classes, (num_batches, batch_size)).astype(np.int32)
    return x
  if channels != 3:
    raise ValueError(f'the images are RGB but the network takes {channels} channels; score it '
                     f'on stand-in inputs (--stand_in_inputs)')
  idx = rng.integers(0, len(images.images), (num_batches, batch_size))
  x = normalize(images.images[idx.reshape(-1)])
  if augment:
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    oy, ox = rng.integers(0, 9, (2, len(x)))
    flip = rng.random(len(x)) < 0.5
    rows = oy[:, None] + np.arange(32)
    cols = ox[:, None] + np.arange(32)
    x = padded[np.arange(len(x))[:, None, None], rows[:, :, None], cols[:, None, :]]
    x[flip] = x[flip, :, ::-1]
  x = _resize(x, input_size)
  x = x.reshape(num_batches, batch_size, input_size, input_size, 3).astype(np.float32)
  if num_classes:
    return x, images.labels[idx].astype(np.int32)
  return x


def sample_patches(rng: np.random.Generator, num_batches: int, batch_size: int,
                   images: ImageSet | None, size: int = 3) -> np.ndarray:
  """TE-NAS's linear-region inputs: random size x size crops of random images, one random
  colour channel each, [num_batches, batch_size, size, size, 1]; N(0, 1) without data."""
  shape = (num_batches, batch_size, size, size, 1)
  if images is None:
    return rng.standard_normal(shape).astype(np.float32)
  n = num_batches * batch_size
  idx = rng.integers(0, len(images.images), n)
  oy, ox = rng.integers(0, 32 - size + 1, (2, n))
  ch = rng.integers(0, 3, n)
  rows = oy[:, None] + np.arange(size)
  cols = ox[:, None] + np.arange(size)
  crops = images.images[idx[:, None, None], rows[:, :, None], cols[:, None, :], ch[:, None, None]]
  crops = (crops.astype(np.float32) / 255 - CIFAR_MEAN[ch][:, None, None]) / CIFAR_STD[ch][:, None, None]
  return crops.reshape(shape).astype(np.float32)


PHOTOS = ('grace_hopper.jpg', 'Minduka_Present_Blue_Pack.png')  # matplotlib's sample photographs
_PHOTO_SCALES = (2, 4, 8)  # box-filter shrink factors: objects at several sizes in a 32x32 crop


def sample_photos(count: int = 4096, seed: int = 0) -> ImageSet:
  """Natural-image stand-ins when no dataset is given: `count` random 32x32 crops of the
  photographs matplotlib ships (no download), at several scales, with random flips, and
  uniformly random labels of 10 classes. Raises DataError when they cannot be read."""
  try:
    import matplotlib.cbook
    import matplotlib.image
    folder = pathlib.Path(matplotlib.cbook._get_data_path('sample_data'))
    photos = [np.asarray(matplotlib.image.imread(folder / name)) for name in PHOTOS]
  except (ImportError, OSError, ValueError) as err:
    raise DataError(f'cannot read matplotlib\'s sample photographs ({err}); pass --data_dir or '
                    f'--stand_in_inputs=noise') from None
  rng = np.random.default_rng([seed, 0x9407])
  levels = []
  for photo in photos:
    photo = photo[..., :3]
    photo = photo.astype(np.float32) / (255.0 if photo.dtype == np.uint8 else 1.0)
    for f in _PHOTO_SCALES:
      h, w = photo.shape[0] // f, photo.shape[1] // f
      if min(h, w) >= 32:
        levels.append(photo[:h * f, :w * f].reshape(h, f, w, f, 3).mean((1, 3)))
  which = rng.integers(0, len(levels), count)
  crops = np.empty((count, 32, 32, 3), np.float32)
  for i, level in enumerate(levels):
    rows = np.flatnonzero(which == i)
    oy = rng.integers(0, level.shape[0] - 31, len(rows))
    ox = rng.integers(0, level.shape[1] - 31, len(rows))
    crops[rows] = level[oy[:, None, None] + np.arange(32)[:, None],
                        ox[:, None, None] + np.arange(32)[None, :]]
  flip = rng.random(count) < 0.5
  crops[flip] = crops[flip, :, ::-1]
  images = np.clip(np.round(crops * 255), 0, 255).astype(np.uint8)
  labels = rng.integers(0, 10, count)
  return ImageSet(images, labels, f'{count} random 32x32 crops of matplotlib\'s sample '
                  f'photographs ({", ".join(PHOTOS)}; no --data_dir given)')

"""Images for training and for the proxies, and the proxies' seeded input samplers.

`--data_dir` may point at (`load_train_test`, `data_format`):
  * CIFAR-10/100 python pickle batches (the folder holding them, or one above it);
  * an image folder: one subfolder per class (classes = the sorted subfolder names) of PNG/JPEG
    files, or train/ and test/ subfolders that each hold such class subfolders;
  * an .npz file with `x` (N, H, W, 3; uint8, or float in [0, 1]) and `y` (N integer labels
    0..C-1), optionally `x_test` and `y_test`.
A user data set without its own test split is split per class, seeded (TEST_FRACTION, SPLIT_SEED):
the same files always give the same split. Its images are converted to RGB uint8 and resized
(stretched, area-averaged) to the input size. Bad data is a one-line `DataError` naming the fix.

The samplers return numpy NHWC float32, normalised with the CIFAR mean/std used by NB201/TE-NAS.
"""
from __future__ import annotations

import dataclasses
import pathlib
import pickle
import zipfile

import numpy as np

CIFAR_MEAN = np.array([125.3, 123.0, 113.9], np.float32) / 255
CIFAR_STD = np.array([63.0, 62.1, 66.7], np.float32) / 255
_BATCH_FILES = {
    'cifar10': (['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5'],
                'test_batch', b'labels'),
    'cifar100': (['train'], 'test', b'fine_labels'),
}
_CIFAR_CLASSES = {'cifar10': 10, 'cifar100': 100}


class DataError(ValueError):
  """Missing or malformed data; the message is one line naming the fix."""


@dataclasses.dataclass
class ImageSet:
  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int64
  source: str         # what the user should be told about where the images came from
  num_classes: int = 0           # classes of the data set (0: unknown); labels are 0..C-1
  format: str = ''               # 'cifar10', 'cifar100', 'folder', 'npz' ('' : stand-ins)
  class_names: tuple = ()        # class i's name (image folders: the sorted subfolder names)


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
  return ImageSet(np.concatenate(images), np.concatenate(labels), f'{dataset} {split} ({names})',
                  num_classes=_CIFAR_CLASSES[dataset], format=dataset)


# ----------------------------------------------------------------------------- the user's own data

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
TEST_FRACTION = 0.2   # a data set without its own test split: this share of each class tests
SPLIT_SEED = 0        # the seed of that split (fixed, so every run tests on the same images)
FORMATS_FIX = ('point --data_dir at CIFAR python batches, an image folder with one subfolder of '
               'PNG/JPEG files per class, or an .npz file with arrays x and y (docs/training.md)')


def _one_line(text) -> str:
  return ' '.join(str(text).split())


def _cifar_name(dataset: str) -> str:
  return 'cifar100' if dataset == 'cifar100' else 'cifar10'


def _has_cifar_batches(folder: pathlib.Path) -> bool:
  for dataset in _BATCH_FILES:
    try:
      _find_batch_dir(folder, dataset)
      return True
    except DataError:
      pass
  return False


def data_format(data_dir, dataset: str = 'cifar10') -> str:
  """What `data_dir` holds: 'cifar' (pickle batches, in it or in the folder NB201's layout names
  under it), 'npz' (a .npz file) or 'folder' (anything else that is a folder: an image folder,
  checked when it is read). A missing path or another kind of file is a DataError."""
  path = pathlib.Path(data_dir)
  if path.is_file():
    if path.suffix.lower() == '.npz':
      return 'npz'
    raise DataError(f'{path} is a file but not an .npz; {FORMATS_FIX}')
  if not path.is_dir():
    raise DataError(f'{path} not found (no {_cifar_name(dataset)} pickle batches, image folder '
                    f'or .npz file there); {FORMATS_FIX}')
  return 'cifar' if _has_cifar_batches(path) else 'folder'


def _visible(entries):
  return sorted((e for e in entries if not e.name.startswith('.')), key=lambda e: e.name)


def _subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
  return [e for e in _visible(folder.iterdir()) if e.is_dir()]


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return [e for e in _visible(folder.iterdir())
          if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] area weights: output pixel o averages the input pixels its interval
  [o, o + 1) * n_in / n_out overlaps, each by the length of the overlap (a box filter when
  shrinking, nearest neighbour with blended seams when enlarging)."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  left = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
  right = np.minimum(edges[1:, None], np.arange(n_in)[None, :] + 1)
  weights = np.clip(right - left, 0, None)
  return weights / weights.sum(1, keepdims=True)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """[N, H, W, C] images in [0, 255] (any real dtype) -> [N, size, size, C] uint8, stretched to
  the square (area averaging). Images already size x size uint8 are returned as they are."""
  n, h, w, _ = images.shape
  if (h, w) == (size, size) and images.dtype == np.uint8:
    return images
  rows = _resize_weights(h, size).astype(np.float32)
  cols = _resize_weights(w, size).astype(np.float32)
  out = np.empty((n, size, size, images.shape[-1]), np.uint8)
  for i in range(0, n, 1024):  # in chunks: float copies of a large set stay small
    chunk = images[i:i + 1024].astype(np.float32)
    m, _, _, c = chunk.shape
    chunk = (rows @ chunk.reshape(m, h, w * c)).reshape(m, size, w, c)   # rows: [m, S, W, C]
    chunk = (chunk.transpose(0, 1, 3, 2) @ cols.T).transpose(0, 1, 3, 2)  # columns: [m, S, S, C]
    out[i:i + 1024] = np.clip(np.round(chunk), 0, 255)
  return out


def _read_image(path: pathlib.Path, size: int) -> tuple[np.ndarray, bool]:
  """(one image file as size x size x 3 uint8, whether it had to be resized)."""
  from PIL import Image  # matplotlib's own image dependency
  try:
    with Image.open(path) as img:
      rgb = np.asarray(img.convert('RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
    why = _one_line(str(err).replace(f"'{path}'", '').replace(str(path), ''))
    raise DataError(f'{path} is not a readable PNG/JPEG image ({why or type(err).__name__}); '
                    f'replace or delete it') from None
  return resize_images(rgb[None], size)[0], rgb.shape[:2] != (size, size)


def _read_class_folders(root: pathlib.Path, classes: list[str], size: int, allowed=None):
  """(images, labels, resized count) of root/<class>/*.png|jpg; `allowed`: the class names a
  class folder may have (a test/ folder's classes must be train/'s), else `classes` are all."""
  images, labels, resized = [], [], 0
  for folder in _subfolders(root):
    if allowed is not None and folder.name not in allowed:
      raise DataError(f'{folder} is not a class of the training folder (classes: '
                      f'{", ".join(allowed[:10])}{", ..." if len(allowed) > 10 else ""}); rename '
                      f'or remove it')
    files = _image_files(folder)
    if not files:
      raise DataError(f'class folder {folder} holds no PNG/JPEG images '
                      f'({"/".join(s[1:] for s in IMAGE_SUFFIXES)}); add its images or remove it')
    label = classes.index(folder.name)
    for f in files:
      image, was_resized = _read_image(f, size)
      images.append(image)
      labels.append(label)
      resized += was_resized
  return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
          np.asarray(labels, np.int64), resized)


def _empty_folder_error(path: pathlib.Path) -> DataError:
  entries = _visible(path.iterdir())
  npz = [e.name for e in entries if e.suffix.lower() == '.npz']
  if npz:
    return DataError(f'{path} has no class subfolders but holds {npz[0]}; pass the file itself: '
                     f'--data_dir={path / npz[0]}')
  if any(e.suffix.lower() in IMAGE_SUFFIXES for e in entries):
    return DataError(f'{path} holds images but no class subfolders; put each class\'s images in '
                     f'a subfolder named after the class')
  what = 'is empty' if not entries else 'holds no class subfolders'
  return DataError(f'{path} {what} (no CIFAR pickle batches, class subfolders or .npz file); '
                   f'{FORMATS_FIX}')


def split_per_class(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                    seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices), each in a seeded random order: round(test_fraction * n) of
  each class's n images test (at least one, and at least one left to train, when n >= 2)."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_test = min(max(int(np.floor(test_fraction * len(idx) + 0.5)), 1), len(idx) - 1)
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  train, test = np.concatenate(train), np.concatenate(test)
  return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def _split_text() -> str:
  pct = round(100 * TEST_FRACTION)
  return f'{100 - pct}/{pct} split per class, seed {SPLIT_SEED}'


def _split_here(labels: np.ndarray, path):
  """(train indices, test indices, how) of data without its own test split: the seeded split
  per class; a DataError naming `path` when it holds out nothing."""
  train_idx, test_idx = split_per_class(labels)
  if not len(test_idx):
    raise DataError(f'{path} has too few images to hold out a test split (a class needs at least '
                    f'2 images); add images')
  return train_idx, test_idx, _split_text()


def _load_folder(path: pathlib.Path, size: int) -> tuple[ImageSet, ImageSet]:
  subfolders = _subfolders(path)
  names = {f.name for f in subfolders}
  split_layout = ('train' in names and names <= {'train', 'test'}
                  and bool(_subfolders(path / 'train')))
  train_root = path / 'train' if split_layout else path
  class_folders = _subfolders(train_root)
  if not class_folders:
    raise _empty_folder_error(train_root)
  classes = [f.name for f in class_folders]
  if len(classes) < 2:
    raise DataError(f'{train_root} has one class subfolder ({classes[0]}); a classifier needs at '
                    f'least 2: add a subfolder of images per class')
  images, labels, resized = _read_class_folders(train_root, classes, size)
  if split_layout and (path / 'test').is_dir():
    test_images, test_labels, test_resized = _read_class_folders(path / 'test', classes, size,
                                                                 allowed=classes)
    if not len(test_labels):
      raise DataError(f'{path / "test"} holds no class subfolders of images; put the test '
                      f'images in test/<class>/ or remove test/ (then {_split_text()})')
    resized += test_resized
    # the files are read class by class: a seeded shuffle, so that --train_images and
    # --test_images (the first N) take every class
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = rng.permutation(len(labels)), rng.permutation(len(test_labels))
    how = 'train/ and test/ subfolders'
  else:
    train_idx, test_idx, how = _split_here(labels, train_root)
    test_images, test_labels = images, labels
  summary = (f'image folder {path}: {len(classes)} classes, {len(train_idx)} train / '
             f'{len(test_idx)} test images ({how})'
             + (f', {resized} resized to {size}x{size}' if resized else ''))
  make = lambda x, y: ImageSet(x, y, summary, len(classes), 'folder', tuple(classes))
  return (make(images[train_idx], labels[train_idx]),
          make(test_images[test_idx], test_labels[test_idx]))


def _npz_images(x: np.ndarray, name: str, path, size: int) -> np.ndarray:
  if x.ndim != 4 or x.shape[-1] != 3:
    raise DataError(f'{path}: {name} has shape {x.shape}; store the images as (N, H, W, 3) RGB '
                    f'(repeat a grey channel 3 times)')
  if not len(x):
    raise DataError(f'{path}: {name} holds no images; store at least one image per class')
  if x.dtype == np.uint8:
    return resize_images(x, size)
  if x.dtype.kind == 'f':
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
      raise DataError(f'{path}: {name} holds floats outside [0, 1] (range {np.nanmin(x):.4g} to '
                      f'{np.nanmax(x):.4g}); scale the images to [0, 1] or store them as uint8')
    return resize_images(x * np.float32(255), size)
  if x.dtype.kind in 'iu':
    if x.min() < 0 or x.max() > 255:
      raise DataError(f'{path}: {name} holds integers outside 0..255 (range {x.min()} to '
                      f'{x.max()}); store uint8 images (0..255) or floats in [0, 1]')
    return resize_images(x.astype(np.uint8), size)
  raise DataError(f'{path}: {name} has dtype {x.dtype}; store uint8 images (0..255) or floats in '
                  f'[0, 1]')


def _npz_labels(y: np.ndarray, name: str, path, count: int, x_name: str) -> np.ndarray:
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise DataError(f'{path}: {name} has shape {y.shape}; store one integer label per image, '
                    f'shape (N,)')
  if len(y) != count:
    raise DataError(f'{path}: {x_name} has {count} images but {name} has {len(y)} labels; store '
                    f'one label per image')
  if y.dtype.kind == 'f' and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
    y = y.astype(np.int64)
  if y.dtype.kind not in 'iu':
    bad = np.flatnonzero(y != np.round(y))[0] if y.dtype.kind == 'f' else None
    which = f', {name}[{bad}] = {y[bad]}' if bad is not None else ''
    raise DataError(f'{path}: {name} holds non-integer labels (dtype {y.dtype}{which}); store the '
                    f'class indices 0..C-1 as integers')
  return y.astype(np.int64)


def _load_npz(path: pathlib.Path, size: int) -> tuple[ImageSet, ImageSet]:
  if not zipfile.is_zipfile(path):
    raise DataError(f'{path} is not an .npz (not a zip archive); save it with '
                    f'numpy.savez(path, x=images, y=labels)')
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
    raise DataError(f'{path} is not a readable .npz ({_one_line(err)}); save it with '
                    f'numpy.savez(path, x=images, y=labels)') from None
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise DataError(f'{path} holds one array, not x and y; save it with '
                    f'numpy.savez(path, x=images, y=labels)')
  with loaded:
    keys = set(loaded.files)
    missing = [k for k in ('x', 'y') if k not in keys]
    if missing:
      have = ', '.join(sorted(keys)) or 'none'
      raise DataError(f'{path} has no array {missing[0]} (it has {have}); store the images as x '
                      f'(N, H, W, 3) and the labels as y (N,)')
    if ('x_test' in keys) != ('y_test' in keys):
      have, lack = ('x_test', 'y_test') if 'x_test' in keys else ('y_test', 'x_test')
      raise DataError(f'{path} has {have} but no {lack}; store both or neither (then '
                      f'{_split_text()})')
    try:
      arrays = {k: loaded[k] for k in ('x', 'y', 'x_test', 'y_test') if k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
      raise DataError(f'{path} holds an array numpy cannot read without pickle '
                      f'({_one_line(err)}); store plain numeric arrays') from None
  x = _npz_images(arrays['x'], 'x', path, size)
  y = _npz_labels(arrays['y'], 'y', path, len(arrays['x']), 'x')
  if y.min() < 0:
    raise DataError(f'{path}: y holds label {y.min()}; labels must be the class indices 0..C-1')
  classes = int(y.max()) + 1
  absent = np.setdiff1d(np.arange(classes), y)
  if classes < 2:
    raise DataError(f'{path}: y holds one class ({classes - 1}); a classifier needs at least 2: '
                    f'add images of other classes')
  if len(absent):
    raise DataError(f'{path}: y has no image of class {absent[0]} (labels 0..{classes - 1}); '
                    f'number the classes 0..C-1 with no gaps')
  if 'x_test' in arrays:
    x_test = _npz_images(arrays['x_test'], 'x_test', path, size)
    y_test = _npz_labels(arrays['y_test'], 'y_test', path, len(arrays['x_test']), 'x_test')
    out = y_test[(y_test < 0) | (y_test >= classes)]
    if len(out):
      raise DataError(f'{path}: y_test holds label {out[0]} but y\'s classes are 0..{classes - 1}; '
                      f'use the same class indices')
    train_idx, test_idx = np.arange(len(y)), np.arange(len(y_test))
    how = 'x/y train, x_test/y_test test'
  else:
    train_idx, test_idx, how = _split_here(y, path)
    x_test, y_test = x, y
  shape = arrays['x'].shape[1:3]
  summary = (f'npz file {path}: {classes} classes, {len(train_idx)} train / {len(test_idx)} '
             f'test images ({how})'
             + (f', resized from {shape[0]}x{shape[1]} to {size}x{size}'
                if tuple(shape) != (size, size) else ''))
  make = lambda xs, ys: ImageSet(xs, ys, summary, classes, 'npz',
                                 tuple(str(c) for c in range(classes)))
  return make(x[train_idx], y[train_idx]), make(x_test[test_idx], y_test[test_idx])


def load_train_test(data_dir, dataset: str = 'cifar10',
                    image_size: int = 32) -> tuple[ImageSet, ImageSet]:
  """(train, test) ImageSets of whatever `data_dir` holds (module docstring). CIFAR batches are
  read for `dataset` as `load_cifar` reads them (32x32); the user's images are resized to
  `image_size`. Their `source` states the format, the class and image counts and the split."""
  kind = data_format(data_dir, dataset)
  path = pathlib.Path(data_dir)
  if kind == 'cifar':
    return load_cifar(path, dataset, 'train'), load_cifar(path, dataset, 'test')
  if kind == 'npz':
    return _load_npz(path, image_size)
  return _load_folder(path, image_size)


def train_images_at_most(data_dir, dataset: str = 'cifar10') -> int | None:
  """An upper bound on the training images `load_train_test` returns, from the file system
  alone (no image read; a check before any work can use it): CIFAR batches, each file's size
  over a pickled image's 3,072 pixel bytes (10,130 for data_batch_1's 10,000: the labels and
  names add the rest); an image folder, its image files (train/ alone in that layout; the
  seeded split trains on fewer); an .npz, x's length from its header. None when it cannot
  tell (no data there, an unreadable file): the loader says why when it runs."""
  try:
    kind = data_format(data_dir, dataset)
    path = pathlib.Path(data_dir)
    if kind == 'cifar':
      folder = _find_batch_dir(path, dataset)
      return sum((folder / f).stat().st_size // (32 * 32 * 3) for f in _BATCH_FILES[dataset][0]
                 if (folder / f).is_file())
    if kind == 'npz':
      with zipfile.ZipFile(path) as archive, archive.open('x.npy') as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                np.lib.format.read_array_header_2_0)
        shape = read(f)[0]
        return int(shape[0]) if shape else None
    names = {e.name for e in _subfolders(path)}
    root = path / 'train' if 'train' in names and names <= {'train', 'test'} else path
    return sum(len(_image_files(c)) for c in _subfolders(root))
  except (DataError, OSError, KeyError, ValueError, zipfile.BadZipFile):
    return None


def normalize(images_uint8: np.ndarray) -> np.ndarray:
  return (images_uint8.astype(np.float32) / 255 - CIFAR_MEAN) / CIFAR_STD


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 NHWC images -> size x size by an integer factor: repeated pixels up (CIFAR's 32px at
  a 96px arch), box mean down."""
  h = images.shape[1]
  if h == size or size % h == 0:
    return _resize(images, size)
  return np.round(_resize(images.astype(np.float32), size)).astype(np.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """NHWC images to size x size by an integer factor: repeated pixels up (32 -> 96 for mbv2's
  smallest resolution), box mean down (32 -> 16 for ImageNet16-120)."""
  if images.shape[1] == size:
    return images
  if size % images.shape[1] == 0:
    f = size // images.shape[1]
    return np.repeat(np.repeat(images, f, axis=1), f, axis=2)
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
  if num_classes and len(images.labels) and images.labels.max() >= num_classes:
    raise DataError(f'the images have {images.num_classes or images.labels.max() + 1} classes but '
                    f'the proxies\' networks have {num_classes} outputs, too few for the proxies '
                    f'that score a loss; pass a --data_dir with at most {num_classes} classes, a '
                    f'--dataset with more, or other --proxies')
  idx = rng.integers(0, len(images.images), (num_batches, batch_size))
  x = normalize(images.images[idx.reshape(-1)])
  if augment:
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    oy, ox = rng.integers(0, 9, (2, len(x)))
    flip = rng.random(len(x)) < 0.5
    side = x.shape[1]
    rows = oy[:, None] + np.arange(side)
    cols = ox[:, None] + np.arange(side)
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

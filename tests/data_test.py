"""Data loading (CIFAR pickle batches, the user's image folders and .npz files) and the seeded
samplers."""
import json

import cli
import jax
import numpy as np
import pytest
from PIL import Image  # matplotlib's image dependency

from engine.train import data
from engine.train import train as train_lib


def test_loads_shared_cifar10_batches(data_dir):
  train = data.load_cifar(data_dir / 'cifar10', 'cifar10', 'train')
  test = data.load_cifar(data_dir / 'cifar10' / 'cifar-10-batches-py', 'cifar10', 'test')
  assert train.images.shape == (10000, 32, 32, 3) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(train.labels),
                                [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981])


def test_samplers_are_seeded_and_normalised(data_dir):
  images = data.load_cifar(data_dir / 'cifar10', 'cifar10')
  a = data.sample_batches(np.random.default_rng(0), 2, 16, images)
  b = data.sample_batches(np.random.default_rng(0), 2, 16, images)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, 16, 32, 32, 3) and abs(a.mean()) < 0.5
  small = data.sample_batches(np.random.default_rng(0), 1, 4, images, input_size=16)
  assert small.shape == (1, 4, 16, 16, 3)
  # an arch at 96 px (mbv2's smallest resolution) sees the same crops with each pixel 3x3 times
  large = data.sample_batches(np.random.default_rng(0), 1, 4, images, input_size=96)
  same = data.sample_batches(np.random.default_rng(0), 1, 4, images)
  np.testing.assert_array_equal(large[:, :, ::3, ::3], same)
  np.testing.assert_array_equal(large[:, :, 2::3, 1::3], same)
  patches = data.sample_patches(np.random.default_rng(0), 3, 100, images)
  assert patches.shape == (3, 100, 3, 3, 1)
  noise = data.sample_batches(np.random.default_rng(0), 1, 4, None)
  assert noise.shape == (1, 4, 32, 32, 3)


def test_missing_or_corrupt_data_gives_one_line_error(tmp_path):
  with pytest.raises(data.DataError, match='no cifar10 pickle batches') as err:
    data.load_cifar(tmp_path, 'cifar10')
  assert '\n' not in str(err.value)
  (tmp_path / 'data_batch_1').write_bytes(b'not a pickle')
  with pytest.raises(data.DataError, match='not a CIFAR python pickle batch'):
    data.load_cifar(tmp_path, 'cifar10')


# ----------------------------------------------------------------------------- the user's own data

CLASSES = ('blue_sky', 'green_leaf', 'red_brick')
# few ops, so that the command-line training test compiles quickly (as tests/train_test.py)
ARCH = '|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|'


def _write_folder(root, per_class=12, size=40, seed=0):
  """root/<class>/*.png|jpg: random 40x40 images whose class is their brightest channel (a
  grey PNG and a JPEG among them: every file is converted to RGB)."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      img = rng.integers(0, 60, (size, size, 3))
      img[..., 2 - c] += 190
      img = Image.fromarray(img.astype(np.uint8))
      if i == 0:
        img.save(root / name / f'{i:02d}.jpg', quality=95)
      elif i == 1:
        img.convert('L').save(root / name / f'{i:02d}.png')
      else:
        img.save(root / name / f'{i:02d}.png')
  return root


def test_image_folder_loads_with_a_seeded_split_per_class(tmp_path):
  folder = _write_folder(tmp_path / 'imgs')
  (folder / 'notes.txt').write_text('not an image: ignored')
  assert data.data_format(folder) == 'folder'
  tr, te = data.load_train_test(folder)
  assert tr.images.shape == (30, 32, 32, 3) and te.images.shape == (6, 32, 32, 3)
  assert tr.images.dtype == np.uint8 and tr.labels.dtype == np.int64
  assert tr.class_names == CLASSES and tr.num_classes == 3 and tr.format == 'folder'
  np.testing.assert_array_equal(np.bincount(tr.labels), [10, 10, 10])  # 12 a class: 2 test
  np.testing.assert_array_equal(np.bincount(te.labels), [2, 2, 2])
  assert len(set(tr.labels[:6])) > 1  # shuffled: the first N (--train_images) span classes
  # the label is the brightest channel (bar the grey images): images and labels stayed together
  means = tr.images.mean((1, 2))
  colour = np.ptp(means, -1) > 50
  assert colour.sum() >= 24
  np.testing.assert_array_equal(means[colour].argmax(-1), 2 - tr.labels[colour])
  assert not {im.tobytes() for im in tr.images} & {im.tobytes() for im in te.images}
  assert tr.source == (f'image folder {folder}: 3 classes, 30 train / 6 test images (80/20 split '
                       f'per class, seed 0), 36 resized to 32x32')
  again_tr, again_te = data.load_train_test(folder)
  np.testing.assert_array_equal(again_tr.images, tr.images)
  np.testing.assert_array_equal(again_te.labels, te.labels)
  small, _ = data.load_train_test(folder, image_size=16)
  assert small.images.shape == (30, 16, 16, 3)


def test_image_folder_with_train_and_test_subfolders(tmp_path):
  _write_folder(tmp_path / 'd' / 'train', per_class=4)
  _write_folder(tmp_path / 'd' / 'test', per_class=2, seed=1)
  (tmp_path / 'd' / 'test' / CLASSES[0]).rename(tmp_path / 'd' / 'test' / 'x')
  with pytest.raises(data.DataError, match="test/x is not a class of the training folder"):
    data.load_train_test(tmp_path / 'd')
  (tmp_path / 'd' / 'test' / 'x').rename(tmp_path / 'd' / 'test' / CLASSES[0])
  tr, te = data.load_train_test(tmp_path / 'd')
  assert len(tr.labels) == 12 and len(te.labels) == 6 and tr.class_names == CLASSES
  assert 'train/ and test/ subfolders' in tr.source


def test_npz_loads_with_or_without_its_own_test_split(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (50, 32, 32, 3)).astype(np.uint8)
  y = np.arange(50) % 5
  np.savez(tmp_path / 'u8.npz', x=x, y=y)
  np.savez(tmp_path / 'f.npz', x=x / np.float32(255), y=y.astype(np.float32))
  assert data.data_format(tmp_path / 'u8.npz') == 'npz'
  tr, te = data.load_train_test(tmp_path / 'u8.npz')
  assert tr.images.shape == (40, 32, 32, 3) and te.images.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(te.labels), [2] * 5)
  assert '5 classes, 40 train / 10 test images (80/20 split per class, seed 0)' in tr.source
  f_tr, f_te = data.load_train_test(tmp_path / 'f.npz')  # floats in [0, 1]: the same images
  np.testing.assert_array_equal(f_tr.images, tr.images)
  np.testing.assert_array_equal(f_te.labels, te.labels)
  np.savez(tmp_path / 'split.npz', x=x[:40], y=y[:40, None], x_test=x[40:, :16, :16],
           y_test=y[40:])
  tr, te = data.load_train_test(tmp_path / 'split.npz')
  assert len(tr.labels) == 40 and te.images.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(te.labels, y[40:])  # an own test split keeps its order
  np.testing.assert_array_equal(tr.images, x[:40])


def test_the_training_image_bound_holds_every_format_without_reading_an_image(tmp_path,
                                                                             data_dir):
  """What the pipeline checks QAT's schedule with before its search: never below the count
  the loader returns (so nothing valid is refused), close to it for CIFAR."""
  cifar = data_dir / 'cifar10'
  bound = data.train_images_at_most(cifar)
  assert len(data.load_cifar(cifar).labels) <= bound < 1.02 * len(data.load_cifar(cifar).labels)
  folder = _write_folder(tmp_path / 'imgs')  # 36 images, 30 of them train
  assert data.train_images_at_most(folder) == 36
  _write_folder(tmp_path / 'd' / 'train', per_class=4)
  _write_folder(tmp_path / 'd' / 'test', per_class=2, seed=1)
  assert data.train_images_at_most(tmp_path / 'd') == 12  # train/ alone
  x = np.zeros((50, 8, 8, 3), np.uint8)
  np.savez(tmp_path / 'u8.npz', x=x, y=np.arange(50) % 5)
  assert data.train_images_at_most(tmp_path / 'u8.npz') == 50
  (tmp_path / 'bad.npz').write_bytes(b'not a zip')
  for unknown in (tmp_path / 'bad.npz', tmp_path / 'missing', tmp_path / 'd' / 'test' / 'x'):
    assert data.train_images_at_most(unknown) is None  # the loader says why, later


def test_resize_averages_areas():
  img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3) * 5
  half = data.resize_images(img, 2)
  np.testing.assert_array_equal(
      half, np.round(img.reshape(1, 2, 2, 2, 2, 3).mean((2, 4))).astype(np.uint8))
  flat = np.full((2, 7, 5, 3), 200, np.uint8)
  assert np.all(data.resize_images(flat, 3) == 200) and data.resize_images(flat, 9).shape == (
      2, 9, 9, 3)


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return path


_X = np.zeros((6, 8, 8, 3), np.uint8)
_Y = np.array([0, 1, 2, 0, 1, 2])


def _bad_data(tmp, case):
  """The path of one bad data set, made in `tmp`."""
  if case == 'empty folder':
    (tmp / 'e').mkdir()
    return tmp / 'e'
  if case in ('one class', 'unreadable image', 'class without images', 'images, no classes'):
    root = _write_folder(tmp / 'f', per_class=3)
    if case == 'one class':
      for name in CLASSES[1:]:
        for f in (root / name).iterdir():
          f.unlink()
        (root / name).rmdir()
    elif case == 'unreadable image':
      (root / CLASSES[1] / '01.png').write_bytes(b'this is no png')
    elif case == 'class without images':
      (root / 'zebra').mkdir()
    else:
      for name in CLASSES:
        for f in (root / name).iterdir():
          f.rename(root / f'{name}_{f.name}')
        (root / name).rmdir()
    return root
  if case == 'not a zip':
    (tmp / 'junk.npz').write_bytes(b'junk')
    return tmp / 'junk.npz'
  if case == 'a text file':
    (tmp / 'x.txt').write_text('hi')
    return tmp / 'x.txt'
  arrays = {
      'no y': dict(x=_X),
      'x/y length mismatch': dict(x=_X, y=_Y[:5]),
      'x wrong rank': dict(x=_X[..., 0], y=_Y),
      'x wrong channels': dict(x=np.zeros((6, 8, 8, 4), np.uint8), y=_Y),
      'x floats above 1': dict(x=np.full((6, 8, 8, 3), 2.0), y=_Y),
      'negative label': dict(x=_X, y=_Y - 1),
      'label gap': dict(x=_X, y=_Y * 2),
      'non-integer label': dict(x=_X, y=_Y + 0.5),
      'single class npz': dict(x=_X, y=_Y * 0),
      'y_test out of range': dict(x=_X, y=_Y, x_test=_X[:2], y_test=np.array([0, 3])),
      'x_test without y_test': dict(x=_X, y=_Y, x_test=_X),
  }[case]
  return _npz(tmp / 'bad.npz', **arrays)


BAD_DATA = [
    ('empty folder', 'is empty'),
    ('one class', r'has one class subfolder \(blue_sky\); a classifier needs at least 2'),
    ('unreadable image', 'green_leaf/01.png is not a readable PNG/JPEG image'),
    ('class without images', 'class folder .*zebra holds no PNG/JPEG images'),
    ('images, no classes', 'holds images but no class subfolders'),
    ('not a zip', 'junk.npz is not an .npz'),
    ('a text file', 'is a file but not an .npz'),
    ('no y', 'has no array y'),
    ('x/y length mismatch', 'x has 6 images but y has 5 labels'),
    ('x wrong rank', r'x has shape \(6, 8, 8\); store the images as \(N, H, W, 3\)'),
    ('x wrong channels', r'x has shape \(6, 8, 8, 4\)'),
    ('x floats above 1', r'floats outside \[0, 1\]'),
    ('negative label', 'y holds label -1; labels must be the class indices 0..C-1'),
    ('label gap', 'y has no image of class 1'),
    ('non-integer label', r'non-integer labels \(dtype float64, y\[0\] = 0.5\)'),
    ('single class npz', 'y holds one class'),
    ('y_test out of range', "y_test holds label 3 but y's classes are 0..2"),
    ('x_test without y_test', 'has x_test but no y_test'),
]


@pytest.mark.parametrize('case, message', BAD_DATA, ids=[c for c, _ in BAD_DATA])
def test_bad_user_data_is_a_one_line_data_error(tmp_path, case, message):
  path = _bad_data(tmp_path, case)
  with pytest.raises(data.DataError, match=message) as err:
    data.load_train_test(path)
  assert '\n' not in str(err.value) and '; ' in str(err.value)  # the problem; the fix


def test_a_run_on_user_data_needs_data_of_its_class_count(tmp_path):
  folder = _write_folder(tmp_path / 'imgs', per_class=3)
  cfg = train_lib.TrainConfig(arch=ARCH, num_classes=3)
  assert cfg.network().num_classes == 3 and train_lib.TrainConfig(arch=ARCH).network(
      ).num_classes == 10
  tr, te = train_lib.load_data(folder, cfg)
  assert tr.num_classes == 3 and tr.images.shape[1:] == (32, 32, 3)
  with pytest.raises(data.DataError, match='has 3 classes but this run.s network has 5 outputs'):
    train_lib.load_data(folder, train_lib.TrainConfig(arch=ARCH, num_classes=5))
  tr, _ = train_lib.load_data(folder, train_lib.TrainConfig(arch=ARCH, dataset='ImageNet16-120'))
  assert tr.images.shape[1:] == (16, 16, 3)  # the dataset's input size


def test_the_proxies_refuse_labels_their_network_cannot_output(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / 'many.npz', x=rng.integers(0, 256, (60, 32, 32, 3)).astype(np.uint8),
           y=np.arange(60) % 12)
  images, _ = data.load_train_test(tmp_path / 'many.npz')
  x, labels = data.sample_batches(rng, 1, 8, images, num_classes=12)
  assert x.shape == (1, 8, 32, 32, 3) and labels.max() < 12
  assert data.sample_batches(rng, 1, 8, images).shape == (1, 8, 32, 32, 3)  # no labels: fine
  with pytest.raises(data.DataError, match='12 classes but the proxies. networks have 10 outputs'):
    data.sample_batches(rng, 1, 8, images, num_classes=10)


def test_command_line_trains_a_classifier_of_the_folder_s_classes(tmp_path):
  folder = _write_folder(tmp_path / 'imgs', per_class=30)  # 72 train / 18 test images
  workdir = tmp_path / 'run'
  # the tests' persistent XLA cache (conftest.py), if on: a rerun skips most of the compile
  cache = jax.config.jax_compilation_cache_dir
  env = {'JAX_COMPILATION_CACHE_DIR': cache,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5'} if cache else None
  result = cli.run('--experiment=train', f'--arch={ARCH}', f'--data_dir={folder}', '--epochs=2',
                   '--train_width=4', '--train_cells=1', '--train_batch=12', '--lr=0.1',
                   '--warmup_epochs=0.5', f'--workdir={workdir}', '--noprogress', env_extra=env)
  assert result.returncode == 0, result.stderr
  assert (f'data: 3 classes, 72 train / 18 test images used; image folder {folder}: 3 classes, '
          f'72 train / 18 test images (80/20 split per class, seed 0)') in result.stdout
  results = json.loads((workdir / 'results.json').read_text())
  assert results['data']['class_names'] == list(CLASSES) and results['data']['num_classes'] == 3
  assert not results['chance']['float_test_acc']['at_chance']  # colours: learnt, above chance
  assert json.loads((workdir / 'config.json').read_text())['num_classes'] == 3


def test_command_line_empty_data_folder_is_one_line(tmp_path):
  (tmp_path / 'empty').mkdir()
  result = cli.run('--experiment=train', f'--arch={ARCH}', f'--data_dir={tmp_path / "empty"}',
                   '--epochs=1', f'--workdir={tmp_path / "run"}', '--noprogress')
  cli.assert_one_line_error(result, f'{tmp_path / "empty"} is empty', 'point --data_dir at')

"""CIFAR pickle loading and the seeded samplers."""
import numpy as np
import pytest

from engine import data


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

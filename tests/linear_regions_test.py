"""Linear-region counting: exact unique-row counting and the TE-NAS thin network."""
import jax
import jax.numpy as jnp
import numpy as np

from engine.proxies import linear_regions as lr
from engine import proxies
from search_spaces import nb201
from search_spaces.nb201 import space as nb201_space


def _lr_net(settings):
  return nb201_space.make_net(nb201_space.proxy_configs(settings)['lr'])


def _count(settings, mask, batches):
  keys = jax.random.split(jax.random.PRNGKey(0), 1)
  value, flag = lr.linear_regions(_lr_net(settings), keys, mask, batches)
  assert int(flag) == 0
  return float(value)


def test_pack_bits_and_unique_rows_match_numpy():
  rng = np.random.default_rng(0)
  for units in (5, 32, 70):
    bits = rng.random((400, units)) < 0.5
    bits[200:] = bits[:200]          # duplicates must not count twice
    bits[:, 0] = rng.random(400) < 0.05
    expected = len(np.unique(bits, axis=0))
    words = lr.pack_bits(jnp.asarray(bits))
    assert words.shape == (400, -(-units // 32))
    assert int(jax.jit(lr.count_unique_rows)(words)) == expected


def test_identical_inputs_give_one_region_and_count_is_bounded():
  settings = proxies.ScoreSettings(lr_batches=2, lr_batch_size=100)
  mask = jnp.asarray(nb201.ops_to_mask((3, 2, 3, 1, 3, 2)))
  same = jnp.ones((1, 2, 100, 3, 3, 1))
  assert _count(settings, mask, same) == 1.0
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 100, 3, 3, 1))
  count = _count(settings, mask, x)
  assert 1 < count <= 200


def test_more_conv_ops_carve_more_regions():
  settings = proxies.ScoreSettings(lr_batches=1, lr_batch_size=500)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 500, 3, 3, 1))
  skips = nb201.ops_to_mask((1,) * 6)
  convs = nb201.ops_to_mask((3,) * 6)
  few = _count(settings, jnp.asarray(skips), x)
  many = _count(settings, jnp.asarray(convs), x)
  assert many > few

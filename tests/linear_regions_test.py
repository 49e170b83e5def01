"""Linear-region counting: exact unique-row counting and the TE-NAS thin network."""
import jax
import jax.numpy as jnp
import numpy as np

from engine import linear_regions as lr
from engine import proxies
from search_spaces import nb201


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
  config = settings.lr_config()
  mask = jnp.asarray(nb201.ops_to_mask((3, 2, 3, 1, 3, 2)))
  same = jnp.ones((1, 2, 100, 3, 3, 1))
  assert float(lr.linear_regions(jax.random.split(jax.random.PRNGKey(0), 1), mask, same, config)) == 1.0
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 100, 3, 3, 1))
  count = float(lr.linear_regions(jax.random.split(jax.random.PRNGKey(0), 1), mask, x, config))
  assert 1 < count <= 200


def test_more_conv_ops_carve_more_regions():
  settings = proxies.ScoreSettings(lr_batches=1, lr_batch_size=500)
  config = settings.lr_config()
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 500, 3, 3, 1))
  skips = nb201.ops_to_mask((1,) * 6)
  convs = nb201.ops_to_mask((3,) * 6)
  few = float(lr.linear_regions(jax.random.split(jax.random.PRNGKey(0), 1), jnp.asarray(skips), x, config))
  many = float(lr.linear_regions(jax.random.split(jax.random.PRNGKey(0), 1), jnp.asarray(convs), x, config))
  assert many > few

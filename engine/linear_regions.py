"""Number of linear regions at initialisation (TE-NAS, Chen et al., ICLR 2021).

A ReLU network is piecewise linear; two inputs lie in the same linear region iff every ReLU has
the same on/off state for both. TE-NAS counts the distinct activation patterns over a set of
inputs, on a thin network so the count does not saturate. Setting (TE-NAS's `prune_tenas.py`,
reproduced by default in `engine.proxies`):
  * network: one NB201 cell with C=1 channel, no stem (depth 1), then BN-ReLU-pool-classifier;
  * inputs: 3 batches of 1,000 random 3x3 crops of CIFAR training images, one random colour
    channel each, normalised (N(0, 1) noise without data); BN uses each batch's statistics;
  * pattern: the sign of the input of every ReLU the network applies (one per active conv op,
    plus the head's), concatenated; the count is the number of distinct patterns over all
    3,000 inputs (at most 3,000).

Counting is exact: patterns are packed into uint32 words and sorted lexicographically, and a
region is counted at each row that differs from its predecessor. No hashing, no collisions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from search_spaces.nb201 import net as nb201_net


def pack_bits(bits):
  """Bool [N, U] -> uint32 [N, ceil(U / 32)]."""
  n, units = bits.shape
  words = -(-units // 32)
  padded = jnp.zeros((n, words * 32), jnp.uint32).at[:, :units].set(bits.astype(jnp.uint32))
  shifts = jnp.arange(32, dtype=jnp.uint32)
  return jnp.sum(padded.reshape(n, words, 32) << shifts, axis=-1, dtype=jnp.uint32)


def count_unique_rows(words):
  """Number of distinct rows of a uint32 [N, W] array (static shapes, jit-friendly)."""
  columns = tuple(words[:, w] for w in range(words.shape[1]))
  ordered = jax.lax.sort(columns, num_keys=len(columns))
  sorted_rows = jnp.stack(ordered, axis=1)
  changes = jnp.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)
  return 1 + jnp.sum(changes)


def activation_patterns(params, mask, batches, config):
  """Bool [S * n, U]: ReLU on/off patterns of S batches [S, n, H, W, C], BN per batch."""
  pre = jax.vmap(lambda x: nb201_net.relu_inputs(params, mask, x, config))(batches)
  return (pre > 0).reshape(-1, pre.shape[-1])


def linear_regions(init_keys, mask, batches, config, init='torch_default'):
  """Mean region count over repeats: repeat r initialises from init_keys[r] and reads
  batches[r] [S, n, H, W, C]; repeats are unrolled (see engine.ntk.ntk_condition)."""
  counts = []
  for r in range(batches.shape[0]):
    params = nb201_net.init_params(init_keys[r], config, init)
    counts.append(count_unique_rows(pack_bits(activation_patterns(params, mask, batches[r],
                                                                  config))))
  return jnp.mean(jnp.stack(counts).astype(jnp.float32))

"""Number of linear regions at initialisation, over a space's network (`interface.Net`).

A ReLU network is piecewise linear; two inputs lie in the same linear region iff every ReLU has
the same on/off state for both. Two ways to count, by what the network is (`Net.regions`):

  * 'patterns' (TE-NAS, Chen et al., ICLR 2021): the distinct activation patterns over a set of
    inputs, on a network thin enough that the count does not saturate. NB201's setting (TE-NAS's
    `prune_tenas.py`, reproduced by default): one cell with C=1 channel, no stem, then
    BN-ReLU-pool-classifier; 3 batches of 1,000 random 3x3 crops of CIFAR training images, one
    colour channel each (N(0, 1) noise without data); BN on each batch's statistics; the
    pattern is the sign of the input of every ReLU the network applies. Counting is exact:
    patterns are packed into uint32 words and sorted, and a region is counted at each row that
    differs from its predecessor (no hashing, no collisions). At most the number of inputs.
  * 'segments': the pieces of the network along straight segments between pairs of inputs
    (Hanin and Rolnick's regions along a line), for a space's own full-size network, where
    distinct whole patterns saturate at the number of inputs (tens of thousands of units): 1 +
    the number of units whose sign changes between neighbouring sample points (distinct units
    almost surely switch at distinct points), mean over segments.

A network that is not piecewise linear (swish) has no linear regions: nan, flag NONFINITE.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from engine.proxies.ntk import NONFINITE, OK

SEGMENT_POINTS = 64


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


def relu_inputs(net, params, row, x):
  """Pre-activations of every ReLU the network applies [B, units]; units the arch lacks are 0
  (all-zero columns leave pattern counts unchanged)."""
  cols = []
  for pre, units in net.apply(params, row, x, codes=True).codes:
    if jnp.ndim(units) == 0:
      cols.append(jnp.where(units, pre.reshape(pre.shape[0], -1), 0.0))
    else:
      cols.append(jnp.where(units, pre, 0.0).reshape(pre.shape[0], -1))
  return jnp.concatenate(cols, axis=1)


def activation_patterns(net, params, row, batches):
  """Bool [S * n, U]: ReLU on/off patterns of S batches [S, n, H, W, C], BN per batch."""
  pre = jax.vmap(lambda x: relu_inputs(net, params, row, x))(batches)
  return (pre > 0).reshape(-1, pre.shape[-1])


def segment_pieces(net, params, row, ends, points=SEGMENT_POINTS):
  """(mean linear pieces along the segments ends[s, 0] -> ends[s, 1], piecewise linear)."""
  chex.assert_rank(ends, 5)  # [segments, 2, H, W, C]
  t = jnp.linspace(0.0, 1.0, points)[:, None, None, None]

  def pieces(pair):
    xs = pair[0][None] * (1 - t) + pair[1][None] * t
    out = net.apply(params, row, xs, codes=True)
    flips = jnp.zeros(())
    for pre, units in out.codes:
      on = ((pre > 0) & jnp.broadcast_to(units, pre.shape[1:])).reshape(points, -1)
      flips = flips + jnp.sum(on[1:] != on[:-1])
    return 1.0 + flips, jnp.asarray(out.piecewise_linear)

  counts, linear = jax.lax.map(pieces, ends)
  return jnp.mean(counts), linear[0]


def linear_regions(net, init_keys, row, batches, init='torch_default'):
  """(mean region count over repeats, flag): repeat r initialises from init_keys[r] and reads
  batches[r] (patterns: [S, n, H, W, C]; segments: [segments, 2, H, W, C]); repeats are
  unrolled (see `engine.proxies.ntk.ntk_condition`)."""
  counts, linear = [], []
  for r in range(batches.shape[0]):
    params = net.init(init_keys[r], row, init)
    if net.regions == 'patterns':
      counts.append(count_unique_rows(pack_bits(activation_patterns(net, params, row,
                                                                    batches[r]))))
    else:
      count, is_linear = segment_pieces(net, params, row, batches[r])
      counts.append(count)
      linear.append(is_linear)
  value = jnp.mean(jnp.stack(counts).astype(jnp.float32))
  if not linear:  # a pattern count is a count of ReLU patterns: always a finite number
    return value, jnp.zeros((), jnp.int32)
  value = jnp.where(jnp.all(jnp.stack(linear)), value, jnp.nan)
  return value, jnp.where(jnp.isfinite(value), OK, NONFINITE).astype(jnp.int32)

"""AZ-NAS's zero-cost terms (Lee & Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network
Architecture Search", CVPR 2024): expressivity, progressivity and trainability, computed at init
from the output of every block of the network (`Outputs.stage_features`: NB201's stem, each cell
and each reduction block; tinycnn's layers; MBV2's stem and blocks). The fourth term, complexity,
is the `flops` proxy; the AZ-NAS score is the `logrank` aggregate of the four
(`engine.proxies.aggregate`).

Definitions, as in the authors' `compute_az_nas_score.py` (NB201 version), for block outputs
f_0 .. f_L of a batch (BatchNorm on batch statistics):

* expressivity of a block: the entropy -sum_k p_k log(p_k + 1e-8) of p = s / sum(s), s the
  eigenvalues of the C x C covariance of f's channels over all B*H*W positions (centred, divided
  by B*H*W), in float32 and unclipped as in the authors' code, so an ill-conditioned covariance
  gives nan (`expressivity_entropy`). `az_expressivity` sums it over the blocks.
* `az_progressivity`: the smallest increase of a block's expressivity over the previous
  block's, min_i (E_i - E_{i-1}).
* trainability of block i: g_out a Rademacher (+-1) tensor of f_i's shape, g_in = J_i^T g_out
  with J_i the Jacobian of f_i with respect to f_{i-1} (the block alone: `Net.apply`'s
  `stage_shifts`), g_in pixel-unshuffled to f_i's resolution when the block downsamples, then
  M = g_in^T g_out / (B*H*W) over positions (an estimate of the block's Jacobian; channels x
  channels) and score -sigma_max(M) - 1 / (sigma_max(M) + 1e-6) + 2 (0 at sigma 1, lower either
  side). A block whose g_in equals g_out exactly (an identity block) scores -inf.
  `az_trainability` is the mean over blocks 1..L.

A block the arch lacks (`Outputs.stage_features`' unit mask False: tinycnn's layers past its
depth, MBV2's blocks past a stage's depth, which pass their input on) is left out: expressivity
sums the blocks the arch has, progressivity and trainability run over consecutive blocks it has.
Channels whose unit mask is off (tinycnn's padding) are exactly zero, add a 0 eigenvalue and are
masked out of g_out and g_in.

Values: (value, flag) with the flags of `engine.proxies.ntk`: nan NONFINITE (a block whose
output is constant, e.g. NB201 cells that only `none` reaches, or an ill-conditioned covariance:
the authors' code gives nan there too, and their notebook ranks it last), -inf SINGULAR (an
identity block's trainability); the aggregate ranks both last.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.proxies.zero_cost import log_score_flagged as _flagged

ENTROPY_EPS = 1e-8   # inside the log of the entropy (authors' code)
SIGMA_EPS = 1e-6     # in 1 / (sigma + eps) of trainability (authors' code)
TERMS = ('az_expressivity', 'az_progressivity', 'az_trainability')


def _stages(out):
  if not out.stage_features:
    from engine.proxies.registry import ProxyError  # registry imports this module
    raise ProxyError('AZ-NAS needs the block outputs (Outputs.stage_features), which this '
                     "space's network does not fill; use another proxy")
  return out.stage_features


def _unit_mask(feature, units):
  """(present: bool scalar, channels: float [C]) of a stage feature's unit mask (a scalar mask
  says whether the block is there; all its channels count)."""
  units = jnp.asarray(units)
  if units.ndim == 0:
    return units, jnp.ones(feature.shape[-1], feature.dtype)
  units = jnp.broadcast_to(units, feature.shape[1:])
  channels = jnp.any(units.reshape(-1, feature.shape[-1]), axis=0)
  return jnp.any(units), channels.astype(feature.dtype)


def expressivity_entropy(feature, channels=None):
  """Entropy of the normalised eigenvalues of the channel covariance of f [B, H, W, C], over the
  channels where `channels` [C] is nonzero (all by default).

  As in the authors' code, eigenvalues are not clipped: an ill-conditioned float32 covariance
  (features whose scale grows through a skip-heavy network span 1e11 in eigenvalue) gets
  eigenvalues below 0 by more than 1e-8 of their sum, whose log is nan; the block's entropy is
  then nan (flagged, ranked last). Channels outside `channels` (exactly zero: padding) would
  give rounding-level eigenvalues of either sign: their diagonal is set far below the spectrum
  and the lowest eigenvalues, one per such channel, counted as exact zeros."""
  flat = feature.reshape(-1, feature.shape[-1])
  flat = flat - jnp.mean(flat, axis=0, keepdims=True)
  cov = flat.T @ flat / flat.shape[0]
  if channels is not None:
    live = channels > 0
    both = live[:, None] & live[None, :]
    floor = -(2.0 * jnp.trace(cov) + 1.0)
    cov = jnp.where(both, cov, 0.0) + jnp.diag(jnp.where(live, 0.0, floor))
  s = jnp.linalg.eigvalsh(cov)
  if channels is not None:
    s = jnp.where(jnp.arange(s.shape[0]) < jnp.sum(~live), 0.0, s)
  p = s / jnp.sum(s)
  return jnp.sum(-p * jnp.log(p + ENTROPY_EPS))


def _pixel_unshuffle(g, factor):
  """[B, H, W, C] -> [B, H/f, W/f, C*f*f] (channel order differs from PyTorch's, which the
  singular values do not see)."""
  b, h, w, c = g.shape
  g = g.reshape(b, h // factor, factor, w // factor, factor, c)
  return g.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // factor, w // factor, c * factor * factor)


def block_trainability(g_in, g_out):
  """-sigma - 1/(sigma + 1e-6) + 2 of M = g_in^T g_out / positions (after unshuffling g_in to
  g_out's resolution); -inf when g_in equals g_out exactly."""
  identity = None
  if g_in.shape == g_out.shape:
    identity = jnp.all(g_in == g_out)
  if g_in.shape[1] != g_out.shape[1]:
    g_in = _pixel_unshuffle(g_in, g_in.shape[1] // g_out.shape[1])
  a = g_in.reshape(-1, g_in.shape[-1])
  b = g_out.reshape(-1, g_out.shape[-1])
  m = a.T @ b / b.shape[0]
  sigma = jnp.linalg.svd(m, compute_uv=False)[0]
  score = -sigma - 1.0 / (sigma + SIGMA_EPS) + 2.0
  return score if identity is None else jnp.where(identity, -jnp.inf, score)


def az_terms(net, params, row, x, key, names=TERMS):
  """{name: (value, flag)} of the requested AZ-NAS terms from one forward pass (and, for
  trainability, one backward pass) of `net` on the batch x; `key` draws the Rademacher g_out."""
  names = tuple(names)
  want_train = 'az_trainability' in names
  if not want_train:
    stages = _stages(net.apply(params, row, x, stage_features=True))
    feats = [f for f, _ in stages]
    units = [u for _, u in stages]
  else:
    shapes = jax.eval_shape(lambda: _stages(net.apply(params, row, x, stage_features=True)))
    shifts = tuple(jnp.zeros(f.shape, f.dtype) for f, _ in shapes)

    def forward(sh):
      out = _stages(net.apply(params, row, x, stage_features=True, stage_shifts=sh))
      return [f for f, _ in out], [u for _, u in out]

    feats, pullback, units = jax.vjp(forward, shifts, has_aux=True)
  masks = [_unit_mask(f, u) for f, u in zip(feats, units)]
  present = jnp.stack([m[0] for m in masks])
  # consecutive present blocks: block i and the last present block before it
  seen = jnp.cumsum(present.astype(jnp.int32))
  has_prev = jnp.concatenate([jnp.zeros((1,), bool), seen[:-1] > 0])
  pair = present & has_prev
  out = {}
  if 'az_expressivity' in names or 'az_progressivity' in names:
    ent = jnp.stack([expressivity_entropy(jax.lax.stop_gradient(f),
                                          None if jnp.ndim(u) == 0 else c)
                     for f, u, (_, c) in zip(feats, units, masks)])
    expressivity = jnp.sum(jnp.where(present, ent, 0.0))
    prev_e = _last_before(ent, present)  # E of the last present block before each block
    progress = jnp.min(jnp.where(pair, ent - prev_e, jnp.inf))
    progress = jnp.where(jnp.any(pair), progress, jnp.nan)
    if 'az_expressivity' in names:
      out['az_expressivity'] = _flagged(expressivity)
    if 'az_progressivity' in names:
      out['az_progressivity'] = _flagged(progress)
  if want_train:
    keys = jax.random.split(key, len(feats))
    g_out = [jnp.where(p & (c > 0), jax.random.rademacher(k, f.shape, f.dtype), 0.0)
             for k, f, (p, c) in zip(keys, feats, masks)]
    g_shift = pullback(g_out)[0]
    scores = [jnp.asarray(jnp.nan)]
    for i in range(1, len(feats)):
      g_in = g_shift[i - 1] * masks[i - 1][1]
      scores.append(block_trainability(g_in, g_out[i]))
    scores = jnp.stack(scores)
    count = jnp.sum(pair)
    value = jnp.sum(jnp.where(pair, scores, 0.0)) / count
    out['az_trainability'] = _flagged(jnp.where(count > 0, value, jnp.nan))
  return {n: out[n] for n in names}


def _last_before(values, present):
  """[L]: for each i, values[j] of the last j < i with present[j] (values[0] where none)."""
  last = values[0]
  out = [values[0]]
  for i in range(1, values.shape[0]):
    last = jnp.where(present[i - 1], values[i - 1], last)
    out.append(last)
  return jnp.stack(out)


def az_expressivity(net, params, row, x, key=None):
  return az_terms(net, params, row, x, key, ('az_expressivity',))['az_expressivity']


def az_progressivity(net, params, row, x, key=None):
  return az_terms(net, params, row, x, key, ('az_progressivity',))['az_progressivity']


def az_trainability(net, params, row, x, key):
  return az_terms(net, params, row, x, key, ('az_trainability',))['az_trainability']

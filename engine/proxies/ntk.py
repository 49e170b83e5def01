"""Condition number of the empirical NTK at initialisation (TE-NAS, Chen et al., ICLR 2021).

Theta = J J^T, where row i of J is the gradient of sample i's summed logits with respect to the
network's weights (TE-NAS takes every parameter named 'weight': conv kernels, BN scales and the
classifier matrix; no biases: the leaves `net.ntk_weight` names). kappa = lambda_max /
lambda_min of the B x B Theta. Every function takes a space's network (`interface.Net`) and an
arch row; none names a space.

Two variants:
  * 'coupled' (TE-NAS exact): BatchNorm normalises with batch statistics and is differentiated
    through them, so every sample's output depends on the whole batch. Row i needs its own
    backward pass over the whole batch: B pullbacks of one forward pass (vmapped in chunks).
  * 'independent': the batch statistics are computed once and held constant, so sample i's
    output depends on sample i only and all B rows come from one vmapped per-sample backward
    pass (about B times cheaper). Same forward values, slightly different Jacobian.

Numerical edge cases are reported, not hidden: a non-finite Theta gives kappa = nan with flag
NONFINITE; a Theta whose smallest eigenvalue is at or below float32 round-off
(lambda_min <= B * eps * lambda_max, numpy's matrix_rank tolerance) is singular: kappa = inf with
flag SINGULAR. Disconnected cells (all paths through `none`) make Theta singular this way.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

OK, SINGULAR, NONFINITE = 0, 1, 2  # ordered by severity: a repeat's worst flag wins
FLAG_NAMES = {OK: '', NONFINITE: 'nonfinite', SINGULAR: 'singular'}
VARIANTS = ('coupled', 'independent')


def split_weights(net, params):
  """(weights, the rest): the parameters TE-NAS differentiates, and the biases it leaves out."""
  weights = jax.tree_util.tree_map_with_path(lambda p, a: a if net.ntk_weight(p) else None,
                                             params)
  rest = jax.tree_util.tree_map_with_path(lambda p, a: None if net.ntk_weight(p) else a,
                                          params)
  return weights, rest


def _merge(weights, rest):
  return jax.tree.map(lambda w, r: w if r is None else r, weights, rest,
                      is_leaf=lambda a: a is None)


def _gram(jac, batch, samples_last=False):
  """Sum over parameter leaves of J_leaf J_leaf^T, never concatenating the leaves. Leaves are
  [batch, ...], or [..., batch] with `samples_last`: the product then contracts the leading
  axis (J^T J of a [P, batch] matrix), which XLA:CPU ran faster on NB201's P ~ 10^6
  (BENCHMARKS.md, "Independent NTK's Gram")."""
  if samples_last:
    return sum(l.T @ l for l in (j.reshape(-1, batch) for j in jax.tree.leaves(jac)))
  return sum(l @ l.T for l in (j.reshape(batch, -1) for j in jax.tree.leaves(jac)))


COTANGENT_BUDGET_BYTES = 4 << 30  # what one chunk of pullbacks may hold, by `auto_cotangent_chunk`
LIVE_ACTIVATIONS = 8               # activation-sized buffers alive at once in a pullback (the
                                   # measured order; generous)
FASTEST_COTANGENT_CHUNK = 16       # larger chunks were slower on XLA:CPU, not faster
                                   # (BENCHMARKS.md, "Design choices measured")


def auto_cotangent_chunk(net, batch: int, budget: int = COTANGENT_BUDGET_BYTES) -> int:
  """How many coupled-NTK pullbacks to vmap together: each row's pullback carries cotangents for
  the whole batch, so a chunk of n rows holds n * batch * (largest feature map) floats several
  times over. The largest n within `budget`, at least 1, and at most FASTEST_COTANGENT_CHUNK
  (larger chunks were slower, not faster)."""
  widest = (net.widest or 16 * math.prod(net.input_shape)) * 4
  per_row = LIVE_ACTIVATIONS * batch * widest
  return int(max(1, min(batch, FASTEST_COTANGENT_CHUNK, budget // per_row)))


def ntk_gram(net, params, row, x, variant: str = 'coupled', cotangent_chunk: int = 0):
  """Empirical NTK Theta [B, B] of the network at arch `row` on inputs x [B, H, W, C].

  `cotangent_chunk`: coupled pullbacks vmapped together; 0 picks the largest chunk that keeps
  its memory within COTANGENT_BUDGET_BYTES (`auto_cotangent_chunk`)."""
  batch = x.shape[0]
  weights, rest = split_weights(net, params)
  forward = lambda p, xs, stats=None: net.apply(p, row, xs, stats=stats)
  if variant == 'coupled':
    _, pullback = jax.vjp(lambda w: forward(_merge(w, rest), x).logits.sum(-1), weights)
    rows = jnp.eye(batch, dtype=x.dtype)
    chunk = min(cotangent_chunk or auto_cotangent_chunk(net, batch), batch)
    chunk = max(d for d in range(1, chunk + 1) if batch % d == 0)  # equal chunks, one loop body
    # A loop over the chunks, not unrolled copies: one pullback to compile, and it ran as fast
    # (BENCHMARKS.md, "Design choices measured").
    jac = jax.lax.map(jax.vmap(lambda ct: pullback(ct)[0]),
                      rows.reshape(batch // chunk, chunk, batch))
    jac = jax.tree.map(lambda a: a.reshape((batch,) + a.shape[2:]), jac)
    return _gram(jac, batch)
  if variant == 'independent':
    stats = jax.lax.stop_gradient(forward(params, x).stats)

    def sample_output(w, xi):
      return forward(_merge(w, rest), xi[None], stats).logits.sum()

    jac = jax.vmap(jax.grad(sample_output), in_axes=(None, 0), out_axes=-1)(weights, x)
    return _gram(jac, batch, samples_last=True)
  raise ValueError(f'unknown NTK variant {variant!r}; choose one of {", ".join(VARIANTS)}')


def condition_number(gram):
  """(kappa, flag) of a symmetric PSD Gram matrix; see the module docstring for the flags."""
  finite = jnp.all(jnp.isfinite(gram))
  safe = jnp.where(finite, gram, jnp.eye(gram.shape[0], dtype=gram.dtype))
  eig = jnp.linalg.eigvalsh(safe)
  lam_min, lam_max = eig[0], eig[-1]
  tol = gram.shape[0] * jnp.finfo(gram.dtype).eps * jnp.abs(lam_max)
  singular = (lam_min <= tol) | (lam_max <= 0)
  kappa = jnp.where(singular, jnp.inf, lam_max / jnp.where(singular, 1.0, lam_min))
  kappa = jnp.where(finite, kappa, jnp.nan)
  flag = jnp.where(finite, jnp.where(singular, SINGULAR, OK), NONFINITE)
  return kappa, flag


def ntk_condition(net, init_keys, row, batches, variant='coupled', init='torch_default',
                  cotangent_chunk: int = 0):
  """Mean kappa over repeats: repeat r initialises from init_keys[r] and uses batches[r].

  Repeats are unrolled: vmapping over different weights would turn every convolution into a
  grouped one (slow on XLA:CPU). Returns (kappa, flag): flag is the worst flag over repeats
  (NONFINITE > SINGULAR > OK) and kappa is nan/inf accordingly, never a silently averaged number.
  """
  results = []
  for r in range(batches.shape[0]):
    params = net.init(init_keys[r], row, init)
    results.append(condition_number(ntk_gram(net, params, row, batches[r], variant,
                                             cotangent_chunk)))
  kappas, flags = (jnp.stack(a) for a in zip(*results))
  return jnp.mean(kappas), jnp.max(flags)

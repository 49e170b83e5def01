"""Condition number of the empirical NTK at initialisation (TE-NAS, Chen et al., ICLR 2021).

Theta = J J^T, where row i of J is the gradient of sample i's summed logits with respect to the
network's weights (TE-NAS takes every parameter named 'weight': conv kernels, BN scales and the
classifier matrix; no biases). kappa = lambda_max / lambda_min of the B x B Theta.

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

import jax
import jax.numpy as jnp

from search_spaces import nb201_net

OK, SINGULAR, NONFINITE = 0, 1, 2  # ordered by severity: a repeat's worst flag wins
FLAG_NAMES = {OK: '', NONFINITE: 'nonfinite', SINGULAR: 'singular'}
VARIANTS = ('coupled', 'independent')


def split_weights(params):
  """(weights, the rest): the parameters TE-NAS differentiates, and the biases it leaves out."""
  weights = jax.tree_util.tree_map_with_path(lambda p, a: a if nb201_net.is_weight(p) else None,
                                             params)
  rest = jax.tree_util.tree_map_with_path(lambda p, a: None if nb201_net.is_weight(p) else a,
                                          params)
  return weights, rest


def _merge(weights, rest):
  return jax.tree.map(lambda w, r: w if r is None else r, weights, rest,
                      is_leaf=lambda a: a is None)


def _gram(jac, batch):
  """Sum over parameter leaves of J_leaf J_leaf^T, never concatenating the leaves."""
  leaves = [j.reshape(batch, -1) for j in jax.tree.leaves(jac)]
  return sum(l @ l.T for l in leaves)


def ntk_gram(params, mask, x, config, variant: str = 'coupled', cotangent_chunk: int = 0):
  """Empirical NTK Theta [B, B] of the supernet `mask` on inputs x [B, H, W, C]."""
  batch = x.shape[0]
  weights, rest = split_weights(params)
  if variant == 'coupled':
    def summed_logits(w):
      return nb201_net.apply(_merge(w, rest), mask, x, config)[0].sum(-1)

    _, pullback = jax.vjp(summed_logits, weights)
    rows = jnp.eye(batch, dtype=x.dtype)
    chunk = cotangent_chunk or batch
    jac = jax.lax.map(lambda ct: pullback(ct)[0], rows, batch_size=min(chunk, batch))
  elif variant == 'independent':
    _, stats = nb201_net.apply(params, mask, x, config)
    stats = jax.lax.stop_gradient(stats)

    def sample_output(w, xi):
      return nb201_net.apply(_merge(w, rest), mask, xi[None], config, stats)[0].sum()

    jac = jax.vmap(jax.grad(sample_output), in_axes=(None, 0))(weights, x)
  else:
    raise ValueError(f'unknown NTK variant {variant!r}; choose one of {", ".join(VARIANTS)}')
  return _gram(jac, batch)


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


def ntk_condition(key, mask, batches, config, variant='coupled', init='torch_default',
                  cotangent_chunk: int = 0):
  """Mean kappa over repeats; batches [R, B, H, W, C], a fresh init per repeat from `key`.

  Returns (kappa, flag): flag is the worst flag over repeats (NONFINITE > SINGULAR > OK) and
  kappa is nan/inf accordingly, never a silently averaged number.
  """
  keys = jax.random.split(key, batches.shape[0])

  def one_repeat(args):
    k, x = args
    params = nb201_net.init_params(k, config, init)
    return condition_number(ntk_gram(params, mask, x, config, variant, cotangent_chunk))

  kappas, flags = jax.lax.map(one_repeat, (keys, batches))
  return jnp.mean(kappas), jnp.max(flags)

"""VKDNW: Variance of Knowledge of Deep Network Weights (Tybl & Neumann, "Training-free Neural
Architecture Search through Variance of Knowledge of Deep Network Weights", CVPR 2025).

The score is the entropy of the deciles of the eigenvalue spectrum of the Fisher information
matrix (FIM) of the network's predictive distribution, taken over a small fixed subset of its
weights, at initialisation:

* weights theta~: one weight of every parameter tensor of the arch's network, as the authors'
  NB201 code samples them (`get_jacobian_index` with p = 1 index per tensor: `linspace(0, n-1,
  1)` = flat index 0; all tensors): the first element of each conv/linear weight (output
  channel 0, input channel 0, top-left tap: the same weight as PyTorch's
  `weight.flatten()[0]`), BN scale, BN shift and bias. The tensors come from
  `net.param_tensors(row)` (NB201 lists them; a leaf stacking several tensors, as NB201's
  [cells, edges, ...], gives one weight per tensor). A space without that list falls back to
  one weight per Conv/Linear layer weight (`net.layer_axes`). P = their number (the paper's
  aleph, `tensor_count`).
* FIM = mean over the batch of J_n^T S_n J_n, J_n = d logits(x_n) / d theta~ [C, P], S_n =
  diag(p_n) - p_n p_n^T the covariance of the categorical output, with the softmax smoothed
  towards uniform: p_n = (1 - alpha) softmax(logits_n) + alpha / C, alpha = 0.05 (the authors'
  `cholesky_covariance`; labels are not used).
* the network runs in inference mode at its initial BN statistics (the authors call
  `model.eval()` on a freshly initialised PyTorch model: running mean 0, var 1), i.e. BN is the
  identity up to 1/sqrt(1 + eps) (`net.apply(bn='identity')`), so samples are independent.
* lambda = the P eigenvalues of the FIM; q_k = their k/10 quantiles, k = 1..9 (linear
  interpolation, as `torch.quantile`); t = q / (sum |q| + 1e-10);
  VKDNW = -sum_k t_k log(t_k + 1e-10). Higher is better (a flatter spectrum).

Which tensors the arch has: with `net.param_tensors`, exactly those the arch's own PyTorch
network would list, including a conv (and its BN) that cannot reach the output or sees only
zeros (an NB201 cell conv on a node that only `none` edges leave): its Jacobian column is 0 and
it adds zero eigenvalues, as in the authors' network; a tensor of the padded network that the
arch does not have is left out (its zero column's eigenvalue is dropped before the quantiles).
Without the list, the layer weights with a non-zero Jacobian column are the ones counted.

Computation: per-sample Jacobians by reverse mode (C vector-Jacobian products per sample,
vmapped over the batch) with respect to a perturbation added at those weights (of every tensor
of the padded network, masked by the list); the FIM's eigenvalues are the squared singular
values of A = [S_n^(1/2) J_n]_n / sqrt(B) ([B*C, P]), which keeps the small eigenvalues
accurate in float32 (eigvalsh of A^T A would lose them below eps * lambda_max). Runs under jit
and vmap over candidates like the other zero-cost proxies. Cost: C backward passes of the
batch (its time per arch: docs/correlation.md, "VKDNW").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.proxies.ntk import NONFINITE, OK, SINGULAR
from engine.proxies.zero_cost import _merge, split_layer_weights
from search_spaces.interface import path_key

ALPHA = 0.05
QUANTILES = tuple(k / 10 for k in range(1, 10))
EPS = 1e-10


def _first_index(w, stack: int):
  """Index of the first element of every tensor a leaf stacks along its `stack` leading axes."""
  return (slice(None),) * stack + (0,) * (w.ndim - stack)


def _sampled(net, params, row):
  """(the leaves sampled from, the rest of params, [(index, mask over the stacked tensors)]):
  one weight of every tensor of `net.param_tensors(row)` when the space lists them, else of
  every layer weight (`net.layer_axes`; mask None: decided by the gradient)."""
  if net.param_tensors is None:
    weights, rest = split_layer_weights(net, params)
    flat = jax.tree_util.tree_flatten_with_path(weights)[0]
    places = []
    for p, w in flat:
      axes = net.layer_axes(p, w)
      places.append((tuple(0 if a in axes else slice(None) for a in range(w.ndim)), None))
    return weights, rest, places
  masks = net.param_tensors(row)
  weights = jax.tree_util.tree_map_with_path(
      lambda p, a: a if path_key(p) in masks else None, params)
  rest = jax.tree_util.tree_map_with_path(
      lambda p, a: None if path_key(p) in masks else a, params)
  places = []
  for p, w in jax.tree_util.tree_flatten_with_path(weights)[0]:
    m = jnp.asarray(masks[path_key(p)], bool)
    places.append((_first_index(w, m.ndim), m))
  return weights, rest, places


def sampled_jacobians(net, params, row, x):
  """(J [B, C, P], logits [B, C], listed [P] bool or None): per-sample Jacobians of the logits
  with respect to one weight of every sampled tensor (`_sampled`), BN at its initial
  statistics; `listed` marks the tensors the arch has where the space lists them."""
  weights, rest, places = _sampled(net, params, row)
  flat, treedef = jax.tree_util.tree_flatten(weights)
  deltas = [jnp.zeros(w[idx].shape, w.dtype) for w, (idx, _) in zip(flat, places)]

  def logits_of(ds, xi):
    leaves = [w.at[idx].add(d) for w, (idx, _), d in zip(flat, places, ds)]
    merged = _merge(jax.tree_util.tree_unflatten(treedef, leaves), rest)
    return net.apply(merged, row, xi[None], bn='identity').logits[0]

  jac = jax.vmap(lambda xi: jax.jacrev(logits_of)(deltas, xi))(x)  # per leaf [B, C, *stack]
  jac = jnp.concatenate([j.reshape(j.shape[:2] + (-1,)) for j in jac], axis=-1)
  logits = net.apply(params, row, x, bn='identity').logits
  listed = None
  if places[0][1] is not None:
    listed = jnp.concatenate([jnp.broadcast_to(m, w[idx].shape).reshape(-1)
                              for w, (idx, m) in zip(flat, places)])
  return jac, logits, listed


def fisher_root(jac, logits, alpha=ALPHA):
  """A [B*C, P] with A^T A = the FIM mean_n J_n^T S_n J_n (S_n: smoothed softmax covariance)."""
  batch, classes = logits.shape
  p = jax.nn.softmax(logits, axis=-1) * (1 - alpha) + alpha / classes
  cov = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
  s, u = jnp.linalg.eigh(cov)
  root = jnp.einsum('bij,bj,bkj->bik', u, jnp.sqrt(jnp.maximum(s, 0.0)), u)
  return jnp.einsum('bij,bjp->bip', root, jac).reshape(batch * classes, -1) / np.sqrt(batch)


def spectrum(a, active):
  """(eigenvalues of A^T A sorted ascending [P], number of active columns n): the first P - n
  are the zeros of the inactive (all-zero) columns, the last n the active block's spectrum."""
  a = jnp.where(active[None, :], a, 0.0)
  sigma = jnp.linalg.svd(a, compute_uv=False)
  eig = jnp.square(sigma)
  if eig.shape[0] < a.shape[1]:  # more weights than rows: the rest of the spectrum is 0
    eig = jnp.concatenate([eig, jnp.zeros((a.shape[1] - eig.shape[0],), eig.dtype)])
  return jnp.sort(eig), jnp.sum(active)


def quantiles(eig_sorted, n, qs=QUANTILES):
  """Linear-interpolation quantiles (torch.quantile / numpy 'linear') of the last n entries of
  an ascending array; n may be traced."""
  size = eig_sorted.shape[0]
  start = (size - n).astype(jnp.float32)
  pos = start + jnp.asarray(qs, jnp.float32) * jnp.maximum(n - 1, 0).astype(jnp.float32)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, size - 1)
  hi = jnp.clip(lo + 1, 0, size - 1)
  frac = pos - lo.astype(jnp.float32)
  return eig_sorted[lo] + frac * (eig_sorted[hi] - eig_sorted[lo])


def entropy(q):
  """-sum t log(t + 1e-10), t = q / (||q||_1 + 1e-10) (the authors' `vkdnw_entropy`)."""
  t = q / (jnp.sum(jnp.abs(q)) + EPS)
  return -jnp.sum(t * jnp.log(t + EPS))


def vkdnw(net, params, row, x, labels=None, alpha=ALPHA):
  """(VKDNW, flag) of one candidate on one batch (module docstring). `labels` is unused. No
  layer reaching the output, or an all-zero spectrum: value 0, flag SINGULAR; a non-finite
  Jacobian: nan, flag NONFINITE."""
  del labels
  jac, logits, listed = sampled_jacobians(net, params, row, x)
  finite = jnp.all(jnp.isfinite(jac)) & jnp.all(jnp.isfinite(logits))
  jac = jnp.where(finite, jac, 0.0)
  logits = jnp.where(finite, logits, 0.0)
  active = jnp.any(jac != 0, axis=(0, 1)) if listed is None else listed
  eig, n = spectrum(fisher_root(jac, logits, alpha), active)
  q = quantiles(eig, n)
  value = jnp.where(finite, entropy(q), jnp.nan)
  singular = (n == 0) | (jnp.sum(jnp.abs(q)) == 0)
  flag = jnp.where(~finite, NONFINITE, jnp.where(singular, SINGULAR, OK))
  return value, flag.astype(jnp.int32)


def tensor_count(net, params, row, x, labels=None):
  """(aleph, OK): the paper's network-size term (the authors' `vkdnw_dim`), the number of
  parameter tensors of the arch's network (`net.param_tensors`; without it, the layer weights
  whose gradient is not zero). VKDNW_single ranks by it and VKDNW together
  (`agg:vkdnw_dim+vkdnw`, docs/correlation.md)."""
  del labels
  if net.param_tensors is not None:
    masks = net.param_tensors(row)
    value = sum(jnp.sum(jnp.asarray(m, jnp.float32)) for m in masks.values())
    return value, jnp.int32(OK)
  weights, rest = split_layer_weights(net, params)
  grads = jax.grad(lambda w: jnp.sum(net.apply(_merge(w, rest), row, x, bn='identity').logits))(
      weights)
  value = 0.0
  for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    axes = net.layer_axes(p, g)
    value = value + jnp.sum(jnp.any(g != 0, axis=axes).astype(jnp.float32))
  return value, jnp.int32(OK)

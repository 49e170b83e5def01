"""Zero-cost proxies at initialisation: grad_norm, snip, synflow, jacob_cov and NASWOT.

Definitions follow zero-cost-nas (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
ICLR 2021) as packaged by NAS-Bench-Suite-Zero (Krishnakumar et al., NeurIPS 2022), and NASWOT
(Mellor et al., "Neural Architecture Search without Training", ICML 2021). Every function takes
initialised supernet params, an op mask [6, 5] and one batch, and returns (value, flag) with the
flags of `engine.ntk` (OK, SINGULAR, NONFINITE), so it runs under jit and vmaps over candidates.

Which weights count: zero-cost-nas sums over the `weight` of every nn.Conv2d and nn.Linear, so
here the conv kernels (stem, every edge's conv1/conv3, reduction convs and shortcut) and the
classifier matrix; BN parameters and biases never count. A conv the mask switches off gets a
zero gradient in the masked supernet, so it adds nothing, as if it were absent.

BatchNorm uses the batch's statistics (PyTorch train mode) except in synflow (see there).
grad_norm and snip each run their own forward/backward pass; they could share one (not done yet).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.ntk import NONFINITE, OK, SINGULAR
from search_spaces import nb201_net

# Leaves holding nn.Conv2d / nn.Linear weights, and how many leading (cell, edge) axes each has.
LAYER_WEIGHTS = ('conv', 'conv1', 'conv3', 'conv_a', 'conv_b', 'shortcut', 'fc')
JACOB_COV_K = 1e-5


def _name(path) -> str:
  return str(path[-1].key)


def split_layer_weights(params):
  """(layer weights, the rest): the Conv/Linear weights the zero-cost proxies differentiate."""
  pick = lambda keep: jax.tree_util.tree_map_with_path(
      lambda p, a: a if (_name(p) in LAYER_WEIGHTS) == keep else None, params)
  return pick(True), pick(False)


def _merge(weights, rest):
  return jax.tree.map(lambda w, r: w if r is None else r, weights, rest,
                      is_leaf=lambda a: a is None)


def _layer_axes(path, leaf):
  """Axes of one layer's weight: the supernet stacks cell convs as [cells, edges, k, k, i, o]."""
  lead = 2 if _name(path) in ('conv1', 'conv3') else 0
  return tuple(range(lead, leaf.ndim))


def cross_entropy(logits, labels):
  """Mean cross-entropy over the batch (PyTorch's F.cross_entropy default)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def loss_grads(params, mask, x, labels, config, sparse=False):
  """(layer weights, dL/d layer weights) of the cross-entropy loss on one batch."""
  weights, rest = split_layer_weights(params)

  def loss(w):
    return cross_entropy(nb201_net.apply(_merge(w, rest), mask, x, config, None, sparse)[0],
                         labels)

  return weights, jax.grad(loss)(weights)


def _finite_flag(value):
  return jnp.where(jnp.isfinite(value), OK, NONFINITE).astype(jnp.int32)


def grad_norm(params, mask, x, labels, config, sparse=False):
  """Sum over layers of ||dL/dW_layer||_2 (zero-cost-nas `grad_norm`): how strongly the loss
  pulls on the weights at init. Each cell's edge conv is its own layer."""
  _, grads = loss_grads(params, mask, x, labels, config, sparse)
  norms = jax.tree_util.tree_map_with_path(
      lambda p, g: jnp.sum(jnp.sqrt(jnp.sum(jnp.square(g), _layer_axes(p, g)))), grads)
  value = sum(jax.tree.leaves(norms))
  return value, _finite_flag(value)


def snip(params, mask, x, labels, config, sparse=False):
  """sum |W * dL/dW| (SNIP connection sensitivity, Lee et al. ICLR 2019, as a zero-cost proxy):
  the first-order loss change from removing each weight."""
  weights, grads = loss_grads(params, mask, x, labels, config, sparse)
  value = sum(jnp.sum(jnp.abs(w * g)) for w, g in zip(jax.tree.leaves(weights),
                                                      jax.tree.leaves(grads)))
  return value, _finite_flag(value)


def _identity_stats(params, mask, x, config):
  """BN statistics mean 0, var 1 - eps: every BN becomes scale * x + bias, i.e. the identity at
  init (scale 1, bias 0). Stands in for zero-cost-nas's synflow net built with bn=False."""
  used = jax.eval_shape(lambda: nb201_net.apply(params, mask, x, config)[1])
  return jax.tree.map(lambda st: (jnp.zeros(st[0].shape, st[0].dtype),
                                  jnp.full(st[1].shape, 1 - nb201_net.BN_EPS, st[1].dtype)),
                      used, is_leaf=lambda a: isinstance(a, tuple))


def synflow(params, mask, x, labels, config, sparse=False):
  """log synflow: log sum |W * dR/dW| with R = sum of the outputs of the network with |params|,
  BN as identity, on one all-ones input (Tanaka et al. NeurIPS 2020; zero-cost-nas `synflow`).

  Why log space: the score is a sum over input-output paths of the product of their weights and
  grows geometrically with depth (it overflows float32 for the full NB201 network). With
  non-negative weights and input every ReLU passes its input, so the network minus the
  classifier bias is linear. `apply`'s hook divides the features after every cell / block by
  their (stop-gradient) maximum s_i; that divides R and every dR/dW by S = prod s_i exactly, so
  log synflow = logsumexp over leaves of log sum |W * dR'/dW| + sum log s_i.
  `x` fixes only the input's shape and `labels` is unused (one signature for all proxies).
  A network with no input-output path through weights has synflow 0: value -inf, flag SINGULAR.
  """
  del labels
  params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1,) + x.shape[1:], x.dtype)
  stats = _identity_stats(params, mask, ones, config)
  weights, rest = split_layer_weights(params)

  def scaled_output(w):
    logs = []

    def rescale(a):
      peak = jax.lax.stop_gradient(jnp.max(a))
      scale = jnp.where(peak > 0, peak, 1.0)
      logs.append(jnp.log(scale))
      return a / scale

    out = nb201_net.apply(_merge(w, rest), mask, ones, config, stats, sparse, hook=rescale)[0]
    return jnp.sum(out), sum(logs, jnp.zeros(()))

  grads, log_scale = jax.grad(scaled_output, has_aux=True)(weights)
  leaf_logs = jnp.stack([jnp.log(jnp.sum(jnp.abs(w * g))) for w, g in
                         zip(jax.tree.leaves(weights), jax.tree.leaves(grads))])
  value = jax.nn.logsumexp(leaf_logs) + log_scale
  flag = jnp.where(jnp.isnan(value) | (value == jnp.inf), NONFINITE,
                   jnp.where(value == -jnp.inf, SINGULAR, OK))
  return value, flag.astype(jnp.int32)


def jacob_cov(params, mask, x, labels, config, sparse=False):
  """-sum_i [log(l_i + k) + 1 / (l_i + k)], l = eigenvalues of the correlation matrix of the
  per-sample input Jacobians d(sum of outputs)/dx, k = 1e-5 (Mellor et al. 2020 v1 "jacob_cov",
  zero-cost-nas `jacob_cov`): higher when samples' local linear maps are less correlated.
  A sample with a zero Jacobian (disconnected network) makes the correlation undefined: nan,
  flag NONFINITE (zero-cost-nas returns nan there too)."""
  del labels
  jac = jax.grad(lambda xs: nb201_net.apply(params, mask, xs, config, None, sparse)[0].sum())(x)
  jac = jac.reshape(x.shape[0], -1)
  centred = jac - jnp.mean(jac, axis=1, keepdims=True)
  norms = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1))
  corr = (centred @ centred.T) / (norms[:, None] * norms[None, :])
  finite = jnp.all(jnp.isfinite(corr))
  eig = jnp.linalg.eigvalsh(jnp.where(finite, corr, jnp.eye(corr.shape[0], dtype=corr.dtype)))
  value = -jnp.sum(jnp.log(eig + JACOB_COV_K) + 1.0 / (eig + JACOB_COV_K))
  value = jnp.where(finite, value, jnp.nan)
  return value, _finite_flag(value)


def nwot_kernel(params, mask, x, config):
  """NASWOT's K [B, B]: sum over the ReLU units of every active ReLU of c c^T + (1-c)(1-c)^T,
  c = the units' on/off code per sample (= number of units minus the Hamming distance)."""
  kernel = jnp.zeros((x.shape[0], x.shape[0]), jnp.float32)
  for pre, active in nb201_net.relu_blocks(params, mask, x, config):
    c = (pre > 0).astype(jnp.float32)
    kernel = kernel + jnp.where(active, c @ c.T + (1 - c) @ (1 - c).T, 0.0)
  return kernel


def nwot(params, mask, x, labels, config, sparse=False):
  """log |det K| of NASWOT's kernel (Mellor et al. ICML 2021, the `nwot` of NAS-Bench-Suite-Zero):
  high when the ReLU codes of different samples differ. `labels` and `sparse` are unused (the
  ReLU walk is dense). A singular K (e.g. duplicate codes) gives -inf and flag SINGULAR."""
  del labels, sparse
  sign, logdet = jnp.linalg.slogdet(nwot_kernel(params, mask, x, config))
  flag = jnp.where(jnp.isnan(logdet), NONFINITE, jnp.where(sign > 0, OK, SINGULAR))
  return logdet, flag.astype(jnp.int32)


PROXIES = {'grad_norm': grad_norm, 'snip': snip, 'synflow': synflow, 'jacob_cov': jacob_cov,
           'nwot': nwot}

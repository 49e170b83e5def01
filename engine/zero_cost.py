"""Zero-cost proxies at initialisation: grad_norm, snip, synflow, jacob_cov, NASWOT, fisher,
GraSP, ZiCo and Zen-NAS.

Definitions follow zero-cost-nas (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
ICLR 2021) as packaged by NAS-Bench-Suite-Zero (Krishnakumar et al., NeurIPS 2022), and NASWOT
(Mellor et al., "Neural Architecture Search without Training", ICML 2021), ZiCo (Li et al., ICLR
2023) and Zen-NAS (Lin et al., ICCV 2021). Every function takes
initialised supernet params, an op mask [6, 5] and one batch, and returns (value, flag) with the
flags of `engine.ntk` (OK, SINGULAR, NONFINITE), so it runs under jit and vmaps over candidates.

Which weights count: zero-cost-nas sums over the `weight` of every nn.Conv2d and nn.Linear, so
here the conv kernels (stem, every edge's conv1/conv3, reduction convs and shortcut) and the
classifier matrix; BN parameters and biases never count. A conv the mask switches off gets a
zero gradient in the masked supernet, so it adds nothing, as if it were absent.

BatchNorm uses the batch's statistics (PyTorch train mode) except in synflow (see there).
Every proxy runs the one network walk (`nb201_net.apply`, dense or sparse); fisher's hooks are
its probes. `gradient_proxies` computes grad_norm, snip, fisher and grasp from one shared pass.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from engine.ntk import NONFINITE, OK, SINGULAR
from search_spaces.nb201 import net as nb201_net
from search_spaces import nb201
from search_spaces.nb201 import CONV1, CONV3

# Leaves holding nn.Conv2d / nn.Linear weights, and how many leading (cell, edge) axes each has.
LAYER_WEIGHTS = nb201_net.LAYER_WEIGHTS
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
  value = _grad_norm_value(grads)
  return value, _finite_flag(value)


def snip(params, mask, x, labels, config, sparse=False):
  """sum |W * dL/dW| (SNIP connection sensitivity, Lee et al. ICLR 2019, as a zero-cost proxy):
  the first-order loss change from removing each weight."""
  weights, grads = loss_grads(params, mask, x, labels, config, sparse)
  value = _snip_value(weights, grads)
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
  classifier bias is linear. The walk (`rescale`) divides the features after every cell / block by
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
    out, net = nb201_net.run(_merge(w, rest), mask, ones, config, sparse=sparse,
                             fixed_stats=stats, rescale=True)
    return jnp.sum(out), net.log_scale

  grads, log_scale = jax.grad(scaled_output, has_aux=True)(weights)
  leaf_logs = jnp.stack([jnp.log(jnp.sum(jnp.abs(w * g))) for w, g in
                         zip(jax.tree.leaves(weights), jax.tree.leaves(grads))])
  return log_score_flagged(jax.nn.logsumexp(leaf_logs) + log_scale)


def log_score_flagged(value):
  """(value, flag) of a log score: -inf (a zero score) SINGULAR, nan or +inf NONFINITE."""
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
  return jacob_cov_value(jac)


def jacob_cov_value(jac):
  """(value, flag) of jacob_cov from the per-sample input Jacobians [B, ...].

  The eigenvalues of the B x B correlation matrix Z Z^T (Z: the centred, unit-norm rows) are
  taken as the squared singular values of Z, not from eigvalsh(Z Z^T): in float32 the latter
  is off by about eps * B absolutely (~8e-6 at B = 64), the size of k = 1e-5 itself, so the
  1 / (v + k) terms of near-zero eigenvalues moved the score by ~1% under rounding-level changes
  of the input (and a slightly negative v can reach log of a negative number). sigma^2 is
  accurate to ~(eps * sqrt(B))^2 there; it matched a float64 reference to 1e-6 relative."""
  batch = jac.shape[0]
  jac = jac.reshape(batch, -1)
  centred = jac - jnp.mean(jac, axis=1, keepdims=True)
  rows = centred / jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True))
  finite = jnp.all(jnp.isfinite(rows))
  sigma = jnp.linalg.svd(jnp.where(finite, rows, 0.0), compute_uv=False)
  eig = jnp.square(sigma)
  if eig.shape[0] < batch:  # fewer Jacobian entries than samples: the rest of Z Z^T's spectrum is 0
    eig = jnp.concatenate([eig, jnp.zeros((batch - eig.shape[0],), eig.dtype)])
  value = -jnp.sum(jnp.log(eig + JACOB_COV_K) + 1.0 / (eig + JACOB_COV_K))
  value = jnp.where(finite, value, jnp.nan)
  return value, _finite_flag(value)


def nwot_kernel(params, mask, x, config, sparse=False):
  """NASWOT's K [B, B]: sum over the ReLU units of every active ReLU of c c^T + (1-c)(1-c)^T,
  c = the units' on/off code per sample (= number of units minus the Hamming distance)."""
  kernel = jnp.zeros((x.shape[0], x.shape[0]), jnp.float32)
  for pre, active in nb201_net.relu_blocks(params, mask, x, config, sparse):
    c = (pre > 0).astype(jnp.float32)
    kernel = kernel + jnp.where(active, c @ c.T + (1 - c) @ (1 - c).T, 0.0)
  return kernel


def nwot(params, mask, x, labels, config, sparse=False):
  """log |det K| of NASWOT's kernel (Mellor et al. ICML 2021, the `nwot` of NAS-Bench-Suite-Zero):
  high when the ReLU codes of different samples differ. `labels` is unused. A singular K (e.g.
  duplicate codes) gives -inf and flag SINGULAR."""
  del labels
  return nwot_value(nwot_kernel(params, mask, x, config, sparse))


def nwot_value(kernel):
  """(log |det K|, flag) of a NASWOT kernel; singular K: -inf, flag SINGULAR."""
  sign, logdet = jnp.linalg.slogdet(kernel)
  flag = jnp.where(jnp.isnan(logdet), NONFINITE, jnp.where(sign > 0, OK, SINGULAR))
  return logdet, flag.astype(jnp.int32)


def _lead(path, leaf) -> int:
  """Number of leading (cell, edge) axes of a layer-weight leaf."""
  return leaf.ndim - len(_layer_axes(path, leaf))


probe_ones = nb201_net.probe_ones


# ----------------------------------------------------------------------------- gradient proxies

def _grad_norm_value(grads):
  norms = jax.tree_util.tree_map_with_path(
      lambda p, g: jnp.sum(jnp.sqrt(jnp.sum(jnp.square(g), _layer_axes(p, g)))), grads)
  return sum(jax.tree.leaves(norms))


def _snip_value(weights, grads):
  return sum(jnp.sum(jnp.abs(w * g)) for w, g in zip(jax.tree.leaves(weights),
                                                      jax.tree.leaves(grads)))


def _fisher_value(weights, probe_grads):
  """sum over layers and output channels k of fan_in * 0.5 * mean_n (dL/dprobe[n, k])^2."""
  def layer(path, w, g):
    chex.assert_equal(g.shape[:_lead(path, w)], w.shape[:_lead(path, w)])
    fan_in = int(np.prod(w.shape[_lead(path, w):-1]))
    return fan_in * 0.5 * jnp.sum(jnp.mean(jnp.square(g), axis=-2))
  return sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(layer, weights, probe_grads)))


def _grasp_value(weights, hg):
  return -sum(jnp.sum(w * h) for w, h in zip(jax.tree.leaves(weights), jax.tree.leaves(hg)))


GRADIENT_GROUP = ('grad_norm', 'snip', 'fisher', 'grasp')


def gradient_proxies(params, mask, x, labels, config, names=GRADIENT_GROUP, sparse=False):
  """{name: (value, flag)} for the requested members of GRADIENT_GROUP from one shared pass.

  One backward pass of the cross-entropy through the network with probes on every Conv/Linear
  output (`nb201_net.apply(probes=...)`) gives the layer-weight gradients g (grad_norm, snip)
  and the probe gradients (fisher) together. With grasp, that pass is linearised
  (`jax.linearize` of the gradient) so the same pass also yields H g by one more forward-mode
  evaluation.
  """
  unknown = set(names) - set(GRADIENT_GROUP)
  if unknown:
    raise ValueError(f'not a gradient-group proxy: {sorted(unknown)}')
  weights, rest = split_layer_weights(params)
  probes = probe_ones(params, x.shape[0])

  def loss(w, s):
    logits = nb201_net.apply(_merge(w, rest), mask, x, config, None, sparse, probes=s)[0]
    return cross_entropy(logits, labels)

  grad_fn = jax.grad(loss, argnums=(0, 1))
  gw, gs = grad_fn(weights, probes)
  if 'grasp' in names:
    # Forward mode over the backward pass in direction (g, 0): H g without storing the
    # linearisation (jax.linearize keeps residuals of every switch branch; measured slower).
    zeros = jax.tree.map(jnp.zeros_like, probes)
    hg = jax.jvp(grad_fn, (weights, probes), (jax.lax.stop_gradient(gw), zeros))[1][0]
  make = {'grad_norm': lambda: _grad_norm_value(gw), 'snip': lambda: _snip_value(weights, gw),
          'fisher': lambda: _fisher_value(weights, gs),
          'grasp': lambda: _grasp_value(weights, hg)}
  values = {n: make[n]() for n in names}
  return {n: (v, _finite_flag(v)) for n, v in values.items()}


def fisher(params, mask, x, labels, config, sparse=False):
  """Fisher channel saliency (Theis et al. 2018; Turner et al. ICLR 2020; zero-cost-nas `fisher`):
  for every Conv/Linear layer output a and output channel k,
  F_k = 0.5 * mean over samples n of (sum over pixels of a * dL/da)[n, k]^2; zero-cost-nas then
  broadcasts F_k over the channel's fan_in weights (weight.shape[1:]) and sums, so the value is
  sum over layers and channels of fan_in * F_k. The hooked activations are the raw outputs of
  every convolution (stem, each edge's 1x1 / 3x3 conv before its BN, reduction conv_a / conv_b
  before BN, reduction shortcut) and the classifier's logits (with bias); L is the batch-mean
  cross-entropy with BN on batch statistics. A conv the mask switches off gets zero gradient and
  adds nothing.

  Checked against NASLib's `naslib/predictors/utils/pruners/measures/fisher.py` (the
  zero-cost-nas `foresight/pruners/measures/fisher.py` with its Samsung header): it swaps the
  forward of every nn.Conv2d / nn.Linear so the raw output passes an nn.Identity whose
  (old-style) backward hook reads that output and dL/d(output); per channel
  0.5 * mean_n (sum_hw act * grad)^2 after `net.train()`, abs, broadcast over weight.shape[1:];
  `predictive.find_measures` sums every array. Same definition as here; NASLib's runs differ only
  in settings (PyTorch default init drawn per arch, a fresh shuffled train batch per arch, the
  batch size of its config)."""
  return gradient_proxies(params, mask, x, labels, config, ('fisher',), sparse)['fisher']


def grasp(params, mask, x, labels, config, sparse=False):
  """GraSP (Wang et al. ICLR 2020) as a zero-cost proxy (zero-cost-nas `grasp`, T=1, one split):
  -sum over layer weights of W * (H g), g = dL/dW on the batch (held constant), H the Hessian of
  the cross-entropy w.r.t. the layer weights (BN on batch statistics, BN parameters fixed).
  zero-cost-nas gets H g from a second backward pass of g . dL/dW; here it is the forward-mode
  derivative of the gradient in direction g (`jax.linearize`), the same quantity.

  Checked against NASLib's `naslib/predictors/utils/pruners/measures/grasp.py` (zero-cost-nas
  `grasp.py`): g from `autograd.grad` without create_graph (T=1, num_iters=1, split_data=1), a
  second pass with create_graph, z = sum(g.data * dL/dW), z.backward(), score -W * W.grad summed
  over the Conv/Linear weights (sign kept because accuracy correlated negatively without it). It
  does not call net.train(); the parsed NASLib graph is in train mode, so BN uses batch
  statistics as here."""
  return gradient_proxies(params, mask, x, labels, config, ('grasp',), sparse)['grasp']


# ----------------------------------------------------------------------------- ZiCo, Zen-NAS

ZICO_SPLITS = 2


def zico(params, mask, x, labels, config, sparse=False, splits=ZICO_SPLITS):
  """ZiCo (Li et al., "Zero-Cost Proxy based on Inverse Coefficient of Variation", ICLR 2023):
  sum over layers of log( sum over the layer's weights of mean_b |g_b| / std_b(g_b) ), g_b the
  gradient of the cross-entropy on mini-batch b; weights whose gradient has zero std across the
  batches are left out, and a layer whose sum is 0 (e.g. a switched-off conv) adds nothing
  (the official code and NASLib's `zico` do the same). Needs >= 2 mini-batches: the batch is
  split into `splits` equal consecutive parts (NASLib splits its one batch in 2), each with its
  own BN statistics; std is the population std (numpy's default). A non-finite gradient makes
  the value nan (flag NONFINITE)."""
  chex.assert_rank(x, 4)
  if splits < 2 or x.shape[0] % splits:
    raise ValueError(f'zico needs >= 2 equal splits of the batch; got {splits} for batch '
                     f'{x.shape[0]}')
  xs = x.reshape((splits, -1) + x.shape[1:])
  ls = labels.reshape(splits, -1)
  grads = jax.vmap(lambda xb, lb: loss_grads(params, mask, xb, lb, config, sparse)[1])(xs, ls)

  layer_logs = lambda path, g: zico_layer_log(g, _layer_axes(path, g[0]))
  return zico_value(grads, jax.tree_util.tree_map_with_path(layer_logs, grads))


def zico_layer_log(g, axes):
  """One layer's ZiCo term from its mini-batch gradients g [splits, ...]: log of the sum over
  `axes` (of one gradient) of mean|g| / std(g), weights with zero std left out; a sum of 0
  adds nothing."""
  mean_abs, std = jnp.mean(jnp.abs(g), 0), jnp.std(g, 0)
  ratio = jnp.where(std > 0, mean_abs / jnp.where(std > 0, std, 1.0), 0.0)
  total = jnp.sum(ratio, axes)
  return jnp.sum(jnp.where(total > 0, jnp.log(jnp.where(total > 0, total, 1.0)), 0.0))


def zico_value(grads, layer_logs):
  """(value, flag): the sum of the layers' terms, nan when any gradient is not finite (it would
  drop out of the std > 0 filter silently)."""
  value = sum(jax.tree.leaves(layer_logs))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  value = jnp.where(finite, value, jnp.nan)
  return value, _finite_flag(value)


ZEN_ALPHA = 0.01


def unit_gaussian_weights(params):
  """kaiming_normal params (layer weights N(0, 2 / fan_in)) -> layer weights N(0, 1): Zen-NAS's
  `network_weight_gaussian_init` (BN scale 1 and shift 0 as initialised)."""
  def scale(path, w):
    fan_in = int(np.prod(w.shape[_lead(path, w):-1]))
    return w * np.sqrt(fan_in / 2.0)
  weights, rest = split_layer_weights(params)
  return _merge(jax.tree_util.tree_map_with_path(scale, weights), rest)


def _log_bn_scales(stats, mask):
  """sum over the network's BN layers of log sqrt(mean over channels of the batch variance).
  BNs of convs the mask switches off, and of convs whose input node only `none` edges feed (a
  zero tensor, so batch variance 0 and log sigma = -inf), do not exist in the architecture (the
  lowering drops them too) and are left out. A cell whose output is unreachable still gives
  -inf through the network's constant output, flagged by the caller."""
  mask = jax.nn.one_hot(mask, nb201.NUM_OPS) if jnp.ndim(mask) == 1 else jnp.asarray(mask)
  live = nb201.live_nodes(jnp.any(mask[:, 1:] != 0, -1))  # any non-none op on the edge
  total = jnp.zeros(())
  log_sigma = lambda var: 0.5 * jnp.log(jnp.mean(var, -1))
  for key, (_, var) in stats.items():
    parts = key.split('/')
    if parts[0].startswith('stage'):  # stage/cell/edge/conv1|conv3
      edge = int(parts[2])
      active = ((mask[edge, CONV1 if parts[3] == 'conv1' else CONV3] != 0)
                & live[nb201.EDGES[edge][1]])
      total = total + jnp.where(active, log_sigma(jnp.where(active, var, 1.0)), 0.0)
    else:
      total = total + log_sigma(var)
  return total


def zen(params, mask, x, labels, config, sparse=False, key=None, alpha=ZEN_ALPHA):
  """Zen-score (Lin et al., "Zen-NAS", ICCV 2021; official `compute_zen_score`, as in NASLib):
  log E_n ||f(x) - f(x + alpha eps)||_1 + sum over BN layers of log sigma_bn, with
  * layer weights N(0, 1) (`unit_gaussian_weights`: expects kaiming_normal params),
  * x and eps standard Gaussian of the batch's shape (drawn from `key`; the batch's images and
    `labels` are not used), alpha = 0.01,
  * f the feature map before global average pooling (after the head's BN and ReLU), the norm the
    per-sample sum of |.| over pixels and channels averaged over the batch (the official code;
    the paper writes a Frobenius norm),
  * BN on batch statistics in both forward passes, sigma_bn = sqrt(mean over channels of the
    batch variance on the unperturbed input). The official code reads BN's running_var after
    its two forward passes (momentum 0.1 from 1), an implementation artefact; this uses the
    paper's batch variance.
  """
  del labels
  key = jax.random.PRNGKey(0) if key is None else key
  params = unit_gaussian_weights(params)
  k_x, k_eps = jax.random.split(key)
  x0 = jax.random.normal(k_x, x.shape, x.dtype)
  x1 = x0 + alpha * jax.random.normal(k_eps, x.shape, x.dtype)

  def pre_gap(inputs):
    _, net = nb201_net.run(params, mask, inputs, config, sparse=sparse)
    head = params['head']
    return jax.nn.relu(nb201_net.batch_norm(net.last, head['bn_scale'], head['bn_bias'])[0]), net.stats

  f0, stats = pre_gap(x0)
  f1, _ = pre_gap(x1)
  delta = jnp.mean(jnp.sum(jnp.abs(f0 - f1), (1, 2, 3)))
  value = jnp.log(delta) + _log_bn_scales(stats, mask)
  return value, _finite_flag(value)


PROXIES = {'grad_norm': grad_norm, 'snip': snip, 'synflow': synflow, 'jacob_cov': jacob_cov,
           'nwot': nwot, 'fisher': fisher, 'grasp': grasp, 'zico': zico, 'zen': zen}

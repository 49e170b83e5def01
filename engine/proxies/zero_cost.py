"""Zero-cost proxies at initialisation: grad_norm, snip, synflow, jacob_cov, NASWOT, fisher,
GraSP, ZiCo and Zen-NAS.

Definitions follow zero-cost-nas (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
ICLR 2021) as packaged by NAS-Bench-Suite-Zero (Krishnakumar et al., NeurIPS 2022), and NASWOT
(Mellor et al., "Neural Architecture Search without Training", ICML 2021), ZiCo (Li et al., ICLR
2023) and Zen-NAS (Lin et al., ICCV 2021). Every function takes a space's network
(`search_spaces.interface.Net`: `net.apply` is all they call), its params, an arch row (traced:
op indices, or a relaxed mask) and one batch, and returns (value, flag) with the flags of
`engine.proxies.ntk` (OK, SINGULAR, NONFINITE), so it runs under jit and batches over candidates. No
function names a space.

Which weights count: zero-cost-nas sums over the `weight` of every nn.Conv2d and nn.Linear: here
the leaves `net.layer_axes` names (a leaf may stack several layers, as NB201's cell convs
[cells, edges, k, k, i, o]; each is its own layer); BN parameters and biases never count. A
weight the arch does not use gets a zero gradient in the masked network, so it adds nothing, as
if it were absent.

BatchNorm uses the batch's statistics (PyTorch train mode) except in synflow (see there).
fisher's hooks are the network's probes. `gradient_proxies` computes grad_norm, snip, fisher and
grasp from one shared pass. On networks whose nonlinearity is not ReLU (tinycnn's swish), nwot
codes a unit as on when its pre-activation is positive (as NASWOT is used on GELU/swish nets);
without BatchNorm, Zen-score's BN term is 0 and synflow's BN-free net is the net.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from engine.proxies.ntk import NONFINITE, OK, SINGULAR, _merge
from search_spaces.interface import path_key

JACOB_COV_K = 1e-5


def split_layer_weights(net, params):
  """(layer weights, the rest): the Conv/Linear weights the zero-cost proxies differentiate."""
  is_layer = lambda p, a: net.layer_axes(p, a) is not None
  pick = lambda keep: jax.tree_util.tree_map_with_path(
      lambda p, a: a if is_layer(p, a) == keep else None, params)
  return pick(True), pick(False)


def layer_fans(net, row, tree):
  """{path key: fan-in} of the layer leaves of `tree` (weights or probes), from `net.fan_in`."""
  fans = net.fan_in(row)
  out = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = path_key(path)
    out[key] = fans[key] if key in fans else fans[key.rsplit('/', 1)[0]]
  return out


def cross_entropy(logits, labels):
  """Mean cross-entropy over the batch (PyTorch's F.cross_entropy default)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def loss_grads(net, params, row, x, labels):
  """(layer weights, dL/d layer weights) of the cross-entropy loss on one batch."""
  weights, rest = split_layer_weights(net, params)

  def loss(w):
    return cross_entropy(net.apply(_merge(w, rest), row, x).logits, labels)

  return weights, jax.grad(loss)(weights)


def _finite_flag(value):
  return jnp.where(jnp.isfinite(value), OK, NONFINITE).astype(jnp.int32)


def grad_norm(net, params, row, x, labels):
  """Sum over layers of ||dL/dW_layer||_2 (zero-cost-nas `grad_norm`): how strongly the loss
  pulls on the weights at init. Each cell's edge conv is its own layer."""
  _, grads = loss_grads(net, params, row, x, labels)
  value = _grad_norm_value(net, grads)
  return value, _finite_flag(value)


def snip(net, params, row, x, labels):
  """sum |W * dL/dW| (SNIP connection sensitivity, Lee et al. ICLR 2019, as a zero-cost proxy):
  the first-order loss change from removing each weight."""
  weights, grads = loss_grads(net, params, row, x, labels)
  value = _snip_value(weights, grads)
  return value, _finite_flag(value)


def synflow(net, params, row, x, labels=None):
  """log synflow: log sum |W * dR/dW| with R = sum of the outputs of the network with |params|,
  BN as identity, on one all-ones input (Tanaka et al. NeurIPS 2020; zero-cost-nas `synflow`).

  Why log space: the score is a sum over input-output paths of the product of their weights and
  grows geometrically with depth (it overflows float32 for the full NB201 network). With
  non-negative weights and input every ReLU passes its input, so the network minus the
  classifier bias is linear. A network may (`apply(rescale=True)`) divide the features after
  its blocks by their (stop-gradient) maximum s_i; that divides R and every dR/dW by
  S = prod s_i exactly, so log synflow = logsumexp over leaves of log sum |W * dR'/dW| +
  sum log s_i (`Outputs.log_scale`). `x` fixes only the input's shape and `labels` is unused.
  A network with no input-output path through weights has synflow 0: value -inf, flag SINGULAR.
  """
  del labels
  params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1,) + x.shape[1:], x.dtype)
  weights, rest = split_layer_weights(net, params)

  def scaled_output(w):
    out = net.apply(_merge(w, rest), row, ones, bn='identity', rescale=True)
    return jnp.sum(out.logits), out.log_scale

  grads, log_scale = jax.grad(scaled_output, has_aux=True)(weights)
  leaf_logs = jnp.stack([jnp.log(jnp.sum(jnp.abs(w * g))) for w, g in
                         zip(jax.tree.leaves(weights), jax.tree.leaves(grads))])
  return log_score_flagged(jax.nn.logsumexp(leaf_logs) + log_scale)


def log_score_flagged(value):
  """(value, flag) of a log score: -inf (a zero score) SINGULAR, nan or +inf NONFINITE."""
  flag = jnp.where(jnp.isnan(value) | (value == jnp.inf), NONFINITE,
                   jnp.where(value == -jnp.inf, SINGULAR, OK))
  return value, flag.astype(jnp.int32)


def jacob_cov(net, params, row, x, labels=None):
  """-sum_i [log(l_i + k) + 1 / (l_i + k)], l = eigenvalues of the correlation matrix of the
  per-sample input Jacobians d(sum of outputs)/dx, k = 1e-5 (Mellor et al. 2020 v1 "jacob_cov",
  zero-cost-nas `jacob_cov`): higher when samples' local linear maps are less correlated.
  A sample with a zero Jacobian (disconnected network) makes the correlation undefined: nan,
  flag NONFINITE (zero-cost-nas returns nan there too)."""
  del labels
  jac = jax.grad(lambda xs: net.apply(params, row, xs).logits.sum())(x)
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


def nwot_kernel(net, params, row, x):
  """NASWOT's K [B, B]: sum over the ReLU units the arch has of c c^T + (1-c)(1-c)^T, c = the
  units' on/off code per sample (= number of units minus the Hamming distance). A code block
  whose unit mask is one bool (NB201: the ReLU of a switched-off op) counts whole or not at
  all; otherwise each unit counts where its mask is set."""
  kernel = jnp.zeros((x.shape[0], x.shape[0]), jnp.float32)
  for pre, units in net.apply(params, row, x, codes=True).codes:
    c = (pre.reshape(pre.shape[0], -1) > 0).astype(jnp.float32)
    if jnp.ndim(units) == 0:
      kernel = kernel + jnp.where(units, c @ c.T + (1 - c) @ (1 - c).T, 0.0)
      continue
    units = jnp.broadcast_to(units, pre.shape[1:]).reshape(1, -1).astype(jnp.float32)
    c, off = c * units, (1 - c) * units
    kernel = kernel + c @ c.T + off @ off.T
  return kernel


def nwot(net, params, row, x, labels=None):
  """log |det K| of NASWOT's kernel (Mellor et al. ICML 2021, the `nwot` of NAS-Bench-Suite-Zero):
  high when the ReLU codes of different samples differ. `labels` is unused. A singular K (e.g.
  duplicate codes) gives -inf and flag SINGULAR."""
  del labels
  return nwot_value(nwot_kernel(net, params, row, x))


def nwot_value(kernel):
  """(log |det K|, flag) of a NASWOT kernel; singular K: -inf, flag SINGULAR."""
  sign, logdet = jnp.linalg.slogdet(kernel)
  flag = jnp.where(jnp.isnan(logdet), NONFINITE, jnp.where(sign > 0, OK, SINGULAR))
  return logdet, flag.astype(jnp.int32)


# ----------------------------------------------------------------------------- gradient proxies

def _grad_norm_value(net, grads):
  norms = jax.tree_util.tree_map_with_path(
      lambda p, g: jnp.sum(jnp.sqrt(jnp.sum(jnp.square(g), net.layer_axes(p, g)))), grads)
  return sum(jax.tree.leaves(norms))


def _snip_value(weights, grads):
  return sum(jnp.sum(jnp.abs(w * g)) for w, g in zip(jax.tree.leaves(weights),
                                                      jax.tree.leaves(grads)))


def _fisher_value(fans, probe_grads):
  """sum over layers and output channels k of fan_in * 0.5 * mean_n (dL/dprobe[n, k])^2."""
  return sum(fans[path_key(p)] * 0.5 * jnp.sum(jnp.mean(jnp.square(g), axis=-2))
             for p, g in jax.tree_util.tree_flatten_with_path(probe_grads)[0])


def _grasp_value(weights, hg):
  return -sum(jnp.sum(w * h) for w, h in zip(jax.tree.leaves(weights), jax.tree.leaves(hg)))


GRADIENT_GROUP = ('grad_norm', 'snip', 'fisher', 'grasp')


def gradient_proxies(net, params, row, x, labels, names=GRADIENT_GROUP):
  """{name: (value, flag)} for the requested members of GRADIENT_GROUP from one shared pass.

  One backward pass of the cross-entropy through the network with probes on every Conv/Linear
  output (`net.apply(probes=...)`) gives the layer-weight gradients g (grad_norm, snip) and the
  probe gradients (fisher) together. With grasp, the forward-mode derivative of that pass in
  direction g gives H g by one more evaluation.
  """
  unknown = set(names) - set(GRADIENT_GROUP)
  if unknown:
    raise ValueError(f'not a gradient-group proxy: {sorted(unknown)}')
  weights, rest = split_layer_weights(net, params)
  probes = net.probes(params, x.shape[0])

  def loss(w, s):
    return cross_entropy(net.apply(_merge(w, rest), row, x, probes=s).logits, labels)

  grad_fn = jax.grad(loss, argnums=(0, 1))
  gw, gs = grad_fn(weights, probes)
  if 'grasp' in names:
    # Forward mode over the backward pass in direction (g, 0): H g without storing the
    # linearisation (jax.linearize keeps residuals of every switch branch; measured slower).
    zeros = jax.tree.map(jnp.zeros_like, probes)
    hg = jax.jvp(grad_fn, (weights, probes), (jax.lax.stop_gradient(gw), zeros))[1][0]
  make = {'grad_norm': lambda: _grad_norm_value(net, gw),
          'snip': lambda: _snip_value(weights, gw),
          'fisher': lambda: _fisher_value(layer_fans(net, row, gs), gs),
          'grasp': lambda: _grasp_value(weights, hg)}
  values = {n: make[n]() for n in names}
  return {n: (v, _finite_flag(v)) for n, v in values.items()}


def fisher(net, params, row, x, labels):
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
  return gradient_proxies(net, params, row, x, labels, ('fisher',))['fisher']


def grasp(net, params, row, x, labels):
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
  return gradient_proxies(net, params, row, x, labels, ('grasp',))['grasp']


# ----------------------------------------------------------------------------- ZiCo, Zen-NAS

ZICO_SPLITS = 2


def zico(net, params, row, x, labels, splits=ZICO_SPLITS):
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
  grads = jax.vmap(lambda xb, lb: loss_grads(net, params, row, xb, lb)[1])(xs, ls)

  layer_logs = lambda path, g: zico_layer_log(g, net.layer_axes(path, g[0]))
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


def _scale(w, factor_sq):
  # a static fan-in scales in float64 then rounds (as numpy would), a traced one in float32
  if isinstance(factor_sq, (int, float, np.number)):
    return w * np.sqrt(factor_sq)
  return w * jnp.sqrt(jnp.asarray(factor_sq, jnp.float32))


def unit_gaussian_weights(net, params, row):
  """kaiming_normal params (layer weights N(0, 2 / fan_in)) -> layer weights N(0, 1): Zen-NAS's
  `network_weight_gaussian_init` (BN scale 1 and shift 0 as initialised)."""
  weights, rest = split_layer_weights(net, params)
  fans = layer_fans(net, row, weights)
  scaled = jax.tree_util.tree_map_with_path(
      lambda p, w: _scale(w, fans[path_key(p)] / 2.0), weights)
  return _merge(scaled, rest)


def zen(net, params, row, x, labels=None, key=None, alpha=ZEN_ALPHA):
  """Zen-score (Lin et al., "Zen-NAS", ICCV 2021; official `compute_zen_score`, as in NASLib):
  log E_n ||f(x) - f(x + alpha eps)||_1 + sum over BN layers of log sigma_bn, with
  * layer weights N(0, 1) (`unit_gaussian_weights`: expects kaiming_normal params),
  * x and eps standard Gaussian of the batch's shape (drawn from `key`; the batch's images and
    `labels` are not used), alpha = 0.01,
  * f the features the classifier reads (`Outputs.features`: NB201's feature map before global
    average pooling, after the head's BN and ReLU), the norm the per-sample sum of |.| averaged
    over the batch (the official code; the paper writes a Frobenius norm),
  * BN on batch statistics in both forward passes, sigma_bn = sqrt(mean over channels of the
    batch variance on the unperturbed input) over the BN layers the arch has
    (`Outputs.bn_log_sigma`). The official code reads BN's running_var after its two forward
    passes (momentum 0.1 from 1), an implementation artefact; this uses the paper's batch
    variance.
  """
  del labels
  key = jax.random.PRNGKey(0) if key is None else key
  params = unit_gaussian_weights(net, params, row)
  k_x, k_eps = jax.random.split(key)
  x0 = jax.random.normal(k_x, x.shape, x.dtype)
  x1 = x0 + alpha * jax.random.normal(k_eps, x.shape, x.dtype)
  out0 = net.apply(params, row, x0, features=True)
  f1 = net.apply(params, row, x1, features=True).features
  delta = jnp.mean(jnp.sum(jnp.abs(out0.features - f1), tuple(range(1, f1.ndim))))
  value = jnp.log(delta) + out0.bn_log_sigma
  return value, _finite_flag(value)


PROXIES = {'grad_norm': grad_norm, 'snip': snip, 'synflow': synflow, 'jacob_cov': jacob_cov,
           'nwot': nwot, 'fisher': fisher, 'grasp': grasp, 'zico': zico, 'zen': zen}

"""The training-free proxies on any registered search space, through its `Net` (apply function).

Every function takes a space's `Net`, an arch row (traced) and a batch and returns (value, flag)
with the flags of `engine.ntk` (OK, SINGULAR, NONFINITE), so it runs under jit and batches over
candidates. No function names a space: the network is only `net.init` / `net.apply` and the
contract of `search_spaces.interface` (layer weights are the leaves named 'w', unused weights get
zero gradient, probes scale layer outputs, `Outputs.codes` are the pre-activations of the
nonlinearities with the mask of units the arch has).

The definitions are those of `engine.zero_cost` (zero-cost-nas / NAS-Bench-Suite-Zero, NASWOT,
ZiCo, Zen-NAS; see there), NB201's fast path, written again over the `Net` contract (NB201's
params and probes have their own layout). Tests hold each space's padded, masked network against
the arch's own network under these proxies, and batched scores against single ones. On spaces whose nonlinearity is not ReLU (tinycnn's swish):
  * nwot codes a unit as on when its pre-activation is positive: for swish that is the half
    where it is close to the identity, as NASWOT is used on GELU/swish nets;
  * linear regions are undefined (a swish network is not piecewise linear): value nan, flag
    NONFINITE, never a number;
  * everything else is defined unchanged.
Networks without BatchNorm: Zen-score's BN term is 0, and synflow's BN-free net is the net.

Linear regions here count the pieces of the network along straight segments between pairs of
inputs (Hanin and Rolnick's regions along a line), see `linear_regions`. TE-NAS's own count
(distinct patterns of a thin net on 3x3 crops, `engine.linear_regions`) needs a cell network;
the segment count needs only `apply`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from engine import ntk
from engine import proxies as proxies_lib
from engine.zero_cost import (ZEN_ALPHA, _finite_flag, _merge, cross_entropy, jacob_cov_value,
                              log_score_flagged, nwot_value, zico_layer_log, zico_value)

GRADIENT_GROUP = ('grad_norm', 'snip', 'fisher', 'grasp')


def _is_weight(path) -> bool:
  return str(path[-1].key) == 'w'


def split_weights(params):
  pick = lambda keep: jax.tree_util.tree_map_with_path(
      lambda p, a: a if _is_weight(p) == keep else None, params)
  return pick(True), pick(False)


def _layers(tree):
  """{layer: its weight leaf} of a params-shaped tree."""
  return {name: leaf['w'] for name, leaf in tree.items() if isinstance(leaf, dict) and 'w' in leaf}


def gradient_proxies(net, params, row, x, labels, names=GRADIENT_GROUP) -> dict:
  """{name: (value, flag)} of grad_norm, snip, fisher, grasp from one shared backward pass."""
  weights, rest = split_weights(params)
  probes = {k: jnp.ones(s, x.dtype) for k, s in net.probe_shapes(x.shape[0]).items()}

  def loss(w, pr):
    return cross_entropy(net.apply(_merge(w, rest), row, x, probes=pr).logits, labels)

  grad_fn = jax.grad(loss, argnums=(0, 1))
  gw, gp = grad_fn(weights, probes)
  w_layers, g_layers = _layers(weights), _layers(gw)
  out = {}
  if 'grad_norm' in names:
    out['grad_norm'] = sum(jnp.sqrt(jnp.sum(jnp.square(g))) for g in g_layers.values())
  if 'snip' in names:
    out['snip'] = sum(jnp.sum(jnp.abs(w_layers[k] * g)) for k, g in g_layers.items())
  if 'fisher' in names:
    fans = net.fan_in(row)
    out['fisher'] = sum(jnp.asarray(fans[k], jnp.float32) * 0.5 * jnp.sum(jnp.mean(g * g, 0))
                        for k, g in gp.items())
  if 'grasp' in names:
    zeros = jax.tree.map(jnp.zeros_like, probes)
    hg = jax.jvp(grad_fn, (weights, probes), (jax.lax.stop_gradient(gw), zeros))[1][0]
    out['grasp'] = -sum(jnp.sum(w_layers[k] * h) for k, h in _layers(hg).items())
  return {k: (v, _finite_flag(v)) for k, v in out.items()}


def synflow(net, params, row, x):
  """log sum |W * dR/dW|, R = sum of the outputs of the net with |params| (BN as identity) on
  one all-ones input. Computed in float32 and logged at the end; a zero score is -inf with
  flag SINGULAR, an overflow NONFINITE."""
  params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1,) + x.shape[1:], x.dtype)
  weights, rest = split_weights(params)
  grads = jax.grad(lambda w: jnp.sum(net.apply(_merge(w, rest), row, ones,
                                               bn='identity').logits))(weights)
  total = sum(jnp.sum(jnp.abs(w * g)) for w, g in zip(_layers(weights).values(),
                                                       _layers(grads).values()))
  return log_score_flagged(jnp.log(total))


def jacob_cov(net, params, row, x):
  return jacob_cov_value(jax.grad(lambda xs: net.apply(params, row, xs).logits.sum())(x))


def nwot(net, params, row, x):
  kernel = jnp.zeros((x.shape[0], x.shape[0]), jnp.float32)
  for pre, units in net.apply(params, row, x).codes:
    units = jnp.broadcast_to(units, pre.shape[1:]).reshape(1, -1).astype(jnp.float32)
    c = (pre.reshape(pre.shape[0], -1) > 0).astype(jnp.float32) * units
    off = (1 - c) * units
    kernel = kernel + c @ c.T + off @ off.T
  return nwot_value(kernel)


def zico(net, params, row, x, labels, splits=2):
  chex.assert_rank(x, 4)
  if splits < 2 or x.shape[0] % splits:
    raise ValueError(f'zico needs >= 2 equal splits of the batch; got {splits} for batch '
                     f'{x.shape[0]}')
  weights, rest = split_weights(params)
  xs = x.reshape((splits, -1) + x.shape[1:])
  ls = labels.reshape(splits, -1)
  grad = lambda xb, lb: jax.grad(
      lambda w: cross_entropy(net.apply(_merge(w, rest), row, xb).logits, lb))(weights)
  grads = _layers(jax.vmap(grad)(xs, ls))
  return zico_value(grads, {k: zico_layer_log(g, tuple(range(g.ndim - 1))) for k, g in grads.items()})


def zen(net, row, x, key, alpha=ZEN_ALPHA):
  """Zen-score with N(0, 1) layer weights on Gaussian inputs (see `engine.zero_cost.zen`); the
  features are those the classifier reads."""
  k_init, k_x, k_eps = jax.random.split(key, 3)
  params = net.init(k_init, row, 'kaiming_normal')
  fans = net.fan_in(row)
  params = {k: ({**v, 'w': v['w'] * jnp.sqrt(jnp.asarray(fans[k], jnp.float32) / 2.0)}
                if isinstance(v, dict) and 'w' in v else v) for k, v in params.items()}
  x0 = jax.random.normal(k_x, x.shape, x.dtype)
  x1 = x0 + alpha * jax.random.normal(k_eps, x.shape, x.dtype)
  out0, out1 = net.apply(params, row, x0), net.apply(params, row, x1)
  delta = jnp.mean(jnp.sum(jnp.abs(out0.features - out1.features), 1))
  value = jnp.log(delta) + out0.bn_log_sigma
  return value, _finite_flag(value)


def ntk_cond(net, params, row, x):
  """Condition number of the empirical NTK of the summed logits over the layer weights
  (TE-NAS's definition), batch-coupled through any BatchNorm as the batch runs together."""
  weights, rest = split_weights(params)
  jac = jax.jacrev(lambda w: net.apply(_merge(w, rest), row, x).logits.sum(-1))(weights)
  flat = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jax.tree.leaves(jac)], 1)
  value, flag = ntk.condition_number(flat @ flat.T)  # NB201's rule: same flags, same tolerance
  return value, flag.astype(jnp.int32)


def linear_regions(net, params, row, ends, points=64):
  """Linear pieces along the segments ends[s, 0] -> ends[s, 1], estimated as 1 + the number of
  ReLU units whose sign changes between neighbouring sample points, summed over units (distinct
  units almost surely switch at distinct points; the count does not saturate at `points`, as
  counting distinct whole patterns does on a network with tens of thousands of units). Mean over
  segments; nan with flag NONFINITE when the net is not piecewise linear."""
  chex.assert_rank(ends, 5)  # [segments, 2, H, W, C]
  t = jnp.linspace(0.0, 1.0, points)[:, None, None, None]

  def pieces(pair):
    xs = pair[0][None] * (1 - t) + pair[1][None] * t
    out = net.apply(params, row, xs)
    flips = jnp.zeros(())
    for pre, units in out.codes:
      on = ((pre > 0) & jnp.broadcast_to(units, pre.shape[1:])).reshape(points, -1)
      flips = flips + jnp.sum(on[1:] != on[:-1])
    return 1.0 + flips, out.piecewise_linear

  counts, linear = jax.lax.map(pieces, ends)
  value = jnp.where(linear[0], jnp.mean(counts), jnp.nan)
  return value, _finite_flag(value)


# The proxies this module implements over a `Net`, by name; what each reads and which way is
# better come from the one proxy registry (`engine.proxies.REGISTRY`): name -> (kind of inputs,
# higher is better). (ntk_cond here is the batch-coupled NTK of the whole net; NB201's
# `ntk_cond_independent` has no Net implementation yet.)
IMPLEMENTED = ('grad_norm', 'snip', 'fisher', 'grasp', 'synflow', 'jacob_cov', 'nwot', 'zico',
               'zen', 'ntk_cond', 'linear_regions', 'params', 'flops')
PROXIES = {name: (proxies_lib.REGISTRY[name].needs or 'analytic',
                  proxies_lib.REGISTRY[name].higher_is_better) for name in IMPLEMENTED}


def network_proxies(net, row, inputs, names, keys) -> dict:
  """{name: (value, flag)} for the network proxies `names` of one candidate row. `inputs` holds
  'zc' / 'zc_labels' / 'ntk' / 'lr' batches; `keys[name]` is the proxy's init key (shared by
  every candidate of a run, TE-NAS's convention)."""
  out = {}
  group = [n for n in names if n in GRADIENT_GROUP]
  if group:
    params = net.init(keys['gradient'], row)
    out.update(gradient_proxies(net, params, row, inputs['zc'], inputs['zc_labels'], group))
  for name in names:
    if name in GRADIENT_GROUP or PROXIES[name][0] == 'analytic':
      continue
    params = net.init(keys[name], row) if name != 'zen' else None
    if name == 'synflow':
      out[name] = synflow(net, params, row, inputs['zc'])
    elif name == 'jacob_cov':
      out[name] = jacob_cov(net, params, row, inputs['zc'])
    elif name == 'nwot':
      out[name] = nwot(net, params, row, inputs['zc'])
    elif name == 'zico':
      out[name] = zico(net, params, row, inputs['zc'], inputs['zc_labels'])
    elif name == 'zen':
      out[name] = zen(net, row, inputs['zc'], keys[name])
    elif name == 'ntk_cond':
      out[name] = ntk_cond(net, params, row, inputs['ntk'])
    elif name == 'linear_regions':
      out[name] = linear_regions(net, params, row, inputs['lr'])
  return out


def analytic(graphs, names) -> dict:
  """params / flops (multiply-accumulates) of lowered graphs: {name: np.ndarray}."""
  from hardware import graph as graph_lib
  stats = [graph_lib.node_stats(g) for g in graphs]
  out = {}
  if 'params' in names:
    out['params'] = np.array([s.params.sum() for s in stats], float)
  if 'flops' in names:
    out['flops'] = np.array([s.macs.sum() for s in stats], float)
  return out

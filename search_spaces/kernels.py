"""Kernels the search spaces' JAX networks share: convolution, BatchNorm, average pools.

They live here, apart from any one space, so that every space runs the same code (and the same
measured speedups): NB201's supernet (`search_spaces.nb201.net`), tinycnn's and mbv2's networks,
and the QAT / integer networks (`engine.quant.qat_layers`, `engine.quant.graph_int`), whose BN
epsilon and pools must equal the scoring network's for their outputs to match it.

`conv` is a k x k convolution whose gradients are written by hand: XLA:CPU's own convolution
gradients are many times slower inside control flow and under vmap (see `conv`,
docs/network.md).
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-5  # PyTorch's BatchNorm default (NB201's networks are PyTorch's)


def _conv(x, w, stride):
  pad = w.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, stride=1):
  """k x k convolution, padding k // 2, NHWC x HWIO (PyTorch's padding for NB201's convs).

  Only its gradient is custom, for two reasons measured on XLA:CPU:
    * inside `lax.cond` (the single-path walk) XLA's own weight and input gradients of a
      convolution fall back to kernels an order of magnitude slower (docs/network.md), while a
      forward convolution and a matrix
      product keep their speed. So the input gradient of a stride-1 conv is written as a forward
      conv with the flipped kernel, and the weight gradient as an im2col matrix product;
    * vmapping XLA's weight gradient over NTK Jacobian rows turns it into a grouped convolution;
      `conv_weight_grad` chooses its own batched form instead (see there).
  The backward pass is itself differentiable (GraSP's Hessian-vector product is forward mode
  over it).
  """
  return _conv(x, w, stride)


def _conv_fwd(x, w, stride):
  return _conv(x, w, stride), (x, w)


def _input_grad(g, w, stride, x_shape):
  if stride == 1:  # the transpose of a 'same' stride-1 conv is a 'same' conv, flipped kernel
    return _conv(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), 1)
  if x_shape[-3] % stride == 0 and x_shape[-2] % stride == 0:
    return _strided_input_grad(g, w, stride)
  zeros = jnp.zeros(x_shape, g.dtype)
  return jax.vjp(lambda x_: _conv(x_, w, stride), zeros)[1](g)[0]


def _strided_input_grad(g, w, s):
  """Input gradient of a strided 'same' conv, one output phase at a time.

  XLA writes it as a convolution over g dilated with zeros (s*s times the work, and at NTK
  shapes it ran at ~6 GFLOP/s on XLA:CPU). With out[i] = sum_d w[d] x[s*i + d - p] (p = k // 2),
  input row q = s*m + r receives g[m + (r + p - d) // s] w[d] from the taps d = r + p (mod s).
  So each phase (ry, rx) is one matrix product of shifted g's with its taps, and the phases are
  interleaved. g [..., Ho, Wo, O], w [k, k, C, O] -> [..., s*Ho, s*Wo, C]."""
  k, pad = w.shape[0], w.shape[0] // 2
  ho, wo = g.shape[-3], g.shape[-2]
  lead = g.ndim - 3

  gp = jnp.pad(g, ((0, 0),) * lead + ((k, k), (k, k), (0, 0)))  # |shift| <= k

  def shifted(oy, ox):  # g[m + oy, n + ox], zero outside
    return gp[..., k + oy:k + oy + ho, k + ox:k + ox + wo, :]

  rows = []
  for ry in range(s):
    cols = []
    for rx in range(s):
      taps = [(dy, dx) for dy in range(k) if (dy - ry - pad) % s == 0
              for dx in range(k) if (dx - rx - pad) % s == 0]
      if not taps:  # e.g. a 1x1 conv's odd rows: no output reads them
        cols.append(jnp.zeros(g.shape[:-1] + (w.shape[2],), g.dtype))
        continue
      gs = jnp.stack([shifted((ry + pad - dy) // s, (rx + pad - dx) // s) for dy, dx in taps], -2)
      ws = jnp.stack([w[dy, dx] for dy, dx in taps])  # [T, C, O]
      cols.append(jnp.einsum('...to,tco->...c', gs, ws))
    rows.append(jnp.stack(cols, -2))  # [..., Ho, Wo, s, C]
  out = jnp.stack(rows, -4)           # [..., Ho, s, Wo, s, C]
  return out.reshape(g.shape[:-3] + (s * ho, s * wo, w.shape[2]))


def _conv_bwd(stride, residuals, g):
  x, w = residuals
  return _input_grad(g, w, stride, x.shape), conv_weight_grad(x, g, w.shape[0], stride)


conv.defvjp(_conv_fwd, _conv_bwd)


def _native_weight_grad(x, g, k, stride):
  zeros = jnp.zeros((k, k, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(lambda w: _conv(x, w, stride), zeros)[1](g)[0]


def _patches(x, k, stride, ho, wo):
  """im2col: x [..., H, W, C] -> [..., Ho, Wo, k * k * C], taps in (dy, dx, c) order (HWIO)."""
  if k == 1 and stride == 1:
    return x
  pad = k // 2
  lead = x.ndim - 3
  xp = jnp.pad(x, ((0, 0),) * lead + ((pad, pad), (pad, pad), (0, 0)))
  taps = [xp[..., dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]
          for dy in range(k) for dx in range(k)]
  return jnp.concatenate(taps, -1)


def _matmul_weight_grad(x, g, k, stride):
  """Weight gradient as one matrix product of im2col patches and g (no batch axes), or one
  batched product per kernel tap when a leading axis n holds separate gradients:
  x [n, B, H, W, Cin], g [n, B, Ho, Wo, O] -> [n, k, k, Cin, O]. (Per tap was faster than one
  batched im2col product on XLA:CPU for per-sample gradients: BENCHMARKS.md, "Design choices
  measured".)"""
  ho, wo = g.shape[-3], g.shape[-2]
  if x.ndim == 4:
    cols = _patches(x, k, stride, ho, wo)
    out = cols.reshape(-1, cols.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    return out.reshape(k, k, x.shape[-1], g.shape[-1])
  return _per_tap_weight_grad(x, g, k, stride)


def _per_tap_weight_grad(x, g, k, stride):
  """The weight gradient as one product per kernel tap, in plain (transposable) ops:
  x [..., B, H, W, Cin], g [..., B, Ho, Wo, O] -> [..., k, k, Cin, O] (leading axes batched)."""
  ho, wo, pad, lead = g.shape[-3], g.shape[-2], k // 2, x.ndim - 4
  xp = jnp.pad(x, ((0, 0),) * (lead + 1) + ((pad, pad), (pad, pad), (0, 0)))
  taps = [jnp.einsum('...bhwc,...bhwo->...co',
                     xp[..., dy:dy + stride * (ho - 1) + 1:stride,
                        dx:dx + stride * (wo - 1) + 1:stride, :], g)
          for dy in range(k) for dx in range(k)]
  return jnp.stack(taps, -3).reshape(x.shape[:lead] + (k, k, x.shape[-1], g.shape[-1]))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv_weight_grad(x, g, k, stride=1):
  """d<g, conv(x, w)>/dw as [k, k, Cin, Cout], with batching chosen for speed on CPU.

  Unbatched: an im2col matrix product (fast inside control flow too). Vmapped over g only
  (coupled-NTK rows share x): the rows are folded into output channels, one product with n*Cout
  columns. Vmapped over both (per-sample gradients): one batched product. It is bilinear in
  (x, g), so its forward-mode rule is wg(dx, g) + wg(x, dg).
  """
  return _batched_weight_grad(x, g, k, stride)


@conv_weight_grad.defjvp
def _weight_grad_jvp(k, stride, primals, tangents):
  (x, g), (dx, dg) = primals, tangents
  # JAX cannot transpose the custom-batched product, and reverse over reverse (grad_prune's mask
  # gradient of synflow or jacob_cov, themselves gradients) transposes this tangent: traced
  # inside `transposable_tangents`, it is written in plain ops instead, the products the custom
  # rule runs unbatched (one im2col product; per tap with a leading axis). One im2col product
  # rather than one per tap: grad_prune's program compiled 24% and ran 23% faster, gradients
  # equal to 6e-7 (BENCHMARKS.md, "Design choices measured").
  wg = _matmul_weight_grad if _TRANSPOSABLE[0] else conv_weight_grad
  return conv_weight_grad(x, g, k, stride), wg(dx, g, k, stride) + wg(x, dg, k, stride)


_TRANSPOSABLE = [False]


@contextlib.contextmanager
def transposable_tangents():
  """Functions traced inside take conv's second-order tangents in plain ops, which reverse mode
  can transpose; outside, the custom-batched product (GraSP's forward over reverse ran 5-15%
  slower with the plain ops in one loaded A/B sitting, so it keeps the custom one). Both are the
  same numbers; a program traced with the custom one cannot be reversed twice, and
  `Problem.grad` then falls back to forward mode."""
  before, _TRANSPOSABLE[0] = _TRANSPOSABLE[0], True
  try:
    yield
  finally:
    _TRANSPOSABLE[0] = before


def _batched_weight_grad(x, g, k, stride):
  @jax.custom_batching.custom_vmap
  def grad(x, g):
    return _matmul_weight_grad(x, g, k, stride)

  @grad.def_vmap
  def _rule(axis_size, in_batched, x, g):
    x_batched, g_batched = in_batched
    if x_batched and g_batched:
      return _matmul_weight_grad(x, g, k, stride), True
    if g_batched:
      n, b, ho, wo, o = g.shape
      folded = jnp.moveaxis(g, 0, -2).reshape(b, ho, wo, n * o)
      # Recurse into `grad`: when an outer vmap (over candidates) batches x as well, it must
      # reach the batched-product rule again.
      out = grad(x, folded).reshape(k, k, x.shape[-1], n, o)
      return jnp.moveaxis(out, 3, 0), True
    g = jnp.broadcast_to(g, (axis_size,) + g.shape)  # only x is batched here
    return _matmul_weight_grad(x, g, k, stride), True

  return grad(x, g)


def batch_norm(x, scale, bias, stats=None):
  """Normalise with batch statistics over (N, H, W), or with `stats` = (mean, var) if given."""
  if stats is None:
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
  else:
    mean, var = stats
  return (x - mean) * (jax.lax.rsqrt(var + BN_EPS) * scale) + bias, (mean, var)


def avg_pool_3x3(x):
  """3x3 average pool, stride 1, padding 1, padding not counted (count_include_pad=False)."""
  window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  return total / _pool_counts(*x.shape[-3:-1]).astype(x.dtype)


def _pool_counts(h, w):
  """[1, h, w, 1] numbers of in-bounds taps of a 3x3 window (padding 1): built in numpy, since
  XLA constant-folded a reduce_window over ones at every pool of every traced program."""
  taps = lambda n: 1 + (np.arange(n) > 0) + (np.arange(n) < n - 1)
  return np.outer(taps(h), taps(w)).astype(np.float32)[None, :, :, None]


def avg_pool_2x2(x):
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4.0

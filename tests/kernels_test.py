"""The kernels the spaces share: the convolution's own gradients against XLA's, the pools."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from search_spaces import kernels


def test_avg_pool_ignores_padding():
  x = jnp.ones((1, 4, 4, 1))
  np.testing.assert_allclose(kernels.avg_pool_3x3(x), x)


@pytest.mark.parametrize('size', [8, 7])  # 7: a strided input grad falls back to XLA's
def test_conv_custom_gradient_matches_xla(size):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 5))
  for k, stride in ((1, 1), (3, 1), (3, 2), (1, 2), (5, 4)):
    w = jax.random.normal(jax.random.PRNGKey(k + stride), (k, k, 5, 4))
    g = jax.random.normal(jax.random.PRNGKey(9), kernels.conv(x, w, stride).shape)
    ours = jax.vjp(lambda x_, w_: kernels.conv(x_, w_, stride), x, w)[1](g)
    xla = jax.vjp(lambda x_, w_: kernels._conv(x_, w_, stride), x, w)[1](g)
    for a, b in zip(ours, xla):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_strided_input_grad_is_batched_and_differentiable_like_xla():
  """The phase-wise input gradient of a stride-2 conv under vmap over cotangents (the exact
  NTK's rows) and under forward mode over the backward pass (GraSP's Hessian-vector product)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4))
  gs = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 4, 4, 4))
  grad_x = lambda f, w_, g: jax.vjp(lambda x_: f(x_, w_, 2), x)[1](g)[0]
  np.testing.assert_allclose(jax.vmap(lambda g: grad_x(kernels.conv, w, g))(gs),
                             jax.vmap(lambda g: grad_x(kernels._conv, w, g))(gs),
                             rtol=1e-4, atol=1e-4)
  dw = jax.random.normal(jax.random.PRNGKey(3), w.shape)
  ours = jax.jvp(lambda w_: grad_x(kernels.conv, w_, gs[0]), (w,), (dw,))
  xla = jax.jvp(lambda w_: grad_x(kernels._conv, w_, gs[0]), (w,), (dw,))
  for a, b in zip(ours, xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_weight_grad_batching_rules_match_native():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 8, 8, 5))
  g = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 4, 4, 6))
  native = lambda x_, g_: kernels._native_weight_grad(x_, g_, 3, 2)
  ours = lambda x_, g_: kernels.conv_weight_grad(x_, g_, 3, 2)
  np.testing.assert_allclose(jax.vmap(ours)(x, g), jax.vmap(native)(x, g), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jax.vmap(ours, (None, 0))(x[0], g),
                             jax.vmap(native, (None, 0))(x[0], g), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jax.vmap(ours, (0, None))(x, g[0]),
                             jax.vmap(native, (0, None))(x, g[0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
def test_reverse_over_reverse_matches_xla_and_forward_over_reverse(stride):
  """The gradient of a gradient-based score (synflow-like: sum(w * dL/dw)) with respect to a
  mask on the weights, under vmap over candidates as the scorer runs it: reverse over the
  custom backward pass (grad_prune's one-pass mode, traced in `transposable_tangents`) against
  XLA's own convolution and against forward over reverse."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 8, 8, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4))
  masks = jax.random.uniform(jax.random.PRNGKey(2), (3,), minval=0.5, maxval=1.5)

  def score(conv, m, x_):
    loss = lambda w_: jnp.sum(jnp.tanh(conv(x_, w_ * m, stride)) ** 2)
    return jnp.sum(w * jax.grad(loss)(w))

  for how in (jax.grad, jax.jacfwd):
    with kernels.transposable_tangents():
      ours = jax.vmap(how(lambda m, x_: score(kernels.conv, m, x_)))(masks, x)
    xla = jax.vmap(how(lambda m, x_: score(kernels._conv, m, x_)))(masks, x)
    np.testing.assert_allclose(ours, xla, rtol=1e-4, atol=1e-4)

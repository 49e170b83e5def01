"""Graphs and checks shared by the hardware tests."""
import jax
import jax.numpy as jnp
import numpy as np

import hardware
from hardware import devices
from hardware import graph as G
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph

SMALL = nb201.NB201Config(C=4, N=1, input_size=8)


def gated_graph():
  """x -> {identity (g0), conv (g1), pool (g2)} -> sum -> relu (g3) -> conv2 -> add(., sum)."""
  b = G.GraphBuilder('gated', num_gates=4)
  x = b.input((8, 8, 4))
  i = b.identity(x, gate=0, name='skip')
  c = b.conv2d(x, 4, 3, gate=1, name='conv')
  p = b.pool(x, 'avg', 3, 1, 'same', gate=2, name='pool')
  s = b.add(i, c, p, name='node1')
  r = b.activation(s, 'relu', gate=3, name='relu')
  c2 = b.conv2d(r, 4, 1, name='conv2')
  b.add(c2, s, name='out')
  return b.build()


def assert_latency_gradient_matches_fd(runtime):
  """d latency / d gates of the small NB201 template under `runtime` vs central differences."""
  t = nb201_graph.template(SMALL)
  dev = hardware.get_device('stm32f746')
  cycles = jnp.asarray(devices.coefficients(dev, runtime), jnp.float32)
  f = jax.jit(lambda g: hardware._single_cost(t, dev, runtime, g, None, cycles)['latency_ms'])
  rng = np.random.default_rng(0)
  gates = jnp.asarray(rng.uniform(0.2, 0.9, 30), jnp.float32)
  grad = jax.jit(jax.grad(f))(gates)
  for _ in range(3):
    v = jnp.asarray(rng.normal(size=30), jnp.float32)
    fd = (f(gates + 1e-3 * v) - f(gates - 1e-3 * v)) / 2e-3
    np.testing.assert_allclose(grad @ v, fd, rtol=2e-2, atol=1e-4 * abs(float(f(gates))))
  assert float(jnp.abs(grad).sum()) > 0

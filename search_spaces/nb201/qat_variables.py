"""The supernet's weights as a QAT network's variables (`variables_from_supernet`).

It reads the supernet's parameter layout (`net.init_params`, `net._conv_leaves`), which is
NB201's own, so it lives in the NB201 package; the variable names are the QAT network's
(`search_spaces.nb201.qat.layer_name`). Tests use it to hold the supernet and `QATNetwork` to one
function: in fp32 mode with batch statistics, both compute the same single path.
"""
from __future__ import annotations

import jax.numpy as jnp

from search_spaces.nb201.qat import layer_name, partial_sum_name
from search_spaces.nb201 import NB201Config
from search_spaces.nb201 import net


class _SupernetVariables(net.Backend):
  """Walks a single path collecting the QATNetwork variables that hold supernet weights."""

  def __init__(self, params):
    self.params = params
    self.out = {'params': {}, 'batch_stats': {}, 'quant': {}}

  @staticmethod
  def _range():
    return {k: jnp.zeros((), jnp.float32) for k in ('min', 'max', 'count')}

  def _layer(self, name, params, bn_channels=None):
    self.out['params'][name] = params
    if bn_channels is not None:  # the supernet normalises with batch statistics only
      self.out['batch_stats'][name] = {'mean': jnp.zeros((bn_channels,), jnp.float32),
                                       'var': jnp.ones((bn_channels,), jnp.float32)}
    self.out['quant'][name] = {'out_q': self._range()}

  def input(self, x):
    self.out['quant']['input_q'] = self._range()
    return x

  def conv(self, t, path, features, k, stride=1, bn=True):
    w, scale, bias = net._conv_leaves(self.params, path)
    if scale is None:
      self._layer(layer_name(path), {'kernel': w})
    else:
      self._layer(layer_name(path), {'kernel': w, 'scale': scale, 'bias': bias}, features)
    return t

  def relu(self, t, path):
    return t

  def pool(self, t, path, size):
    return t

  def add(self, terms, path, like):
    if len(terms) > 1:  # none: constant zeros, one: an alias (no quantizer, see add_terms)
      self.out['quant'][layer_name(path)] = self._range()
      for i in range(1, len(terms) - 1):
        self.out['quant'][partial_sum_name(layer_name(path), i)] = self._range()
    return like

  def head_bn(self, t, path):
    p = self.params['head']
    self._layer(layer_name(path), {'scale': p['bn_scale'], 'bias': p['bn_bias']},
                p['bn_scale'].shape[-1])
    return t

  def global_pool(self, t, path):
    return t

  def dense(self, t, path, features):
    p = self.params['head']
    self._layer(layer_name(path), {'kernel': p['fc'], 'bias': p['fc_bias']})
    return t


def variables_from_supernet(params, ops, config: NB201Config) -> dict:
  """`net.init_params` supernet params -> `QATNetwork(ops)` variables with the same
  weights: conv kernels, BN scales and biases, classifier. BN running statistics are mean 0,
  var 1 (the supernet keeps none) and activation ranges are zeros (uncalibrated)."""
  backend = _SupernetVariables(params)
  net.network(backend, tuple(int(o) for o in ops), None, config)
  return backend.out

"""The seed's small space `tinycnn`, lowered to the hardware graph, and its objective.

A candidate is 1-3 blocks of [conv kxk (8/16/32 filters, same padding) -> activation
(ReLU fused into the conv, or a separate swish) -> 2x2 pooling (max or avg)], then flatten and
a dense classifier.  Filters and kernel are chosen per layer; activation and pooling once per
network: sum_{L=1..3} 6^L * 2 * 2 = 1,032 candidates.

Encoding (also the CSV arch name): 'f16k3-f32k5-relu-max' (layers joined by '-', then the
activation and the pooling).

The seed's objective, accuracy_proxy / (memory x power) under hard limits, is in
`engine/search/objective.py` (`seed`, `--objective=seed`); it applies to any space.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import hardware
from hardware import graph as graph_lib
from hardware import template as hardware_template
from search_spaces.kernels import conv as _fast_conv
from search_spaces import interface as space_lib
from search_spaces import registry

FILTERS = (8, 16, 32)
KERNELS = (3, 5)
ACTIVATIONS = ('relu', 'swish')
POOLINGS = ('max', 'avg')
MAX_LAYERS = 3


@dataclasses.dataclass(frozen=True)
class TinyCNNArch:
  filters: tuple[int, ...]
  kernels: tuple[int, ...]
  activation: str = 'relu'
  pooling: str = 'max'

  def __post_init__(self):
    if not 1 <= len(self.filters) <= MAX_LAYERS or len(self.kernels) != len(self.filters):
      raise ValueError(f'tinycnn needs 1-{MAX_LAYERS} layers with one kernel each')
    if any(f not in FILTERS for f in self.filters) or any(k not in KERNELS for k in self.kernels):
      raise ValueError(f'tinycnn filters must be in {FILTERS} and kernels in {KERNELS}')
    if self.activation not in ACTIVATIONS or self.pooling not in POOLINGS:
      raise ValueError(f'tinycnn activation must be one of {ACTIVATIONS}, pooling one of '
                       f'{POOLINGS}')

  def encode(self) -> str:
    layers = '-'.join(f'f{f}k{k}' for f, k in zip(self.filters, self.kernels))
    return f'{layers}-{self.activation}-{self.pooling}'


def decode(code: str) -> TinyCNNArch:
  """'f16k3-f32k5-relu-max' -> TinyCNNArch; ValueError with the expected format otherwise."""
  parts = code.strip().split('-')
  try:
    *layers, act, pool = parts
    filters = tuple(int(p[1:p.index('k')]) for p in layers)
    kernels = tuple(int(p[p.index('k') + 1:]) for p in layers)
    return TinyCNNArch(filters, kernels, act, pool)
  except (ValueError, IndexError) as e:
    raise ValueError(f'bad tinycnn arch {code!r} ({e}); expected e.g. "f16k3-f32k5-relu-max"')


def enumerate_archs() -> list[TinyCNNArch]:
  """All 1,032 candidates in a fixed order."""
  return [TinyCNNArch(tuple(f for f, _ in layers), tuple(k for _, k in layers), act, pool)
          for n in range(1, MAX_LAYERS + 1)
          for layers in itertools.product(itertools.product(FILTERS, KERNELS), repeat=n)
          for act in ACTIVATIONS for pool in POOLINGS]


# ----------------------------------------------------------------------------- the one walk

def network(backend, x):
  """The tinycnn network, walked once for every backend (lowering, masked JAX, concrete JAX):
  [conv -> activation -> 2x2 pool] per layer, then the classifier on the flattened features."""
  t = backend.input(x)
  for i in range(backend.num_layers):
    t = backend.conv(t, i)
    t = backend.activation(t, i)
    t = backend.pool(t, i)
    backend.head(t, i)
  return backend.output()


class _GraphBackend:
  """Lowering: the hardware layer graph (ReLU fused into the conv, swish a separate node)."""

  def __init__(self, arch: TinyCNNArch, num_classes: int, widths: bool):
    self.arch, self.num_classes, self.widths = arch, num_classes, widths
    self.num_layers = len(arch.filters)
    self.b = graph_lib.GraphBuilder(arch.encode(), num_widths=self.num_layers if widths else 0)

  def input(self, shape):
    return self.b.input(shape)

  def conv(self, t, i):
    fused = 'relu' if self.arch.activation == 'relu' else None
    return self.b.conv2d(t, self.arch.filters[i], self.arch.kernels[i], activation=fused,
                         width=i if self.widths else -1, name=f'layer{i}/conv')

  def activation(self, t, i):
    if self.arch.activation == 'relu':
      return t
    return self.b.activation(t, self.arch.activation, name=f'layer{i}/{self.arch.activation}')

  def pool(self, t, i):
    return self.b.pool(t, self.arch.pooling, 2, 2, 'valid', name=f'layer{i}/pool')

  def head(self, t, i):
    if i == self.num_layers - 1:
      self.b.dense(self.b.reshape(t, name='flatten'), self.num_classes, name='fc')

  def output(self):
    return self.b.build()


def _build(arch: TinyCNNArch, input_shape, num_classes, widths: bool) -> graph_lib.Graph:
  return network(_GraphBackend(arch, num_classes, widths), tuple(input_shape))


def lower(arch, input_shape=(32, 32, 3), num_classes: int = 10) -> graph_lib.Graph:
  """Concrete graph of one candidate (TinyCNNArch or its encoding)."""
  arch = decode(arch) if isinstance(arch, str) else arch
  return _build(arch, tuple(input_shape), num_classes, widths=False)


def width_template(num_layers: int = 3, kernels: Sequence[int] = (3, 3, 3),
                   activation: str = 'relu', pooling: str = 'max', input_shape=(32, 32, 3),
                   num_classes: int = 10) -> graph_lib.Graph:
  """Graph at 32 filters per layer with width multipliers [num_layers] (filters / 32), so costs
  are differentiable in the per-layer width."""
  arch = TinyCNNArch((max(FILTERS),) * num_layers, tuple(kernels[:num_layers]), activation,
                     pooling)
  return _build(arch, tuple(input_shape), num_classes, widths=True)


# ----------------------------------------------------------------------------- relaxed cost

def _gate(slot: int, option: int) -> int:
  return slot * NUM_OPTIONS + option


class _TemplateBackend(_GraphBackend):
  """The walk emitting the relaxed cost's gated template: each option's nodes under the gate of
  that option (the mask flattened: option o of slot s is gate s * O + o), the options of a
  decision summed (an alias at 0/1 gates, so the pruned template is the arch's own graph),
  32 filters per layer with width multipliers, a classifier per depth under that depth's gate
  (the layers past the depth reach no live classifier, so they are pruned as dead)."""

  def __init__(self, num_classes: int):
    arch = TinyCNNArch((_PAD_FILTERS,) * MAX_LAYERS, (_PAD_KERNEL,) * MAX_LAYERS)
    super().__init__(arch, num_classes, widths=True)
    self.b = graph_lib.GraphBuilder('tinycnn_template', num_gates=NUM_SLOTS * NUM_OPTIONS,
                                    num_widths=MAX_LAYERS)
    self.heads = []

  def conv(self, t, i):
    return self.b.add(*[self.b.conv2d(t, _PAD_FILTERS, k, width=i, gate=_gate(_KERNELS + i, o),
                                      name=f'layer{i}/conv{k}')
                        for o, k in enumerate(KERNELS)], name=f'layer{i}/conv')

  def activation(self, t, i):
    # the arch's own graph fuses ReLU into the conv (no cost of its own): here an identity
    relu = self.b.identity(t, gate=_gate(_ACTIVATION, 0), name=f'layer{i}/relu')
    swish = self.b.activation(t, 'swish', gate=_gate(_ACTIVATION, 1), name=f'layer{i}/swish')
    return self.b.add(relu, swish, name=f'layer{i}/activation')

  def pool(self, t, i):
    return self.b.add(*[self.b.pool(t, kind, 2, 2, 'valid', gate=_gate(_POOLING, o),
                                    name=f'layer{i}/{kind}_pool')
                        for o, kind in enumerate(POOLINGS)], name=f'layer{i}/pool')

  def head(self, t, i):
    flat = self.b.reshape(t, name=f'head{i}/flatten')
    self.heads.append(self.b.dense(flat, self.num_classes, gate=_gate(_LAYERS, i),
                                   name=f'head{i}/fc'))

  def output(self):
    self.b.add(*self.heads, name='logits')
    return self.b.build()


@functools.lru_cache(maxsize=16)
def template(input_shape=(32, 32, 3), num_classes: int = 10) -> hardware.Template:
  """The gated template at this input shape and class count, compiled."""
  return hardware.compile_template(network(_TemplateBackend(num_classes), tuple(input_shape)))


def relaxed_cost(group, masks, device='stm32f746', runtime='cmsis-nn', input_shape=None,
                 num_classes=None) -> dict:
  """Hardware cost of relaxed masks [K, 9, 3] (`hardware.cost` of the gated template):
  differentiable in the masks and the lowered arch's cost at one-hot masks (float32 rounding).
  The template's Goedel (min/max) logic reads the options as truth values, as NB201's: a
  multi-hot mask costs the union of its options (every option's nodes, a layer at its widest
  filter option: the width multiplier is `template.union_width`), a soft one lies in between
  (layers in series are only as live as the weakest one's strongest option, so gradients reach
  the options that bind)."""
  del group
  masks = jnp.asarray(masks, jnp.float32)
  widths = hardware_template.union_width(masks[:, _FILTERS:_FILTERS + MAX_LAYERS], FILTERS)
  t = template(tuple(input_shape or (32, 32, 3)), int(num_classes or 10))
  return hardware.cost(t, masks.reshape(masks.shape[0], -1), widths, device=device,
                       runtime=runtime)


# ----------------------------------------------------------------------------- JAX network
#
# One padded parameter set serves every arch: conv i is [5, 5, C_in, 32] and there is one
# classifier per depth. An arch row (`to_array`) masks the kernel taps, input and output
# channels it does not have, so `init` / `apply` take the row as a traced array: one compile
# for all 1,032 archs, candidates batch under vmap. `concrete_params` slices an arch's own
# weights out of the padded ones; the concrete backend runs those (training, the reference the
# masked network is tested against).

ROW = ('layers', 'f0', 'f1', 'f2', 'k0', 'k1', 'k2', 'swish', 'avg')
_PAD_FILTERS, _PAD_KERNEL = max(FILTERS), max(KERNELS)


def to_array(archs) -> np.ndarray:
  """Archs -> int32 rows [K, 9]: layers, filters x3, kernels x3, swish?, avg pool? (unused layers
  padded with the smallest filter and kernel; they are masked off)."""
  rows = []
  for a in archs:
    a = decode(a) if isinstance(a, str) else a
    n = len(a.filters)
    f = list(a.filters) + [FILTERS[0]] * (MAX_LAYERS - n)
    k = list(a.kernels) + [KERNELS[0]] * (MAX_LAYERS - n)
    rows.append([n, *f, *k, a.activation == 'swish', a.pooling == 'avg'])
  return np.asarray(rows, np.int32).reshape(-1, len(ROW))


def from_array(row) -> TinyCNNArch:
  row = [int(v) for v in np.asarray(row)]
  n = row[0]
  return TinyCNNArch(tuple(row[1:1 + n]), tuple(row[4:4 + n]), ACTIVATIONS[row[7]],
                     POOLINGS[row[8]])


# ----------------------------------------------------------------------------- choices
#
# The relaxation's slots: `to_array`'s row with option indices for values (layers 1-3, filters
# x3, kernels x3, activation, pooling). `to_array` pads an unused layer with the first filter
# count and kernel, so its slots hold option 0 and rows and archs map one to one. Slots with
# two options have a third value that matches nothing (their mask's third column is 0).

_NONE = -1
SLOT_VALUES = np.array([(1, 2, 3)] + [FILTERS] * MAX_LAYERS + [KERNELS + (_NONE,)] * MAX_LAYERS
                       + [(0, 1, _NONE)] * 2, np.int32)  # [S, O]
NUM_SLOTS, NUM_OPTIONS = SLOT_VALUES.shape
SLOTS = tuple(int(n) for n in np.sum(SLOT_VALUES != _NONE, 1))
# the first slot of each kind
_LAYERS, _FILTERS = 0, 1
_KERNELS = _FILTERS + MAX_LAYERS
_ACTIVATION = _KERNELS + MAX_LAYERS
_POOLING = _ACTIVATION + 1


def to_rows(archs) -> np.ndarray:
  """Archs -> option indices [K, 9]."""
  return np.argmax(to_array(archs)[:, :, None] == SLOT_VALUES, -1).astype(np.int32)


def from_rows(group, rows) -> list[TinyCNNArch]:
  """(group (), option indices [K, 9]) -> archs (an unused layer's slots are ignored)."""
  del group
  rows = np.asarray(rows).reshape(-1, NUM_SLOTS)
  return [from_array(v) for v in SLOT_VALUES[np.arange(NUM_SLOTS), rows]]


def one_hot(row) -> jax.Array:
  """A `to_array` row (traced or not) -> its relaxed mask [9, 3] (float, one-hot)."""
  return (jnp.asarray(row)[:, None] == SLOT_VALUES).astype(jnp.float32)


def _head_size(input_shape, depth):
  return (input_shape[0] >> depth) * (input_shape[1] >> depth)


def padded_shapes(input_shape=(32, 32, 3), num_classes=10) -> dict:
  shapes = {}
  for i in range(MAX_LAYERS):
    cin = input_shape[2] if i == 0 else _PAD_FILTERS
    shapes[f'conv{i}'] = {'w': (_PAD_KERNEL, _PAD_KERNEL, cin, _PAD_FILTERS), 'b': (_PAD_FILTERS,)}
    shapes[f'fc{i}'] = {'w': (_head_size(input_shape, i + 1) * _PAD_FILTERS, num_classes),
                        'b': (num_classes,)}
  return shapes


_RADIUS = np.abs(np.arange(_PAD_KERNEL) - _PAD_KERNEL // 2)
# per option of a kernel slot: its taps [O, k, k] (the padding option none); of a filter slot:
# its output channels [O, 32]
_TAPS = np.stack([np.outer(_RADIUS <= k // 2, _RADIUS <= k // 2) for k in KERNELS]
                 + [np.zeros((_PAD_KERNEL,) * 2, bool)]).astype(np.float32)
_CHANNELS = (np.arange(_PAD_FILTERS) < np.array(FILTERS)[:, None]).astype(np.float32)


def _out_channels(mask, i):
  """[32] weight of each output channel of layer i under a relaxed mask (the sum of its filter
  options' channel masks)."""
  return mask[_FILTERS + i] @ _CHANNELS


def _depth_weight(mask, i):
  """The weight of the classifier after layer i (depth i + 1)."""
  return mask[_LAYERS, i]


def relaxed_fan_in(mask, input_shape=(32, 32, 3)) -> dict:
  """Each layer's fan-in under a relaxed mask [9, 3]: the mask-weighted sum of its options'
  (traced-friendly; at a one-hot mask, the arch's)."""
  mask = jnp.asarray(mask)
  filters = mask[_FILTERS:_FILTERS + MAX_LAYERS] @ np.array(FILTERS, np.float32)
  taps = mask[_KERNELS:_KERNELS + MAX_LAYERS] @ _TAPS.sum((1, 2))
  out = {}
  for i in range(MAX_LAYERS):
    out[f'conv{i}'] = taps[i] * (input_shape[2] if i == 0 else filters[i - 1])
    out[f'fc{i}'] = _head_size(input_shape, i + 1) * filters[i]
  return out


def fan_in(row, input_shape=(32, 32, 3)) -> dict:
  """Each layer's fan-in under the arch row (traced-friendly)."""
  return relaxed_fan_in(one_hot(row), input_shape)


def _masks(mask, input_shape) -> dict:
  """Per layer: the padded weight's multiplier under a relaxed mask [9, 3], 0 where no option has
  the weight (at a one-hot mask, the arch's 0/1 mask). Kernel options weight the taps and filter
  options a layer's output channels (a multi-hot mask sums their masks); a layer's input
  channels are those some option of the previous layer has (their weights are already in them)."""
  mask = jnp.asarray(mask)
  masks = {}
  for i in range(MAX_LAYERS):
    taps = jnp.tensordot(mask[_KERNELS + i], _TAPS, 1)
    cin = (jnp.ones(input_shape[2]) if i == 0 else
           (_out_channels(mask, i - 1) != 0).astype(jnp.float32))
    cout = _out_channels(mask, i)
    masks[f'conv{i}'] = taps[:, :, None, None] * cin[None, None, :, None] * cout
    s = _head_size(input_shape, i + 1)
    rows = jnp.tile(cout != 0, s).astype(jnp.float32)  # flatten order (h, w, c)
    masks[f'fc{i}'] = rows[:, None]
  return masks


def relaxed_init(key, mask, kind='torch_default', input_shape=(32, 32, 3), num_classes=10):
  """Padded params under a relaxed mask [9, 3]: weights U(+-1/sqrt(fan_in)) (PyTorch's default)
  or N(0, 2/fan_in) (kaiming_normal) where some option of the mask has them, 0 elsewhere;
  biases 0."""
  shapes = padded_shapes(input_shape, num_classes)
  fans, masks = relaxed_fan_in(mask, input_shape), _masks(mask, input_shape)
  keys = jax.random.split(key, len(shapes))
  params = {}
  for k, (name, shape) in zip(keys, shapes.items()):
    w = space_lib.init_weight(k, shape['w'], fans[name], kind)
    params[name] = {'w': jnp.where(masks[name] != 0, w, 0.0),
                    'b': jnp.zeros(shape['b'], jnp.float32)}
  return params


def init(key, row, kind='torch_default', input_shape=(32, 32, 3), num_classes=10):
  """Padded params for the arch `row` (its one-hot mask's, `relaxed_init`)."""
  return relaxed_init(key, one_hot(row), kind, input_shape, num_classes)


def concrete_params(padded, arch, input_shape=(32, 32, 3)) -> dict:
  """The arch's own weights out of padded params (same values, its own shapes)."""
  arch = decode(arch) if isinstance(arch, str) else arch
  out, pad = {}, _PAD_KERNEL // 2
  for i, (f, k) in enumerate(zip(arch.filters, arch.kernels)):
    cin = input_shape[2] if i == 0 else arch.filters[i - 1]
    w = padded[f'conv{i}']['w'][pad - k // 2:pad + k // 2 + 1, pad - k // 2:pad + k // 2 + 1, :cin, :f]
    out[f'conv{i}'] = {'w': w, 'b': padded[f'conv{i}']['b'][:f]}
  d = len(arch.filters) - 1
  s = _head_size(input_shape, d + 1)
  w = padded[f'fc{d}']['w'].reshape(s, _PAD_FILTERS, -1)[:, :arch.filters[-1]]
  out['fc'] = {'w': w.reshape(s * arch.filters[-1], -1), 'b': padded[f'fc{d}']['b']}
  return out


def _conv(x, w, b):
  # the engine's convolution: its custom gradient is several times faster on XLA:CPU
  return _fast_conv(x, w) + b


def _pool(x, kind):
  # 2x2 / stride 2 as a reshape: XLA:CPU's reduce_window gradient (select-and-scatter) made
  # training many times slower (BENCHMARKS.md, "Design choices measured")
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
  return jnp.max(x, (2, 4)) if kind == 'max' else jnp.mean(x, (2, 4))


def _swish(x):
  return x * jax.nn.sigmoid(x)


class _MaskedBackend:
  """The padded network under a relaxed mask [9, 3] (scoring, vmapped over candidates; `apply`
  passes an arch row's one-hot mask). A multi-hot mask sums its options' outputs: of the
  activations, of the poolings and of the classifiers of its depths."""

  num_layers = MAX_LAYERS

  def __init__(self, params, mask, probes, input_shape, stage_shifts=None):
    self.params, self.mask, self.probes = params, jnp.asarray(mask), probes
    self.masks = _masks(self.mask, input_shape)
    self.widest = _head_size(input_shape, 1) * _PAD_FILTERS
    self.codes, self.logits, self.features = [], 0.0, 0.0
    self.stage_shifts, self.stage_features = stage_shifts, []

  def input(self, x):
    return x

  def _probe(self, y, name):
    return y if self.probes is None else y * self.probes[name]['w'][:, None, None, :] \
        if y.ndim == 4 else y * self.probes[name]['w']

  def conv(self, t, i):
    p = self.params[f'conv{i}']
    cout = _out_channels(self.mask, i)
    y = _conv(t, p['w'] * self.masks[f'conv{i}'], p['b'] * cout)
    y = self._probe(y, f'conv{i}')
    in_depth = jnp.sum(self.mask[_LAYERS, i:]) > 0  # some depth option has layer i
    self.codes.append((y, in_depth & (cout != 0)))
    return y

  def activation(self, t, i):
    relu, swish = self.mask[_ACTIVATION, :2]
    return relu * jax.nn.relu(t) + swish * _swish(t)

  def pool(self, t, i):
    """The block's output, kept in `stage_features` with its channels' unit mask (a layer past
    the arch's depth has none); with `stage_shifts` the next layer reads it through
    stop_gradient plus the shift."""
    max_, avg = self.mask[_POOLING, :2]
    y = max_ * _pool(t, 'max') + avg * _pool(t, 'avg')
    in_depth = jnp.sum(self.mask[_LAYERS, i:]) > 0
    self.stage_features.append((y, in_depth & (_out_channels(self.mask, i) != 0)))
    if self.stage_shifts is not None:
      y = jax.lax.stop_gradient(y) + self.stage_shifts[i]
    return y

  def head(self, t, i):
    p = self.params[f'fc{i}']
    flat = t.reshape(t.shape[0], -1)
    logits = self._probe(flat @ (p['w'] * self.masks[f'fc{i}']) + p['b'], f'fc{i}')
    weight = _depth_weight(self.mask, i)
    self.logits = self.logits + weight * logits
    # padded to the widest flatten (depth 1); zeros add nothing to any feature statistic
    pad = jnp.pad(flat, ((0, 0), (0, self.widest - flat.shape[1])))
    self.features = self.features + weight * pad

  def output(self):
    return space_lib.Outputs(self.logits, tuple(self.codes), self.mask[_ACTIVATION, 1] == 0,
                             self.features, jnp.zeros(()),
                             stage_features=tuple(self.stage_features))


class _ConcreteBackend:
  """The arch's own network on its own weights (`concrete_params`): training and reference."""

  def __init__(self, params, arch: TinyCNNArch, probes=None):
    self.params, self.arch, self.probes = params, arch, probes
    self.num_layers = len(arch.filters)
    self.codes, self.logits, self.features = [], None, None

  def input(self, x):
    return x

  def conv(self, t, i):
    p = self.params[f'conv{i}']
    y = _conv(t, p['w'], p['b'])
    if self.probes is not None:
      y = y * self.probes[f'conv{i}']['w'][:, None, None, :]
    self.codes.append((y, jnp.ones((), bool)))
    return y

  def activation(self, t, i):
    return _swish(t) if self.arch.activation == 'swish' else jax.nn.relu(t)

  def pool(self, t, i):
    return _pool(t, self.arch.pooling)

  def head(self, t, i):
    if i == self.num_layers - 1:
      self.features = t.reshape(t.shape[0], -1)
      self.logits = self.features @ self.params['fc']['w'] + self.params['fc']['b']
      if self.probes is not None:
        self.logits = self.logits * self.probes['fc']['w']

  def output(self):
    return space_lib.Outputs(self.logits, tuple(self.codes),
                             jnp.asarray(self.arch.activation == 'relu'), self.features,
                             jnp.zeros(()))


def relaxed_apply(params, mask, x, probes=None, bn='batch', input_shape=(32, 32, 3),
                  stage_shifts=None):
  """The supernet of a relaxed mask [9, 3] on padded params -> space.Outputs (stage features
  always filled: each layer's pooled output). tinycnn has no BN."""
  del bn
  return network(_MaskedBackend(params, mask, probes, input_shape, stage_shifts), x)


def apply(params, row, x, probes=None, bn='batch', input_shape=(32, 32, 3)):
  """Masked network on padded params (see `init`) -> space.Outputs."""
  return relaxed_apply(params, one_hot(row), x, probes, bn, input_shape)


def apply_concrete(params, arch, x, probes=None):
  """The arch's own network (`concrete_params`) -> space.Outputs."""
  arch = decode(arch) if isinstance(arch, str) else arch
  return network(_ConcreteBackend(params, arch, probes), x)


def _net(input_shape, num_classes, to_mask, example_row) -> space_lib.Net:
  """The padded network over an arch encoding (`to_mask`: the Net's arch row -> relaxed mask)."""
  input_shape = tuple(input_shape)
  if input_shape[0] % 8 or input_shape[1] % 8:
    raise ValueError(f'tinycnn needs an input size divisible by 8 (three 2x2 pools); got '
                     f'{input_shape[:2]}')
  return space_lib.Net(
      init=lambda key, row, kind='torch_default': relaxed_init(key, to_mask(row), kind,
                                                               input_shape, num_classes),
      # no BN (stats, bn), nothing to rescale; codes and (stage) features are always filled
      apply=lambda params, row, x, probes=None, bn='batch', stage_shifts=None, **_:
      relaxed_apply(params, to_mask(row), x, probes, bn, input_shape, stage_shifts),
      fan_in=lambda row: relaxed_fan_in(to_mask(row), input_shape),
      input_shape=input_shape, num_classes=num_classes, example_row=example_row)


def make_net(group=(), input_shape=(32, 32, 3), num_classes=10) -> space_lib.Net:
  """The masked network; its arch row is `to_array`'s."""
  del group
  return _net(input_shape, num_classes, one_hot, to_array([enumerate_archs()[-1]])[0])


def make_relaxed_net(group=(), input_shape=(32, 32, 3), num_classes=10) -> space_lib.Net:
  """The supernet; its arch row is a relaxed mask [9, 3] (`RELAXATION.net`)."""
  del group
  example = (to_array([enumerate_archs()[-1]])[0][:, None] == SLOT_VALUES).astype(np.float32)
  return _net(input_shape or (32, 32, 3), num_classes or 10,
              lambda m: jnp.asarray(m, jnp.float32), example)


def sample(rng: np.random.Generator, n: int) -> list[TinyCNNArch]:
  """n distinct archs drawn uniformly (all 1,032 when n >= 1,032), in a seeded order."""
  space = enumerate_archs()
  pick = rng.permutation(len(space))[:n]
  return [space[i] for i in pick]


def stratum(arch: TinyCNNArch) -> str:
  return f'{len(arch.filters)}-{arch.activation}-{arch.pooling}'


RELAXATION = space_lib.Relaxation(
    slots=lambda group: SLOTS, to_rows=to_rows, from_rows=from_rows, net=make_relaxed_net,
    cost=relaxed_cost)

SPACE = registry.register(space_lib.SearchSpace(
    name='tinycnn',
    summary='the seed\'s 1-3 layer CNNs (1,032 archs)',
    train_lr=0.01,  # its convs have no BN: 0.05 and 0.1 diverge (tests/pipeline_test.py)
    decode=decode, encode=lambda a: a.encode(), sample=sample, enumerate=enumerate_archs,
    to_array=to_array, net=make_net,
    lower=lambda arch, input_shape=(32, 32, 3), num_classes=10: lower(arch, input_shape,
                                                                      num_classes),
    stratum=stratum, train_net=lambda *a, **k: train_net(*a, **k),
    mutate=lambda a, rng: mutate(a, rng), relax=RELAXATION))


def train_net(arch, input_shape=(32, 32, 3), num_classes=10):
  """(init(key) -> the arch's own params, apply(params, x) -> logits) for training: the same
  weights the masked network draws for this arch and key, at the arch's own shapes."""
  arch = decode(arch) if isinstance(arch, str) else arch
  row = to_array([arch])[0]
  return (lambda key: concrete_params(init(key, row, 'torch_default', input_shape, num_classes),
                                      arch, input_shape),
          lambda params, x: apply_concrete(params, arch, x).logits)


def mutate(arch: TinyCNNArch, rng: np.random.Generator) -> TinyCNNArch:
  """One random edit: a layer's filters or kernel, the activation, the pooling, or a layer
  added or removed (within 1-3)."""
  f, k = list(arch.filters), list(arch.kernels)
  act, pool = arch.activation, arch.pooling
  move = rng.integers(5)
  i = int(rng.integers(len(f)))
  if move == 0:
    f[i] = int(rng.choice([v for v in FILTERS if v != f[i]]))
  elif move == 1:
    k[i] = int(rng.choice([v for v in KERNELS if v != k[i]]))
  elif move == 2:
    act = 'swish' if act == 'relu' else 'relu'
  elif move == 3:
    pool = 'avg' if pool == 'max' else 'max'
  elif len(f) < MAX_LAYERS and (len(f) == 1 or rng.random() < 0.5):
    f.insert(i + 1, int(rng.choice(FILTERS)))
    k.insert(i + 1, int(rng.choice(KERNELS)))
  else:
    del f[i], k[i]
  return TinyCNNArch(tuple(f), tuple(k), act, pool)

"""An MCUNet / Once-for-All style MobileNetV2 space for MCUs: inverted residual blocks with
per-block kernel and expand ratio, per-stage depth, a width multiplier and the input resolution.

Macro network (10 classes, width multiplier w, resolution r):
  stem   3x3 conv, stride 2, 32w channels, BN, ReLU6
  first  a fixed separable block: 3x3 depthwise, BN, ReLU6, 1x1 to 16w, BN
  stages (24w, s2), (40w, s2), (80w, s2), (96w, s1), (160w, s2); each 2-4 inverted residual
         blocks [1x1 expand to e x C_in, BN, ReLU6, k x k depthwise (stride on the stage's
         first block), BN, ReLU6, 1x1 project, BN], + identity when stride 1 and C_in == C_out
  head   global average pool, dense
Choices: per block k in {3, 5, 7} and e in {3, 4, 6}; per stage depth in {2, 3, 4};
w in {0.5, 0.75, 1.0}; r in {96, 128, 160}: about 2e19 archs, so `enumerate` is None.
Channel counts are rounded to multiples of 8 (MobileNetV2's make_divisible).

Encoding: 'w0.5-r96-k3e6.k5e3-k7e4.k3e3.k3e3-k3e3.k3e3-k5e6.k5e6-k3e4.k7e3' (width, resolution,
then per stage its blocks joined by '.').

Network: one walk (`network`) with a lowering backend (the hardware graph: BN folded, ReLU6
fused, depthwise convs as their own op so runtimes with in-place depthwise plan them so) and a
masked JAX backend (a (w, r) group's padded network: depth 4, kernel 7 and expand 6 everywhere,
an arch row masks the taps, channels and blocks it does not have; one compile per group). BN is
non-affine with batch statistics (scale 1, shift 0 at init, as in the proxies' setting).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import hardware
from hardware import graph as graph_lib
from hardware import template as hardware_template
from search_spaces import interface as space_lib
from search_spaces.kernels import BN_EPS
from search_spaces import registry

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (0.5, 0.75, 1.0)
RESOLUTIONS = (96, 128, 160)
STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (160, 2))
STEM, FIRST = 32, 16
NUM_CLASSES = 10
MAX_DEPTH, MAX_K, MAX_E = max(DEPTHS), max(KERNELS), max(EXPANDS)


def channels(c: int, width: float) -> int:
  """MobileNetV2's make_divisible(c * width, 8)."""
  v = max(8, int(c * width + 4) // 8 * 8)
  return v + 8 if v < 0.9 * c * width else v


@dataclasses.dataclass(frozen=True)
class MBV2Arch:
  width: float
  resolution: int
  blocks: tuple  # per stage: tuple of (kernel, expand)

  def __post_init__(self):
    if self.width not in WIDTHS or self.resolution not in RESOLUTIONS:
      raise ValueError(f'mbv2 width must be one of {WIDTHS} and resolution one of {RESOLUTIONS}')
    if len(self.blocks) != len(STAGES) or any(len(s) not in DEPTHS for s in self.blocks):
      raise ValueError(f'mbv2 needs {len(STAGES)} stages of {DEPTHS[0]}-{DEPTHS[-1]} blocks')
    if any(k not in KERNELS or e not in EXPANDS for s in self.blocks for k, e in s):
      raise ValueError(f'mbv2 kernels must be in {KERNELS} and expand ratios in {EXPANDS}')

  def encode(self) -> str:
    stages = '-'.join('.'.join(f'k{k}e{e}' for k, e in s) for s in self.blocks)
    return f'w{self.width:g}-r{self.resolution}-{stages}'


EXAMPLE = 'w0.5-r96-k3e6.k5e3-k7e4.k3e3.k3e3-k3e3.k3e3-k5e6.k5e6-k3e4.k7e3'


def decode(code: str) -> MBV2Arch:
  try:
    w, r, *stages = code.strip().split('-')
    blocks = tuple(tuple((int(b[1:b.index('e')]), int(b[b.index('e') + 1:]))
                         for b in s.split('.')) for s in stages)
    return MBV2Arch(float(w.removeprefix('w')), int(r.removeprefix('r')), blocks)
  except (ValueError, IndexError) as e:
    raise ValueError(f'bad mbv2 arch {code!r} ({e}); expected e.g. "{EXAMPLE}"') from None


def sample(rng: np.random.Generator, n: int) -> list[MBV2Arch]:
  out = []
  for _ in range(n):
    blocks = tuple(tuple((int(rng.choice(KERNELS)), int(rng.choice(EXPANDS)))
                         for _ in range(int(rng.choice(DEPTHS)))) for _ in STAGES)
    out.append(MBV2Arch(float(rng.choice(WIDTHS)), int(rng.choice(RESOLUTIONS)), blocks))
  return out


def mutate(arch: MBV2Arch, rng: np.random.Generator) -> MBV2Arch:
  """One random edit inside the arch's width x resolution group: a block's kernel or expand
  ratio, or a stage one block deeper or shallower (within 2-4)."""
  blocks = [list(s) for s in arch.blocks]
  s = int(rng.integers(len(blocks)))
  j = int(rng.integers(len(blocks[s])))
  move = rng.integers(3)
  k, e = blocks[s][j]
  if move == 0:
    blocks[s][j] = (int(rng.choice([v for v in KERNELS if v != k])), e)
  elif move == 1:
    blocks[s][j] = (k, int(rng.choice([v for v in EXPANDS if v != e])))
  elif len(blocks[s]) < MAX_DEPTH and (len(blocks[s]) == DEPTHS[0] or rng.random() < 0.5):
    blocks[s].append((int(rng.choice(KERNELS)), int(rng.choice(EXPANDS))))
  else:
    blocks[s].pop()
  return MBV2Arch(arch.width, arch.resolution, tuple(tuple(b) for b in blocks))


def group(arch: MBV2Arch):
  return (arch.width, arch.resolution)


def stratum(arch: MBV2Arch) -> str:
  return f'w{arch.width:g}-r{arch.resolution}'


# Row: per stage depth (5), then per stage and block slot kernel and expand (5 x 4 x 2).
def to_array(archs) -> np.ndarray:
  rows = []
  for a in archs:
    a = decode(a) if isinstance(a, str) else a
    row = [len(s) for s in a.blocks]
    for s in a.blocks:
      padded = list(s) + [(KERNELS[0], EXPANDS[0])] * (MAX_DEPTH - len(s))
      row += [v for b in padded for v in b]
    rows.append(row)
  return np.asarray(rows, np.int32).reshape(-1, len(STAGES) * (1 + 2 * MAX_DEPTH))


# ----------------------------------------------------------------------------- choices
#
# The relaxation's slots: `to_array`'s layout with option indices for values (per stage its depth
# in DEPTHS, then per stage and block slot its kernel in KERNELS and expand ratio in EXPANDS).
# `to_array` pads a block past its stage's depth with the first kernel and expand ratio, so that
# block's slots hold option 0 and rows and archs map one to one.

SLOT_VALUES = np.array([DEPTHS] * len(STAGES) + [KERNELS, EXPANDS] * (len(STAGES) * MAX_DEPTH),
                       np.int32)  # [S, O]: the value of each slot's options
NUM_SLOTS, NUM_OPTIONS = SLOT_VALUES.shape


def _kernel_slot(stage: int, j: int) -> int:
  return len(STAGES) + 2 * (stage * MAX_DEPTH + j)


def _expand_slot(stage: int, j: int) -> int:
  return _kernel_slot(stage, j) + 1


def to_rows(archs) -> np.ndarray:
  """Archs (one group) -> option indices [K, S]."""
  values = to_array(archs)
  return np.argmax(values[:, :, None] == SLOT_VALUES, -1).astype(np.int32)


def from_rows(group_key, rows) -> list[MBV2Arch]:
  """(group (w, r), option indices [K, S]) -> archs; a block past its stage's depth is dropped."""
  width, res = group_key
  rows = np.asarray(rows).reshape(-1, NUM_SLOTS)
  out = []
  for v in SLOT_VALUES[np.arange(NUM_SLOTS), rows]:
    blocks = tuple(tuple((int(v[_kernel_slot(s, j)]), int(v[_expand_slot(s, j)]))
                         for j in range(v[s])) for s in range(len(STAGES)))
    out.append(MBV2Arch(float(width), int(res), blocks))
  return out


def one_hot(row) -> jax.Array:
  """A `to_array` row (traced or not) -> its relaxed mask [S, O] (float, one-hot)."""
  return (jnp.asarray(row)[:, None] == SLOT_VALUES).astype(jnp.float32)


# ----------------------------------------------------------------------------- the one walk

def network(backend, x):
  """The MBV2 network, walked once for every backend."""
  t = backend.stem(backend.input(x))
  cin = backend.c(FIRST)
  for s, (c, stride) in enumerate(STAGES):
    cout = backend.c(c)
    for j in range(MAX_DEPTH):
      t = backend.block(t, s, j, cin if j == 0 else cout, cout, stride if j == 0 else 1)
    cin = cout
  return backend.head(t)


class _GraphBackend:
  def __init__(self, arch: MBV2Arch, num_classes: int):
    self.arch, self.num_classes = arch, num_classes
    self.b = graph_lib.GraphBuilder(arch.encode())

  def c(self, n):
    return channels(n, self.arch.width)

  def input(self, shape):
    return self.b.input(shape)

  def stem(self, t):
    t = self.b.conv2d(t, self.c(STEM), 3, 2, folded_bn=True, activation='relu6', name='stem')
    t = self.b.depthwise_conv2d(t, 3, folded_bn=True, activation='relu6', name='first/dw')
    return self.b.conv2d(t, self.c(FIRST), 1, folded_bn=True, name='first/pw')

  def block(self, t, s, j, cin, cout, stride):
    if j >= len(self.arch.blocks[s]):
      return t
    k, e = self.arch.blocks[s][j]
    name = f's{s}/b{j}'
    y = self.b.conv2d(t, cin * e, 1, folded_bn=True, activation='relu6', name=f'{name}/expand')
    y = self.b.depthwise_conv2d(y, k, stride, folded_bn=True, activation='relu6', name=f'{name}/dw')
    y = self.b.conv2d(y, cout, 1, folded_bn=True, name=f'{name}/project')
    if stride == 1 and cin == cout:
      y = self.b.add(y, t, name=f'{name}/add')
    return y

  def head(self, t):
    t = self.b.global_avg_pool(t, name='gap')
    self.b.dense(self.b.reshape(t, name='flatten'), self.num_classes, name='fc')
    return self.b.build()


def lower(arch, input_shape=None, num_classes=NUM_CLASSES) -> graph_lib.Graph:
  arch = decode(arch) if isinstance(arch, str) else arch
  shape = (arch.resolution, arch.resolution, 3)
  return network(_GraphBackend(arch, num_classes), shape)


# ----------------------------------------------------------------------------- relaxed cost
#
# One gated template per (w, r) group holds every arch of it: each block at expand 6 with its
# expand conv's channels a width multiplier, each kernel option its own depthwise conv under the
# gate of that option (the options summed, as NB201's template sums the ops of an edge), each
# block a shallower stage lacks under a depth gate. A relaxed mask [S, O] is its gates: the mask
# flattened (kernel option o of slot s is gate s * O + o), then one depth gate per block.

_NUM_BLOCKS = len(STAGES) * MAX_DEPTH
_NUM_GATES = NUM_SLOTS * NUM_OPTIONS + _NUM_BLOCKS


def _depth_gate(stage: int, j: int) -> int:
  return NUM_SLOTS * NUM_OPTIONS + stage * MAX_DEPTH + j


class _TemplateBackend(_GraphBackend):
  """The walk emitting the gated template; every option's nodes present, at 0/1 gates
  `graph.prune` of it is the arch's own graph (the options' sums and a missing block's residual
  add become aliases)."""

  def __init__(self, group_key, num_classes: int):
    width, res = group_key
    super().__init__(MBV2Arch(width, res, (((MAX_K, MAX_E),) * MAX_DEPTH,) * len(STAGES)),
                     num_classes)
    self.b = graph_lib.GraphBuilder(f'mbv2_w{width:g}_r{res}_template', num_gates=_NUM_GATES,
                                    num_widths=_NUM_BLOCKS)

  def block(self, t, s, j, cin, cout, stride):
    name = f's{s}/b{j}'
    # blocks every depth option has (j < DEPTHS[0]) are always on
    gate = _depth_gate(s, j) if j >= DEPTHS[0] else -1
    y = self.b.conv2d(t, cin * MAX_E, 1, folded_bn=True, activation='relu6', gate=gate,
                      width=s * MAX_DEPTH + j, name=f'{name}/expand')
    y = self.b.add(*[self.b.depthwise_conv2d(
        y, k, stride, folded_bn=True, activation='relu6',
        gate=_kernel_slot(s, j) * NUM_OPTIONS + o, name=f'{name}/dw{k}')
                     for o, k in enumerate(KERNELS)], name=f'{name}/dw')
    # the project conv has the depth gate too: else the project of an absent block's (zero)
    # kernel sum would be a constant (its bias) that the residual add keeps as an operand
    y = self.b.conv2d(y, cout, 1, folded_bn=True, gate=gate, name=f'{name}/project')
    if stride == 1 and cin == cout:
      y = self.b.add(y, t, name=f'{name}/add')
    return y


@functools.lru_cache(maxsize=16)
def template(group_key, num_classes: int = NUM_CLASSES) -> hardware.Template:
  """The group's gated template, compiled (`hardware.compile_template`)."""
  res = group_key[1]
  graph = network(_TemplateBackend(group_key, num_classes), (res, res, 3))
  return hardware.compile_template(graph)


def template_inputs(masks) -> tuple[jax.Array, jax.Array]:
  """Relaxed masks [K, S, O] -> the template's (gates [K, G], widths [K, blocks]), in the
  template's Goedel logic: a kernel option's gate is its weight, a block is on with the max
  weight of the depth options that include it, an expand channel with the max weight of the
  expand options that have it (`template.union_width`). Exact at one-hot masks; a multi-hot mask
  is the union of its options."""
  masks = jnp.asarray(masks, jnp.float32)
  k = masks.shape[0]
  includes = np.array([[d > j for d in DEPTHS] for j in range(MAX_DEPTH)])  # [blocks, O]
  depth = masks[:, :len(STAGES), None, :]  # [K, stages, 1, O]
  blocks = jnp.max(jnp.where(includes, depth, 0.0), -1).reshape(k, _NUM_BLOCKS)
  expand = masks[:, [_expand_slot(s, j) for s in range(len(STAGES)) for j in range(MAX_DEPTH)]]
  gates = jnp.concatenate([masks.reshape(k, -1), blocks], 1)
  return gates, hardware_template.union_width(expand, EXPANDS)


def relaxed_cost(group_key, masks, device='stm32f746', runtime='cmsis-nn', input_shape=None,
                 num_classes=None) -> dict:
  """Hardware cost of relaxed masks [K, S, O] of a (w, r) group (`hardware.cost` of the gated
  template; the input is the group's resolution, `input_shape` is ignored as in `lower`):
  differentiable in the masks and, at one-hot masks, the lowered arch's cost up to float32
  rounding (expand 4 is the width multiplier 4/6; max relative error over 50 archs of 9 groups
  and 3 runtimes: 0 for SRAM, flash, MACs and params, 2e-7 for latency and energy).

  Soft masks follow the template's Goedel (min/max) logic, as NB201's: blocks in series are only
  as live as the weakest one's strongest option, so gradients reach the options that bind there
  (others get 0), and an expand slot whose largest ratio is its strongest option costs the full
  width (gradient 0 for that slot)."""
  del input_shape
  gates, widths = template_inputs(masks)
  t = template(tuple(group_key), int(num_classes or NUM_CLASSES))
  return hardware.cost(t, gates, widths, device=device, runtime=runtime)


# ----------------------------------------------------------------------------- JAX (masked)

def _bn(x, bn, units=None, fixed=None):
  """Non-affine BN on batch statistics (or the `fixed` (mean, var)); returns (y, log sigma over
  the real channels, the (mean, var) used)."""
  if bn == 'identity':
    return x, jnp.zeros(()), None
  mean, var = fixed if fixed is not None else (jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2)))
  y = (x - mean) / jnp.sqrt(var + BN_EPS)
  if units is None:
    return y, 0.5 * jnp.log(jnp.mean(var)), (mean, var)
  count = jnp.maximum(jnp.sum(units), 1)
  return y, 0.5 * jnp.log(jnp.sum(jnp.where(units, var, 0.0)) / count), (mean, var)


def _depthwise(x, w, stride):
  """Depthwise k x k conv (padding k // 2) as a sum of k * k shifted, scaled copies: its
  gradients are elementwise products and sums, where XLA:CPU's grouped-convolution weight
  gradient took minutes per arch at the padded 7 x 7, 6x-expanded size."""
  k, p = w.shape[0], w.shape[0] // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho = (x.shape[1] + 2 * p - k) // stride + 1
  wo = (x.shape[2] + 2 * p - k) // stride + 1
  out = 0.0
  for dy in range(k):
    for dx in range(k):
      tap = xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      out = out + tap * w[dy, dx, 0]
  return out


def _conv(x, w, stride=1, groups=1):
  k = w.shape[0]
  if groups > 1:
    return _depthwise(x, w, stride)
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((k // 2, k // 2),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=groups)


def padded_shapes(group_key, num_classes=NUM_CLASSES) -> dict:
  width, _ = group_key
  c = lambda n: channels(n, width)
  shapes = {'stem': {'w': (3, 3, 3, c(STEM))}, 'first_dw': {'w': (3, 3, 1, c(STEM))},
            'first_pw': {'w': (1, 1, c(STEM), c(FIRST))}}
  cin = c(FIRST)
  for s, (ch, _) in enumerate(STAGES):
    cout = c(ch)
    for j in range(MAX_DEPTH):
      ci = cin if j == 0 else cout
      mid = ci * MAX_E
      shapes[f's{s}b{j}_expand'] = {'w': (1, 1, ci, mid)}
      shapes[f's{s}b{j}_dw'] = {'w': (MAX_K, MAX_K, 1, mid)}
      shapes[f's{s}b{j}_project'] = {'w': (1, 1, mid, cout)}
    cin = cout
  shapes['fc'] = {'w': (cin, num_classes), 'b': (num_classes,)}
  return shapes


class _Layer(NamedTuple):
  mask: Any     # multiplies the padded weight (None: all of it); 0 where no option has it
  fan_in: Any   # of the weight (traced); under a soft mask the mask-weighted sum of the options'
  gate: Any     # the weight of the layer's block in the network (1: in every arch)


_RADIUS = np.abs(np.arange(MAX_K) - MAX_K // 2)
# [O, MAX_K, MAX_K]: the taps of each kernel option
_TAPS = np.stack([np.outer(_RADIUS <= k // 2, _RADIUS <= k // 2) for k in KERNELS]).astype(
    np.float32)


def _relaxed_masks(mask, group_key) -> dict:
  """{layer: _Layer} under a relaxed mask [S, O] (at a one-hot mask, the arch's 0/1 masks).

  Each option's weight enters the network once: kernel options weight the depthwise taps (a
  multi-hot mask sums their tap masks), expand options the project conv's input channels (the
  sum of their channel masks; the expand and depthwise convs keep every channel some option
  has, since weighting them too would count an option twice and the BN after them would cancel
  it), depth options a block's residual branch (the summed weight of the depth options that
  include the block; a stage's first block, in every arch and without a residual, has none).
  """
  width, _ = group_key
  mask = jnp.asarray(mask)
  c = lambda n: channels(n, width)
  one = jnp.ones(())
  out = {'stem': _Layer(None, 27, one), 'first_dw': _Layer(None, 9, one),
         'first_pw': _Layer(None, c(STEM), one)}
  cin = c(FIRST)
  for s, (ch, _) in enumerate(STAGES):
    cout = c(ch)
    for j in range(MAX_DEPTH):
      ci = cin if j == 0 else cout
      kernel, expand = mask[_kernel_slot(s, j)], mask[_expand_slot(s, j)]
      options = np.arange(ci * MAX_E) < ci * np.array(EXPANDS)[:, None]  # [O, mid]
      mid = expand @ options.astype(np.float32)
      have = (mid != 0).astype(jnp.float32)
      taps = jnp.tensordot(kernel, _TAPS, 1)
      gate = one if j == 0 else jnp.sum(jnp.where(np.array(DEPTHS) > j, mask[s], 0.0))
      name = f's{s}b{j}'
      out[f'{name}_expand'] = _Layer(have[None, None, None, :], ci, gate)
      out[f'{name}_dw'] = _Layer(taps[:, :, None, None] * have,
                                 kernel @ np.square(KERNELS).astype(np.float32), gate)
      out[f'{name}_project'] = _Layer(mid[None, None, :, None],
                                      ci * (expand @ np.array(EXPANDS, np.float32)), gate)
    cin = cout
  out['fc'] = _Layer(None, cin, one)
  return out


def _arch_masks(row, group_key, num_classes=NUM_CLASSES):
  """{layer: (weight mask, fan_in, block gate)} under an arch row (its one-hot mask's)."""
  del num_classes
  return _relaxed_masks(one_hot(row), group_key)


def relaxed_init(key, mask, kind='torch_default', group_key=(1.0, 96), num_classes=NUM_CLASSES):
  """Padded params under a relaxed mask [S, O]: each weight drawn at its layer's fan-in, 0 where
  no option of the mask has it."""
  shapes = padded_shapes(group_key, num_classes)
  layers = _relaxed_masks(mask, group_key)
  params = {}
  for k, (name, shape) in zip(jax.random.split(key, len(shapes)), shapes.items()):
    layer = layers[name]
    w = space_lib.init_weight(k, shape['w'], layer.fan_in, kind)
    params[name] = {'w': w if layer.mask is None else jnp.where(layer.mask != 0, w, 0.0)}
    if 'b' in shape:
      params[name]['b'] = jnp.zeros(shape['b'], jnp.float32)
  return params


def init(key, row, kind='torch_default', group_key=(1.0, 96), num_classes=NUM_CLASSES):
  return relaxed_init(key, one_hot(row), kind, group_key, num_classes)


class _MaskedBackend:
  """The padded network under a relaxed mask [S, O] (`apply`: an arch row's one-hot mask)."""

  def __init__(self, params, mask, probes, bn, group_key, stats=None, stage_shifts=None):
    self.params, self.probes, self.bn, self.fixed = params, probes, bn, stats
    self.stats = {}
    self.stage_shifts, self.stage_features = stage_shifts, []
    self.width = group_key[0]
    self.masks = _relaxed_masks(mask, group_key)
    self.codes, self.log_sigma = [], jnp.zeros(())

  def c(self, n):
    return channels(n, self.width)

  def input(self, x):
    return x

  def _layer(self, t, name, stride=1, groups=1, units=None, active=True, relu6=True):
    mask = self.masks[name].mask
    w = self.params[name]['w'] if mask is None else self.params[name]['w'] * mask
    y = _conv(t, w, stride, groups)
    if self.probes is not None:
      y = y * self.probes[name]['w'][:, None, None, :]
    y, log_sigma, self.stats[name] = _bn(y, self.bn, units,
                                         None if self.fixed is None else self.fixed[name])
    self.log_sigma = self.log_sigma + jnp.where(active, log_sigma, 0.0)
    if relu6:
      live = active if units is None else active & units
      self.codes.append((y, live))
      y = jnp.clip(y, 0.0, 6.0)
    return y

  def _stage_output(self, y, live):
    """Keep a block's output (and, with `stage_shifts`, read it on through stop_gradient plus
    its shift)."""
    shift = (None if self.stage_shifts is None else
             self.stage_shifts[len(self.stage_features)])
    self.stage_features.append((y, jnp.asarray(live)))
    return y if shift is None else jax.lax.stop_gradient(y) + shift

  def stem(self, t):
    t = self._layer(t, 'stem', 2)
    t = self._layer(t, 'first_dw', groups=t.shape[-1])
    return self._stage_output(self._layer(t, 'first_pw', relu6=False), True)

  def block(self, t, s, j, cin, cout, stride):
    name = f's{s}b{j}'
    expand = self.masks[f'{name}_expand']
    active = expand.gate > 0
    units = expand.mask[0, 0, 0] != 0
    y = self._layer(t, f'{name}_expand', units=units, active=active)
    y = self._layer(y, f'{name}_dw', stride, groups=y.shape[-1], units=units, active=active)
    y = self._layer(y, f'{name}_project', relu6=False, active=active)
    if j == 0:
      return self._stage_output(y + t if stride == 1 and cin == cout else y, True)
    # a block the arch lacks (gate 0) is the identity
    return self._stage_output(t + expand.gate * y, active)

  def head(self, t):
    feats = jnp.mean(t, (1, 2))
    logits = feats @ self.params['fc']['w'] + self.params['fc']['b']
    if self.probes is not None:
      logits = logits * self.probes['fc']['w']
    return space_lib.Outputs(logits, tuple(self.codes), jnp.asarray(True),
                             t.reshape(t.shape[0], -1), self.log_sigma,
                             None if self.bn == 'identity' else self.stats,
                             stage_features=tuple(self.stage_features))


def relaxed_apply(params, mask, x, probes=None, bn='batch', group_key=(1.0, 96), stats=None,
                  stage_shifts=None):
  """The padded network -> space.Outputs (stage features always filled: the stem's and every
  block's output, a block the arch lacks marked not live)."""
  return network(_MaskedBackend(params, mask, probes, bn, group_key, stats, stage_shifts), x)


def apply(params, row, x, probes=None, bn='batch', group_key=(1.0, 96), stats=None):
  return relaxed_apply(params, one_hot(row), x, probes, bn, group_key, stats)


def relaxed_fan_in(mask, group_key=(1.0, 96)) -> dict:
  return {name: layer.fan_in for name, layer in _relaxed_masks(mask, group_key).items()}


def fan_in(row, group_key=(1.0, 96)) -> dict:
  return relaxed_fan_in(one_hot(row), group_key)


def _group_net(group_key, num_classes, to_mask, example_row) -> space_lib.Net:
  """The group's network over an arch encoding (`to_mask`: the Net's arch row -> relaxed mask)."""
  res = group_key[1]
  return space_lib.Net(
      init=lambda key, row, kind='torch_default': relaxed_init(key, to_mask(row), kind,
                                                               group_key, num_classes),
      # nothing to rescale; codes and (stage) features are always filled
      apply=lambda params, row, x, probes=None, bn='batch', stats=None, stage_shifts=None, **_:
      relaxed_apply(params, to_mask(row), x, probes, bn, group_key, stats, stage_shifts),
      fan_in=lambda row: relaxed_fan_in(to_mask(row), group_key), input_shape=(res, res, 3),
      num_classes=num_classes, example_row=example_row)


def _widest_row(group_key) -> np.ndarray:
  blocks = (((MAX_K, MAX_E),) * MAX_DEPTH,) * len(STAGES)
  return to_array([MBV2Arch(group_key[0], RESOLUTIONS[0], blocks)])[0]


def make_net(group_key=(1.0, 96), input_shape=None, num_classes=NUM_CLASSES) -> space_lib.Net:
  """The group's masked network; its arch row is `to_array`'s."""
  return _group_net(group_key, num_classes, one_hot, _widest_row(group_key))


def make_relaxed_net(group_key=(1.0, 96), input_shape=None,
                     num_classes=NUM_CLASSES) -> space_lib.Net:
  """The group's supernet; its arch row is a relaxed mask [S, O] (`RELAXATION.net`)."""
  example = (_widest_row(group_key)[:, None] == SLOT_VALUES).astype(np.float32)
  return _group_net(group_key, num_classes, lambda m: jnp.asarray(m, jnp.float32), example)


RELAXATION = space_lib.Relaxation(
    slots=lambda group_key: (NUM_OPTIONS,) * NUM_SLOTS, to_rows=to_rows, from_rows=from_rows,
    net=lambda g=(1.0, 96), input_shape=None, num_classes=NUM_CLASSES:
    make_relaxed_net(g, input_shape, num_classes),
    cost=relaxed_cost)

SPACE = registry.register(space_lib.SearchSpace(
    name='mbv2', summary='MCUNet-style MobileNetV2 (kernel, expand, depth, width, resolution)',
    decode=decode, encode=lambda a: a.encode(), sample=sample, enumerate=None,
    to_array=to_array, mutate=mutate,
    net=lambda g=(1.0, 96), input_shape=None, num_classes=NUM_CLASSES:
    make_net(g, input_shape, num_classes), lower=lower, group=group, stratum=stratum,
    input_shape=(96, 96, 3), num_classes=NUM_CLASSES,
    group_input_shape=lambda g: (g[1], g[1], 3), relax=RELAXATION))

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

import jax
import jax.numpy as jnp
import numpy as np

from hardware import graph as graph_lib
from search_spaces import interface as space_lib
from search_spaces import registry

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (0.5, 0.75, 1.0)
RESOLUTIONS = (96, 128, 160)
STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (160, 2))
STEM, FIRST = 32, 16
NUM_CLASSES = 10
BN_EPS = 1e-5
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


def _block_choice(row, stage, j):
  base = len(STAGES) + 2 * (stage * MAX_DEPTH + j)
  return row[base], row[base + 1]


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


# ----------------------------------------------------------------------------- JAX (masked)

def _bn(x, bn, units=None):
  """Non-affine BN on batch statistics; returns (y, log sigma over the real channels)."""
  if bn == 'identity':
    return x, jnp.zeros(())
  mean = jnp.mean(x, (0, 1, 2))
  var = jnp.var(x, (0, 1, 2))
  y = (x - mean) / jnp.sqrt(var + BN_EPS)
  if units is None:
    return y, 0.5 * jnp.log(jnp.mean(var))
  count = jnp.maximum(jnp.sum(units), 1)
  return y, 0.5 * jnp.log(jnp.sum(jnp.where(units, var, 0.0)) / count)


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


def _arch_masks(row, group_key, num_classes=NUM_CLASSES):
  """{layer: (weight mask, fan_in, block active)} under the arch row."""
  width, _ = group_key
  c = lambda n: channels(n, width)
  out = {'stem': (None, 27, True), 'first_dw': (None, 9, True),
         'first_pw': (None, c(STEM), True)}
  taps = jnp.abs(jnp.arange(MAX_K) - MAX_K // 2)
  cin = c(FIRST)
  for s, (ch, _) in enumerate(STAGES):
    cout = c(ch)
    for j in range(MAX_DEPTH):
      ci = cin if j == 0 else cout
      k, e = _block_choice(row, s, j)
      active = (j < row[s]) if j else jnp.asarray(True)
      mid_live = jnp.arange(ci * MAX_E) < ci * e
      tap = taps <= k // 2
      out[f's{s}b{j}_expand'] = (mid_live[None, None, None, :], ci, active)
      out[f's{s}b{j}_dw'] = ((tap[:, None] & tap[None, :])[:, :, None, None]
                             & mid_live[None, None, None, :], k * k, active)
      out[f's{s}b{j}_project'] = (mid_live[None, None, :, None], ci * e, active)
    cin = cout
  out['fc'] = (None, cin, True)
  return out


def init(key, row, kind='torch_default', group_key=(1.0, 96), num_classes=NUM_CLASSES):
  row = jnp.asarray(row)
  shapes = padded_shapes(group_key, num_classes)
  masks = _arch_masks(row, group_key, num_classes)
  params = {}
  for k, (name, shape) in zip(jax.random.split(key, len(shapes)), shapes.items()):
    mask, fan, _ = masks[name]
    w = space_lib.init_weight(k, shape['w'], fan, kind)
    params[name] = {'w': w if mask is None else jnp.where(mask, w, 0.0)}
    if 'b' in shape:
      params[name]['b'] = jnp.zeros(shape['b'], jnp.float32)
  return params


class _MaskedBackend:
  def __init__(self, params, row, probes, bn, group_key):
    self.params, self.row, self.probes, self.bn = params, jnp.asarray(row), probes, bn
    self.width = group_key[0]
    self.masks = _arch_masks(self.row, group_key)
    self.codes, self.log_sigma = [], jnp.zeros(())

  def c(self, n):
    return channels(n, self.width)

  def input(self, x):
    return x

  def _layer(self, t, name, stride=1, groups=1, units=None, active=True, relu6=True):
    mask = self.masks[name][0]
    w = self.params[name]['w'] if mask is None else self.params[name]['w'] * mask
    y = _conv(t, w, stride, groups)
    if self.probes is not None:
      y = y * self.probes[name][:, None, None, :]
    y, log_sigma = _bn(y, self.bn, units)
    self.log_sigma = self.log_sigma + jnp.where(active, log_sigma, 0.0)
    if relu6:
      live = active if units is None else active & units
      self.codes.append((y, live))
      y = jnp.clip(y, 0.0, 6.0)
    return y

  def stem(self, t):
    t = self._layer(t, 'stem', 2)
    t = self._layer(t, 'first_dw', groups=t.shape[-1])
    return self._layer(t, 'first_pw', relu6=False)

  def block(self, t, s, j, cin, cout, stride):
    name = f's{s}b{j}'
    active = self.masks[f'{name}_expand'][2]
    units = self.masks[f'{name}_expand'][0][0, 0, 0]
    y = self._layer(t, f'{name}_expand', units=units, active=active)
    y = self._layer(y, f'{name}_dw', stride, groups=y.shape[-1], units=units, active=active)
    y = self._layer(y, f'{name}_project', relu6=False, active=active)
    if j == 0:
      return y + t if stride == 1 and cin == cout else y
    return t + jnp.where(active, 1.0, 0.0) * y  # a block the arch lacks is the identity

  def head(self, t):
    feats = jnp.mean(t, (1, 2))
    logits = feats @ self.params['fc']['w'] + self.params['fc']['b']
    if self.probes is not None:
      logits = logits * self.probes['fc']
    return space_lib.Outputs(logits, tuple(self.codes), jnp.asarray(True),
                             t.reshape(t.shape[0], -1), self.log_sigma)


def apply(params, row, x, probes=None, bn='batch', group_key=(1.0, 96)):
  return network(_MaskedBackend(params, row, probes, bn, group_key), x)


def fan_in(row, group_key=(1.0, 96)) -> dict:
  return {name: fan for name, (_, fan, _) in _arch_masks(jnp.asarray(row), group_key).items()}


def make_net(group_key=(1.0, 96), input_shape=None, num_classes=NUM_CLASSES) -> space_lib.Net:
  width, res = group_key
  example = to_array([MBV2Arch(width, RESOLUTIONS[0], tuple(((7, 6),) * 4 for _ in STAGES))])[0]
  return space_lib.Net(
      init=lambda key, row, kind='torch_default': init(key, row, kind, group_key, num_classes),
      apply=lambda params, row, x, probes=None, bn='batch': apply(params, row, x, probes, bn,
                                                                 group_key),
      fan_in=lambda row: fan_in(row, group_key), input_shape=(res, res, 3),
      num_classes=num_classes, example_row=example)


SPACE = registry.register(space_lib.SearchSpace(
    name='mbv2', summary='MCUNet-style MobileNetV2 (kernel, expand, depth, width, resolution)',
    decode=decode, encode=lambda a: a.encode(), sample=sample, enumerate=None,
    to_array=to_array, mutate=mutate,
    net=lambda g=(1.0, 96), input_shape=None, num_classes=NUM_CLASSES:
    make_net(g, input_shape, num_classes), lower=lower, group=group, stratum=stratum,
    input_shape=(96, 96, 3), num_classes=NUM_CLASSES,
    group_input_shape=lambda g: (g[1], g[1], 3)))

"""One layer-graph IR that every search space lowers to and that `hardware/` alone consumes.

A `Graph` is a static, topologically ordered tuple of `Node`s (node 0 is the input, the last
node is the output).  Tensors are int8 activations of shape (H, W, C).

Soft / template graphs: a node may carry a `gate` (index into a per-candidate gate vector,
-1 = always on) and a `width` (index into a width-multiplier vector, -1 = fixed), so one
template holds every candidate op of a search space and a candidate is just a gate vector.
Gate semantics (shared by the exact pruner here and the JAX evaluator in `template.py`):

* an op with gate 0 is absent: it produces no tensor (a zero contribution);
* `add`/`concat` are live if any input is live; other ops need all inputs live;
  a node with no live input is a constant and is folded away (costs nothing);
* a node whose output does not reach the graph output is dead (dropped);
* `identity`/`reshape`, and `add`/`concat` with a single live input, are aliases: no compute,
  no new buffer;
* constants are not free when an `add` uses them: an op that is on but whose input is a
  constant (a sum with no live term is a zero tensor; a conv of it is its bias) is folded into a
  constant tensor, and a live `add` takes its constant terms as broadcast operands stored in
  flash, one channel vector each (after the leading constants fold into one).  Such an add is
  never an alias.  This is what an int8 export does (a TFLite ADD with a constant input), so the
  pruned graph carries them as `Node.const_slots`.

Soft gates in [0, 1] use Goedel (min/max) fuzzy logic for the same rules, so the value at 0/1
gates is exact and shared cells do not compound their gates across repeats.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

OPS = ('input', 'conv2d', 'depthwise_conv2d', 'dense', 'avg_pool', 'max_pool',
       'global_avg_pool', 'add', 'concat', 'activation', 'batchnorm', 'reshape', 'identity')
ALIAS_OPS = frozenset({'identity', 'reshape'})
SUM_OPS = frozenset({'add', 'concat'})  # live if any input is live; alias with one live input
INPLACE_OPS = frozenset({'activation', 'batchnorm', 'add'})  # may overwrite a dying input
# parameter-free single-input ops: two of them with equal attributes on the same input compute
# the same tensor (common-subexpression elimination, `duplicate_of`)
MERGEABLE_OPS = frozenset({'avg_pool', 'max_pool', 'global_avg_pool', 'activation'})
PADDINGS = ('same', 'valid', 'symmetric')
ACTIVATIONS = ('relu', 'relu6', 'swish', 'sigmoid', 'tanh', 'softmax')

# Latency feature columns: per-node work counts that cost models weigh per (device, runtime).
FEATURES = ('conv_macs', 'pointwise_macs', 'depthwise_macs', 'dense_macs', 'pool_reads',
            'elementwise_ops', 'activation_bytes', 'weight_bytes', 'kernel_calls', 'inference')
NUM_FEATURES = len(FEATURES)

# Relative cost of one element of an int8 elementwise op (LUT-based non-linearities cost more).
_ELEMENTWISE_WEIGHT = {'relu': 1.0, 'relu6': 1.0, 'swish': 3.0, 'sigmoid': 2.0, 'tanh': 2.0,
                       'softmax': 6.0, 'batchnorm': 2.0, 'add': 1.0}


@dataclasses.dataclass(frozen=True)
class Node:
  """One op; `shape` is the (H, W, C) of its output tensor."""
  name: str
  op: str
  inputs: tuple[int, ...]
  shape: tuple[int, int, int]
  kernel: tuple[int, int] = (1, 1)
  stride: tuple[int, int] = (1, 1)
  groups: int = 1
  bias: bool = False          # has a bias vector (also true when a BatchNorm was folded in)
  folded_bn: bool = False     # a BatchNorm was folded into this conv/dense (for param counts)
  activation: Optional[str] = None  # kind for op == 'activation'; fused clamp on conv/dense/add
  gate: int = -1              # index into the gate vector; -1 = always on
  width: int = -1             # conv/dense only: index into the width-multiplier vector
  # add only (pruned graphs): positions of folded constant operands in the add's chain of
  # len(inputs) + len(const_slots) operands; each is one int8 channel vector in flash
  const_slots: tuple[int, ...] = ()
  # conv / pool windows: 'same' (TensorFlow's: at an even total the extra row and column go
  # after; an average pool divides by its in-bounds taps), 'valid' (none), 'symmetric'
  # (PyTorch's k // 2 on every side, zeros). Costs do not read it: the shape says what it does
  padding: str = 'same'

  def __post_init__(self):
    if self.op not in OPS:
      raise ValueError(f'unknown op {self.op!r}; valid ops: {", ".join(OPS)}')
    if self.padding not in PADDINGS:
      raise ValueError(f'{self.name}: unknown padding {self.padding!r}; valid: '
                       f'{", ".join(PADDINGS)}')
    if self.const_slots and (self.op != 'add' or list(self.const_slots) != sorted(
        set(self.const_slots)) or self.const_slots[-1] >= self.operands):
      raise ValueError(f'{self.name}: const_slots {self.const_slots} must be increasing '
                       f'positions among the operands of an add')

  @property
  def operands(self) -> int:
    """Tensors the op combines: inputs plus folded constant operands."""
    return len(self.inputs) + len(self.const_slots)

  @property
  def is_alias(self) -> bool:
    """No compute and no buffer: identity/reshape, or a sum of a single live input."""
    return self.op in ALIAS_OPS or (self.op in SUM_OPS and self.operands == 1)


@dataclasses.dataclass(frozen=True)
class Graph:
  nodes: tuple[Node, ...]
  name: str = ''
  num_gates: int = 0
  num_widths: int = 0

  @property
  def output(self) -> int:
    return len(self.nodes) - 1

  def __len__(self):
    return len(self.nodes)

  def consumers(self) -> list[list[int]]:
    out = [[] for _ in self.nodes]
    for i, node in enumerate(self.nodes):
      for j in node.inputs:
        out[j].append(i)
    return out


def validate(graph: Graph) -> None:
  """Raise ValueError unless nodes are topologically ordered with one input node first."""
  if not graph.nodes or graph.nodes[0].op != 'input':
    raise ValueError('graph must start with an input node')
  for i, node in enumerate(graph.nodes):
    if i and node.op == 'input':
      raise ValueError('only node 0 may be an input')
    if any(j < 0 or j >= i for j in node.inputs):
      raise ValueError(f'node {i} ({node.name}) has a non-topological input {node.inputs}')
    if i and not node.inputs and node.op != 'add':  # an add of nothing: a zero tensor
      raise ValueError(f'node {i} ({node.name}) has no input')
    if node.gate >= graph.num_gates or node.width >= graph.num_widths:
      raise ValueError(f'node {i} ({node.name}) gate/width index out of range')


# ----------------------------------------------------------------------------- builder


def check_connected(graph: Graph, nothing_to: str) -> None:
  """ValueError (one line) for a graph whose logits do not depend on its input (a lowering
  left only the input node): there is nothing to `nothing_to` (e.g. 'export')."""
  if len(graph.nodes) < 2:
    raise ValueError(f'{graph.name or "this arch"} is disconnected: its logits do not depend on '
                     f'the input (no path of non-none ops from input to output), so there is '
                     f'nothing to {nothing_to}')


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
  if padding == 'same':
    return math.ceil(size / stride)
  if padding == 'symmetric':
    return (size + 2 * (kernel // 2) - kernel) // stride + 1
  return (size - kernel) // stride + 1


def window_pads(node: Node, in_shape) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) rows and columns a conv / pool node pads its input with,
  by its `padding`, for an input of shape (H, W, C)."""
  out = []
  for size, k, s in zip(in_shape[:2], node.kernel, node.stride):
    if node.padding == 'valid':
      out.append((0, 0))
    elif node.padding == 'symmetric':
      out.append((k // 2, k // 2))
    else:
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      out.append((total // 2, total - total // 2))
  return tuple(out)


def unlike_same(node: Node, in_shape) -> bool:
  """Whether a window's padding is PyTorch's symmetric one where it differs from TFLite's SAME
  (3x3 at stride 2 on an even size: 1 and 1 against 0 and 1), which no TFLite SAME op pads."""
  return node.padding == 'symmetric' and window_pads(node, in_shape) != window_pads(
      dataclasses.replace(node, padding='same'), in_shape)


def explicit_pad(node: Node, in_shape) -> bool:
  """Whether an int8 export writes a conv's padding as its own PAD op (then VALID): where it is
  `unlike_same`. The exporter (`deploy.graph_tflite`) and the arena model
  (`hardware.memory.tflm_buffers`) both ask this."""
  return node.op in ('conv2d', 'depthwise_conv2d') and unlike_same(node, in_shape)


def input_dependent(graph: Graph) -> np.ndarray:
  """Boolean per node: its tensor depends on the input (a node that does not, in a graph lowered
  with its constants kept, is a constant: the integer reference computes it once and the
  exporter writes it as a constant tensor; both ask this)."""
  out = np.zeros(len(graph.nodes), bool)
  for i, node in enumerate(graph.nodes):
    out[i] = node.op == 'input' or any(out[j] for j in node.inputs)
  return out


def flat_already(graph: Graph, i: int) -> bool:
  """Whether node i is a reshape of a tensor an int8 export already holds flat ([1, n]: a global
  pool's, exported as AVERAGE_POOL_2D then a RESHAPE, or another reshape's), so the export writes
  nothing for it; any other reshape or identity is a RESHAPE with its own tensor. The exporter
  (`deploy.graph_tflite`) and the arena model (`hardware.memory.tflm_buffers`) both ask this."""
  node = graph.nodes[i]
  return node.op == 'reshape' and graph.nodes[node.inputs[0]].op in ('global_avg_pool', 'reshape')


class GraphBuilder:
  """Appends nodes with inferred shapes; every method returns the new node id."""

  def __init__(self, name: str = '', num_gates: int = 0, num_widths: int = 0):
    self.name, self.num_gates, self.num_widths = name, num_gates, num_widths
    self.nodes: list[Node] = []

  def shape(self, x: int) -> tuple[int, int, int]:
    return self.nodes[x].shape

  def _add(self, **kw) -> int:
    kw.setdefault('name', f'{kw["op"]}_{len(self.nodes)}')
    self.nodes.append(Node(**kw))
    return len(self.nodes) - 1

  def input(self, shape: Sequence[int], name: str = 'input') -> int:
    return self._add(name=name, op='input', inputs=(), shape=tuple(shape))

  def conv2d(self, x, filters, kernel=3, stride=1, padding='same', groups=1, bias=True,
             folded_bn=False, activation=None, gate=-1, width=-1, name=None) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    h, w, _ = self.shape(x)
    shape = (_out_size(h, kh, sh, padding), _out_size(w, kw, sw, padding), filters)
    kw_ = dict(op='conv2d', inputs=(x,), shape=shape, kernel=(kh, kw), stride=(sh, sw),
               groups=groups, bias=bias or folded_bn, folded_bn=folded_bn, activation=activation,
               gate=gate, width=width, padding=padding)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def pointwise_conv2d(self, x, filters, **kw) -> int:
    return self.conv2d(x, filters, kernel=1, **kw)

  def depthwise_conv2d(self, x, kernel=3, stride=1, padding='same', bias=True, folded_bn=False,
                       activation=None, gate=-1, name=None) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    h, w, c = self.shape(x)
    shape = (_out_size(h, kh, sh, padding), _out_size(w, kw, sw, padding), c)
    kw_ = dict(op='depthwise_conv2d', inputs=(x,), shape=shape, kernel=(kh, kw),
               stride=(sh, sw), groups=c, bias=bias or folded_bn, folded_bn=folded_bn,
               activation=activation, gate=gate, padding=padding)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def dense(self, x, units, bias=True, folded_bn=False, activation=None, gate=-1, width=-1,
            name=None) -> int:
    kw_ = dict(op='dense', inputs=(x,), shape=(1, 1, units), bias=bias or folded_bn,
               folded_bn=folded_bn, activation=activation, gate=gate, width=width)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def pool(self, x, kind='max', kernel=2, stride=None, padding='valid', gate=-1, name=None) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    h, w, c = self.shape(x)
    shape = (_out_size(h, kh, sh, padding), _out_size(w, kw, sw, padding), c)
    kw_ = dict(op=f'{kind}_pool', inputs=(x,), shape=shape, kernel=(kh, kw), stride=(sh, sw),
               gate=gate, padding=padding)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def global_avg_pool(self, x, gate=-1, name=None) -> int:
    h, w, c = self.shape(x)
    kw_ = dict(op='global_avg_pool', inputs=(x,), shape=(1, 1, c), kernel=(h, w), gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def add(self, *xs, activation=None, gate=-1, name=None) -> int:
    shapes = {self.shape(x) for x in xs}
    if len(shapes) != 1:
      raise ValueError(f'add of mismatched shapes {shapes}')
    kw_ = dict(op='add', inputs=tuple(xs), shape=shapes.pop(), activation=activation, gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def concat(self, *xs, gate=-1, name=None) -> int:
    h, w, _ = self.shape(xs[0])
    if any(self.shape(x)[:2] != (h, w) for x in xs):
      raise ValueError('concat needs equal spatial shapes')
    kw_ = dict(op='concat', inputs=tuple(xs), shape=(h, w, sum(self.shape(x)[2] for x in xs)),
               gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def activation(self, x, kind='relu', gate=-1, name=None) -> int:
    if kind not in ACTIVATIONS:
      raise ValueError(f'unknown activation {kind!r}; valid: {", ".join(ACTIVATIONS)}')
    kw_ = dict(op='activation', inputs=(x,), shape=self.shape(x), activation=kind, gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def batchnorm(self, x, gate=-1, name=None) -> int:
    kw_ = dict(op='batchnorm', inputs=(x,), shape=self.shape(x), gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def reshape(self, x, shape=None, gate=-1, name=None) -> int:
    h, w, c = self.shape(x)
    shape = (1, 1, h * w * c) if shape is None else tuple(shape)
    if np.prod(shape) != h * w * c:
      raise ValueError('reshape must keep the element count')
    kw_ = dict(op='reshape', inputs=(x,), shape=shape, gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  flatten = reshape

  def identity(self, x, gate=-1, name=None) -> int:
    kw_ = dict(op='identity', inputs=(x,), shape=self.shape(x), gate=gate)
    return self._add(name=name, **kw_) if name else self._add(**kw_)

  def build(self) -> Graph:
    graph = Graph(tuple(self.nodes), self.name, self.num_gates, self.num_widths)
    validate(graph)
    return graph


# ------------------------------------------------------------------- per-node statistics


def op_class(node: Node, in_shape: tuple[int, int, int]) -> str:
  """Kernel family that sets the cycles per unit of work."""
  if node.op == 'conv2d':
    if node.groups == in_shape[2] and node.groups > 1:
      return 'depthwise'
    return 'pointwise' if node.kernel == (1, 1) and node.groups == 1 else 'conv'
  return {'depthwise_conv2d': 'depthwise', 'dense': 'dense', 'avg_pool': 'pool',
          'max_pool': 'pool', 'global_avg_pool': 'pool', 'add': 'elementwise',
          'activation': 'elementwise', 'batchnorm': 'elementwise', 'concat': 'elementwise',
          'input': 'none', 'reshape': 'none', 'identity': 'none'}[node.op]


@dataclasses.dataclass(frozen=True)
class NodeStats:
  """Per-node static counts at width multiplier 1 (arrays of length N)."""
  macs: np.ndarray            # multiply-accumulates (conv/dense)
  params: np.ndarray          # weights + biases (int8 deployment, BN folded)
  weights: np.ndarray         # weight elements
  biases: np.ndarray          # bias elements
  quant_channels: np.ndarray  # per-channel quantisation parameters
  out_bytes: np.ndarray       # int8 output tensor
  im2col_bytes: np.ndarray    # CMSIS-NN-style int16 im2col scratch for kxk convs
  features: np.ndarray        # [N, NUM_FEATURES] latency work counts (per single execution)
  scale_in: np.ndarray        # [N, NUM_FEATURES] feature scales with the input width
  scale_out: np.ndarray       # [N, NUM_FEATURES] feature scales with the output width
  activation_in_bytes: np.ndarray  # [N] input part of the activation_bytes feature
  width_in: np.ndarray        # [N] width index of the input channels (-1 fixed)
  width_out: np.ndarray       # [N] width index of the output channels (-1 fixed)
  op_classes: tuple[str, ...]


def _numel(shape) -> int:
  return int(np.prod(shape))


def node_stats(graph: Graph) -> NodeStats:
  """Static MACs, params, bytes and latency features of every node, independent of gates."""
  n = len(graph.nodes)
  f = np.zeros((n, NUM_FEATURES))
  s_in = np.zeros((n, NUM_FEATURES), bool)
  s_out = np.zeros((n, NUM_FEATURES), bool)
  macs, weights, biases, qch, out_bytes, im2col, act_in = (np.zeros(n) for _ in range(7))
  w_in, w_out = -np.ones(n, int), -np.ones(n, int)
  classes = []
  col = {name: i for i, name in enumerate(FEATURES)}
  for i, node in enumerate(graph.nodes):
    in_shape = graph.nodes[node.inputs[0]].shape if node.inputs else node.shape
    cls = op_class(node, in_shape)
    classes.append(cls)
    if node.inputs:
      w_in[i] = w_out[node.inputs[0]]
    w_out[i] = node.width if node.op in ('conv2d', 'dense') else w_in[i]
    out_elems = _numel(node.shape)
    in_elems = sum(_numel(graph.nodes[j].shape) for j in node.inputs)
    out_bytes[i] = out_elems
    kh, kw = node.kernel
    if node.op in ('conv2d', 'depthwise_conv2d'):
      cin_per_group = in_shape[2] // node.groups
      macs[i] = out_elems * kh * kw * cin_per_group
      weights[i] = kh * kw * cin_per_group * node.shape[2]
      if cls == 'conv':
        im2col[i] = 2 * kh * kw * cin_per_group * 2
    elif node.op == 'dense':
      macs[i] = _numel(in_shape) * node.shape[2]
      weights[i] = macs[i]
    if node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
      biases[i] = node.shape[2] if node.bias else 0
      qch[i] = node.shape[2]
      mixes = cls in ('conv', 'pointwise', 'dense')
      f[i, col[f'{cls}_macs']] = macs[i]
      s_in[i, col[f'{cls}_macs']] = mixes
      s_out[i, col[f'{cls}_macs']] = True
      f[i, col['weight_bytes']] = weights[i] + 4 * biases[i]
      s_in[i, col['weight_bytes']] = mixes
      s_out[i, col['weight_bytes']] = True
    elif cls == 'pool':
      f[i, col['pool_reads']] = in_elems if node.op == 'global_avg_pool' else out_elems * kh * kw
      s_out[i, col['pool_reads']] = True
    elif cls == 'elementwise':
      kind = node.activation if node.op == 'activation' else node.op
      weight = _ELEMENTWISE_WEIGHT.get(kind, 1.0)
      f[i, col['elementwise_ops']] = weight * out_elems
      s_out[i, col['elementwise_ops']] = True
    if cls != 'none':
      # activation traffic: read inputs, write output (both scale with width); an n-ary add
      # is counted per binary add (the evaluator multiplies by live inputs - 1)
      act_in[i] = 2 * out_elems if node.op == 'add' else in_elems
      f[i, col['activation_bytes']] = act_in[i] + out_elems
      s_out[i, col['activation_bytes']] = True
      f[i, col['kernel_calls']] = 1.0
  params = weights + biases
  return NodeStats(macs, params, weights, biases, qch, out_bytes, im2col, f, s_in, s_out,
                   act_in, w_in, w_out, tuple(classes))


def torch_style_params(graph: Graph, gates: Optional[np.ndarray] = None) -> int:
  """Float parameter count as PyTorch counts it (BN gamma/beta unfolded), for cross-checks.

  With gates, counts every node whose own gate is on (no dead-code elimination), like a
  PyTorch supernet module count.
  """
  st = node_stats(graph)
  on = gates_on(graph, gates)
  total = 0
  for i, node in enumerate(graph.nodes):
    if not on[i]:
      continue
    if node.op in ('conv2d', 'depthwise_conv2d', 'dense'):
      total += st.weights[i] + (node.shape[2] if node.bias and not node.folded_bn else 0)
      total += 2 * node.shape[2] if node.folded_bn else 0
    elif node.op == 'batchnorm':
      total += 2 * node.shape[2]
  return int(total)


# ----------------------------------------------------------------- exact (hard) pruning


def gates_on(graph: Graph, gates: Optional[np.ndarray] = None) -> np.ndarray:
  """Boolean per node: its own gate is on (no dead-code elimination)."""
  gates = np.ones(graph.num_gates) if gates is None else np.asarray(gates).reshape(-1)
  return np.array([node.gate < 0 or gates[node.gate] > 0.5 for node in graph.nodes])


def hard_activity(graph: Graph, gates: Optional[np.ndarray] = None,
                  fold_constants: bool = True, prune_dead: bool = True):
  """Boolean (live, active) per node for 0/1 gates; the reference for the soft evaluator.

  The two flags say what the deployment toolchain's graph optimiser removes (both on: the
  default, exact semantics above).  fold_constants=False: a sum whose terms are all absent
  still materialises a (zero) tensor and ops on it run; prune_dead=False: nodes that do not
  reach the output still run.  Gated-off ops are absent either way.
  """
  on = gates_on(graph, gates)
  live = np.zeros(len(graph), bool)
  for i, node in enumerate(graph.nodes):
    if node.op == 'input':
      live[i] = True
    elif node.op in SUM_OPS:
      live[i] = on[i] and (any(live[j] for j in node.inputs) or not fold_constants)
    else:
      live[i] = on[i] and all(live[j] for j in node.inputs)
  useful = np.zeros(len(graph), bool)
  useful[graph.output] = True
  consumers = graph.consumers()
  for i in range(len(graph) - 1, -1, -1):
    useful[i] |= any(useful[c] and on[c] for c in consumers[i]) or not prune_dead
  active = live & useful
  active[0] = True  # the application always writes the input tensor
  return live, active


def hard_present(graph: Graph, gates: Optional[np.ndarray] = None,
                 fold_constants: bool = True) -> np.ndarray:
  """Boolean per node: it yields a tensor, live or constant (0/1 gates).  A sum is present
  whenever it is on (with no present term it is a zero tensor); another op when it is on and
  all its inputs are present.  Present but not live = a constant the toolchain folds; without
  constant folding every present node is live."""
  on = gates_on(graph, gates)
  present = np.zeros(len(graph), bool)
  for i, node in enumerate(graph.nodes):
    present[i] = node.op == 'input' or (on[i] and (node.op in SUM_OPS or all(
        present[j] for j in node.inputs)))
  if not fold_constants:
    present = hard_activity(graph, gates, fold_constants=False, prune_dead=False)[0]
  return present


def const_operand_slots(live_terms: Sequence[bool], const_terms: Sequence[bool]) -> tuple:
  """Operand positions of constants in an add's chain, from its terms in order (a term is
  live, constant or absent): the leading constants fold into one operand, each later constant
  is an operand of its own.  Empty when no term is live (the whole sum is a constant)."""
  if not any(live_terms):
    return ()
  slots, pos, leading = [], 0, True
  for live, const in zip(live_terms, const_terms):
    if live:
      leading = False
      pos += 1
    elif const:
      if not (leading and slots):
        slots.append(pos)
        pos += 1
  return tuple(slots)


def duplicate_of(graph: Graph) -> np.ndarray:
  """[N] first node computing the same tensor as each node (itself if none): common-subexpression
  elimination of parameter-free ops (`MERGEABLE_OPS`) with equal op, attributes and inputs.

  Static: inputs count as equal when they are the same node (after merging), whatever the gates;
  two ops whose inputs are equal only through a gate-dependent alias (a sum with one live term)
  are not merged.  Ops with parameters (conv, dense, batchnorm) are never merged.
  """
  rep = np.arange(len(graph))
  first: dict = {}
  for i, node in enumerate(graph.nodes):
    if node.op not in MERGEABLE_OPS:
      continue
    key = (node.op, tuple(int(rep[j]) for j in node.inputs), node.shape, node.kernel,
           node.stride, node.activation)
    rep[i] = first.setdefault(key, i)
  return rep


def prune(graph: Graph, gates: Optional[np.ndarray] = None, name: Optional[str] = None,
          constants: bool = False) -> Graph:
  """Concrete graph of one candidate: drop inactive/dead nodes, resolve aliases, clear gates.

  `constants=True` keeps what the default folds away: every node that yields a tensor (live or
  constant, `hard_present`) and reaches the output, with a sum of no term as an `add` without
  inputs (a zero tensor), so that whoever runs the graph (training, the integer reference, an
  exporter) can compute each constant's value; adds list their constant terms among their
  inputs and have no `const_slots`. `prune` of that graph is the default's graph."""
  live, active = hard_activity(graph, gates)
  output_live = live[graph.output]
  present = hard_present(graph, gates)
  const = present & ~live
  if constants:  # every tensor, live or constant, that reaches the output
    active = present & hard_activity(graph, gates, fold_constants=False)[1]
    live = present
  new_id: dict[int, int] = {}
  nodes: list[Node] = []
  for i, node in enumerate(graph.nodes):
    if not active[i]:
      continue
    ins = tuple(new_id[j] for j in node.inputs if active[j] and live[j])
    slots = const_operand_slots([live[j] for j in node.inputs],
                                [const[j] for j in node.inputs]) if (
                                    node.op == 'add' and not constants) else ()
    if node.op == 'identity' or (node.op in SUM_OPS and len(ins) == 1 and not slots):
      new_id[i] = ins[0]
      continue
    nodes.append(dataclasses.replace(node, inputs=ins, gate=-1, const_slots=slots))
    new_id[i] = len(nodes) - 1
  if not (output_live and active[graph.output]):  # constant output: nothing but the input remains
    nodes = nodes[:1]
  elif new_id[graph.output] != len(nodes) - 1:  # output aliased to an earlier tensor
    out = new_id[graph.output]
    nodes.append(Node('output', 'identity', (out,), nodes[out].shape))
  out = Graph(tuple(nodes), name if name is not None else graph.name, 0, graph.num_widths)
  validate(out)
  return out


def summary(graph: Graph) -> str:
  """Human-readable layer table."""
  st = node_stats(graph)
  lines = [f'{"#":>4} {"name":<28} {"op":<17} {"shape":<16} {"inputs":<14} {"MACs":>11}']
  for i, node in enumerate(graph.nodes):
    lines.append(f'{i:>4} {node.name[:28]:<28} {node.op:<17} {str(node.shape):<16} '
                 f'{str(node.inputs)[:14]:<14} {int(st.macs[i]):>11}')
  return '\n'.join(lines)

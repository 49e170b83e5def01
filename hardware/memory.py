"""Flash and peak-SRAM model of an int8 graph on a microcontroller.

Flash = int8 weights + int32 biases + folded int8 constant operands of adds (`graph.py`)
        + per-channel quantisation params (runtime-specific bytes)
        + per-kernel graph metadata + the runtime's code size.

SRAM planner convention (TFLite-Micro-like arena):
* ops run one at a time in the graph's topological order (node index = step);
* every non-alias op output is an int8 arena buffer, allocated at its step and freed after the
  last step that reads it; the input tensor lives in the arena from step 0, the output to the end;
* `identity`/`reshape` (and a sum with one live input) alias their input: no buffer, but they
  extend the input buffer's lifetime to their own last use (residual branches count);
* an op's inputs and its output coexist at its step, except that an elementwise op
  (activation, batchnorm, add) writes in place into an input buffer that dies at that step
  and is at least as large (in place where legal);
* kxk convolutions may add a runtime-specific im2col scratch buffer at their step;
* peak SRAM = max over steps of live bytes + scratch, plus runtime persistent bytes per
  quantised channel and a fixed runtime overhead.

Soft candidates (gates in [0, 1], e.g. multi-hot or softmax NB201 op weights), "max over
active": a buffer lives as long as any use with a nonzero weight needs it (so lifetimes are the
union over the candidates the weights allow), and its bytes count with the ownership weight of
its producer (`template.soft_activity`: Goedel min/max logic, an alias weight for sums with a
single live term); the in-place saving is weighted the same way.  Soft peak = max over steps of
these weighted live bytes.  Exact at 0/1 gates (tested against `plan_arena` on pruned graphs),
differentiable almost everywhere in the gates and widths (through the bytes at the argmax step;
lifetimes carry no gradient).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hardware import graph as graph_lib
from hardware import template as template_lib


@dataclasses.dataclass(frozen=True)
class ArenaPlan:
  peak_bytes: int                 # activation arena peak (no runtime overhead)
  peak_step: int
  live_bytes: np.ndarray          # [N] bytes live at each step (after in-place, with scratch)
  live_tensors: tuple[tuple[str, ...], ...]  # names of buffers live at each step

  def breakdown(self, graph: graph_lib.Graph) -> str:
    rows = [f'{"step":>4} {"node":<28} {"op":<17} {"live bytes":>11}  live buffers']
    for i, node in enumerate(graph.nodes):
      mark = ' <- peak' if i == self.peak_step else ''
      rows.append(f'{i:>4} {node.name[:28]:<28} {node.op:<17} {int(self.live_bytes[i]):>11}  '
                  f'{", ".join(self.live_tensors[i])}{mark}')
    return '\n'.join(rows)


def _buffer_roots(graph: graph_lib.Graph) -> list[int]:
  roots = []
  for i, node in enumerate(graph.nodes):
    roots.append(roots[node.inputs[0]] if node.is_alias else i)
  return roots


def plan_arena(graph: graph_lib.Graph, im2col: bool = False, widths=None) -> ArenaPlan:
  """Exact liveness planner for a concrete (ungated) graph; the reference implementation."""
  st = graph_lib.node_stats(graph)
  size = st.out_bytes.copy()
  if widths is not None:
    w = np.asarray(widths, float)
    size = size * np.where(st.width_out >= 0, w[np.maximum(st.width_out, 0)], 1.0)
  roots = _buffer_roots(graph)
  n = len(graph)
  last = np.arange(n)
  for i, node in enumerate(graph.nodes):
    for j in node.inputs:
      last[roots[j]] = max(last[roots[j]], i)
  last[roots[graph.output]] = n - 1
  live_bytes = np.zeros(n)
  names = []
  owners = [r for r in range(n) if roots[r] == r]
  for i, node in enumerate(graph.nodes):
    live = [r for r in owners if r <= i <= last[r]]
    total = sum(size[r] for r in live)
    if node.op in graph_lib.INPLACE_OPS and roots[i] == i and any(
        last[roots[j]] == i and size[roots[j]] >= size[i] for j in node.inputs):
      total -= size[i]
    if im2col:
      total += st.im2col_bytes[i]
    live_bytes[i] = total
    names.append(tuple(graph.nodes[r].name for r in live))
  step = int(np.argmax(live_bytes))
  return ArenaPlan(int(round(live_bytes[step])), step, live_bytes, tuple(names))


def soft_live_bytes(t: template_lib.Template, activity: dict, im2col: bool = False):
  """[N] live arena bytes per step of a (soft) candidate, from `template.soft_activity`."""
  n = t.num_nodes
  size = jnp.asarray(t.stats.out_bytes, jnp.float32) * activity['s_out']
  own, end = activity['own'], activity['end']
  value = own * size
  end = jnp.maximum(end, jnp.arange(n, dtype=jnp.float32))
  whole = jnp.floor(end)
  frac = end - whole
  whole = whole.astype(jnp.int32)
  diff = jnp.zeros(n + 2)
  diff = diff.at[jnp.arange(n)].add(value)
  diff = diff.at[whole + 1].add(-value * (1.0 - frac))
  diff = diff.at[jnp.minimum(whole + 2, n + 1)].add(-value * frac)
  live = jnp.cumsum(diff)[:n]
  # in place: an elementwise op overwrites an input buffer that dies at its step
  ins = jnp.asarray(t.inputs)
  root_end = activity['root_end'][jnp.maximum(ins, 0)]
  dies = jnp.clip(1.0 - (root_end - jnp.arange(n, dtype=jnp.float32)[:, None]), 0.0, 1.0)
  ok = jnp.asarray(t.inplace_legal & (t.inputs >= 0))
  reuse = jnp.max(jnp.where(ok, dies * activity['live_in'], 0.0), axis=1)
  saving = jnp.where(jnp.asarray(t.inplace_ok), own * size * reuse, 0.0)
  live = live - saving
  if im2col:
    mix = template_lib.mixes_channels(t)
    scratch = template_lib.scaled(t, t.stats.im2col_bytes, activity['s_in'], activity['s_out'],
                                  mix, False)
    live = live + activity['mult'] * scratch
  return live


def soft_peak_bytes(t: template_lib.Template, activity: dict, im2col: bool = False):
  return jnp.max(soft_live_bytes(t, activity, im2col))


def flash_bytes(weights, biases, quant_channels, kernel_calls, runtime,
                const_bytes=0.0) -> jax.Array:
  """int8 weights + int32 biases + folded int8 constants + quantisation params + per-kernel
  and per-model metadata + runtime code."""
  return (weights + 4.0 * biases + const_bytes + runtime.quant_bytes_per_channel * quant_channels
          + runtime.flash_bytes_per_kernel * kernel_calls + runtime.model_flash_bytes
          + runtime.code_flash_bytes)


def sram_bytes(arena_peak, quant_channels, runtime) -> jax.Array:
  """Arena peak + per-channel persistent data the runtime keeps in RAM + fixed overhead."""
  return (arena_peak + runtime.persistent_bytes_per_channel * quant_channels
          + runtime.sram_overhead_bytes)


# ----------------------------------------------------------------------------- TFLite Micro

TFLM_ALIGNMENT = 16  # TFLM aligns every planned buffer to 16 bytes


@dataclasses.dataclass(frozen=True)
class TflmBuffers:
  """The activation tensors an int8 TFLite model of a graph has, as this project exports it
  (`deploy.graph_tflite`): sizes and [first, last] op indices, in tensor order."""
  sizes: np.ndarray
  first: np.ndarray
  last: np.ndarray
  num_ops: int


def tflm_buffers(graph: graph_lib.Graph) -> TflmBuffers:
  """A concrete graph's tensors as the exported .tflite holds them: a PAD tensor before each
  conv whose padding the export writes as a PAD op (`graph.explicit_pad`: PyTorch's symmetric
  padding where TFLite's SAME pads otherwise, NB201's stride-2 convs), an n-term sum as n - 1
  chained ADDs with int8 partial sums (a folded constant operand is a flash tensor, not an arena
  one), the global pool as AVERAGE_POOL_2D then RESHAPE, a reshape or identity node as a
  RESHAPE with its own tensor (except a flatten of a global pool's output, which the export
  writes nothing for); one-term sums add no tensor. No op works in place."""
  st = graph_lib.node_stats(graph)
  sizes, first, last = [], [], []
  tensor_of = {}
  op = 0

  def new(size):
    sizes.append(int(size))
    first.append(op)
    last.append(op)
    return len(sizes) - 1

  def read(t):
    last[t] = max(last[t], op)

  for i, node in enumerate(graph.nodes):
    if node.op == 'input':
      tensor_of[i] = new(st.out_bytes[i])
      continue
    ins = [tensor_of[j] for j in node.inputs]
    if graph_lib.flat_already(graph, i) or node.op == 'add' and node.is_alias:
      tensor_of[i] = ins[0]
      continue
    if node.op == 'add':  # constant operands (None) live in flash, not in the arena
      live = iter(ins)
      operands = [None if k in node.const_slots else next(live) for k in range(node.operands)]
      acc = operands[0]
      for t in operands[1:]:
        for x in (acc, t):
          if x is not None:
            read(x)
        acc = new(st.out_bytes[i])
        op += 1
      tensor_of[i] = acc
      continue
    in_shape = graph.nodes[node.inputs[0]].shape
    if graph_lib.explicit_pad(node, in_shape):
      (top, bottom), (left, right) = graph_lib.window_pads(node, in_shape)
      h, w, c = in_shape
      read(ins[0])
      ins = [new((h + top + bottom) * (w + left + right) * c)]
      op += 1
    if node.op == 'global_avg_pool':
      read(ins[0])
      ins = [new(st.out_bytes[i])]
      op += 1
    for t in ins:
      read(t)
    tensor_of[i] = new(st.out_bytes[i])
    op += 1
  last[tensor_of[len(graph) - 1]] = op - 1
  return TflmBuffers(np.array(sizes), np.array(first), np.array(last), op)


def tflm_greedy_plan(buffers: TflmBuffers) -> tuple[np.ndarray, int]:
  """TFLM's GreedyMemoryPlanner on these buffers: (byte offset of each buffer, arena bytes).
  Sizes are aligned up to 16, buffers taken largest first, each put at the lowest offset where
  it overlaps no placed buffer whose lifetime overlaps its own. Ties in size go in reverse
  tensor order: TFLM fills its sort array from the tail, and its bubble sort is stable. The
  placement order decides the arena, so this is the planner's exact behaviour, not an
  approximation of it; the generated C project (`deploy.c_source`) lays out its arena by it."""
  size = -(-buffers.sizes // TFLM_ALIGNMENT) * TFLM_ALIGNMENT
  order = sorted(reversed(range(len(size))), key=lambda b: -size[b])  # sorted() is stable
  placed = []  # (offset, buffer), kept in offset order
  offsets = np.zeros(len(size), np.int64)
  for b in order:
    active = [(o, p) for o, p in placed
              if buffers.first[p] <= buffers.last[b] and buffers.first[b] <= buffers.last[p]]
    offset = 0
    for o, p in active:  # offset order: take the first gap wide enough
      if o - offset >= size[b]:
        break
      offset = max(offset, o + size[p])
    placed.append((offset, b))
    placed.sort(key=lambda e: e[0])
    offsets[b] = offset
  return offsets, int(max((o + size[p] for o, p in placed), default=0))


def tflm_greedy_arena(buffers: TflmBuffers) -> int:
  """Arena bytes TFLM's GreedyMemoryPlanner needs for these buffers (`tflm_greedy_plan`)."""
  return tflm_greedy_plan(buffers)[1]


# TFLM's persistent ("tail") arena bytes per op of an exported NB201 model: the op's
# NodeAndRegistration (64), its output's TfLiteEvalTensor (24; conv: + weights and bias), op
# data and builtin parameters. Measured with tflite-micro 0.dev20261023 (its host build,
# 64-bit pointers) by least squares over 16 exported NB201 archs (C 8/16, N 1/2), ReLU fixed at
# its struct sizes (conv and ReLU counts move together); residuals below 60 bytes. A 32-bit
# Cortex-M build has smaller structs, so these over-estimate an MCU's tail by up to ~40%.
TFLM_PERSISTENT_BYTES = {'conv2d': 248, 'add': 172, 'avg_pool': 145, 'global_avg_pool': 145,
                         'activation': 104}
TFLM_PERSISTENT_FIXED = 1917       # head's depthwise BN, classifier, PADs, RESHAPE, I/O tensors
TFLM_PERSISTENT_PER_CHANNEL = 8    # int32 multiplier + shift per output channel


def tflm_arena(graph: graph_lib.Graph) -> dict:
  """TFLite Micro's arena for a concrete NB201 graph exported by `deploy.graph_tflite`: the
  planned activation buffers (`tflm_greedy_arena` over `tflm_buffers`) and the persistent tail.
  {'planned', 'persistent', 'total'} in bytes."""
  planned = tflm_greedy_arena(tflm_buffers(graph))
  roots = _buffer_roots(graph)
  persistent = TFLM_PERSISTENT_FIXED
  for i, node in enumerate(graph.nodes):
    if roots[i] != i or node.op == 'input':
      continue  # aliases run nothing
    ops = node.operands - 1 if node.op == 'add' else 1
    persistent += ops * TFLM_PERSISTENT_BYTES.get(node.op, 0)
    if node.op in ('conv2d', 'dense', 'batchnorm', 'depthwise_conv2d'):
      persistent += TFLM_PERSISTENT_PER_CHANNEL * node.shape[-1]
  return {'planned': planned, 'persistent': persistent, 'total': planned + persistent}

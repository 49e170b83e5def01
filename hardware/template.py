"""JAX evaluation of a gated template graph: node activity, alias weights and buffer lifetimes.

`compile_template(graph)` turns the static graph into index arrays once; `soft_activity`
then maps one gate vector (and optional width multipliers) to per-node quantities with
`lax.fori_loop` sweeps over the topological order, so it jits once per template and vmaps
over candidates.  At 0/1 gates every output equals the exact pruner/planner in `graph.py`
and `memory.py` (tested); in between it is a piecewise-linear relaxation (Goedel min/max
logic, see graph.py), differentiable almost everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from hardware import graph as graph_lib

_EPS = 1e-6  # weights below this count as off for buffer lifetimes


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
  """Static arrays of one graph (hashable by identity, so usable as a jit static arg)."""
  graph: graph_lib.Graph
  stats: graph_lib.NodeStats
  inputs: np.ndarray          # [N, I] input node ids, -1 padded
  consumers: np.ndarray       # [N, C] consumer node ids, -1 padded
  consumer_slot: np.ndarray   # [N, C] which input slot of the consumer this node fills
  gate_idx: np.ndarray        # [N]
  is_sum: np.ndarray          # [N] add/concat
  is_add: np.ndarray          # [N]
  is_alias: np.ndarray        # [N] identity/reshape
  inplace_ok: np.ndarray      # [N]
  inplace_legal: np.ndarray   # [N, I] input buffer big enough to be overwritten
  duplicate_of: np.ndarray    # [N] graph.duplicate_of (common-subexpression representative)
  static_consts: np.ndarray   # [N] folded constant operands a pruned add already carries
  channels: np.ndarray        # [N] output channels (bytes of one constant operand)

  @property
  def num_nodes(self) -> int:
    return len(self.graph.nodes)

  @property
  def num_gates(self) -> int:
    return self.graph.num_gates

  @property
  def num_widths(self) -> int:
    return self.graph.num_widths


def _pad(rows, fill=-1):
  width = max(1, max((len(r) for r in rows), default=1))
  out = np.full((len(rows), width), fill, dtype=np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@functools.lru_cache(maxsize=64)
def compile_template(graph: graph_lib.Graph) -> Template:
  graph_lib.validate(graph)
  stats = graph_lib.node_stats(graph)
  nodes = graph.nodes
  consumers = [[] for _ in nodes]
  slots = [[] for _ in nodes]
  for i, node in enumerate(nodes):
    for s, j in enumerate(node.inputs):
      consumers[j].append(i)
      slots[j].append(s)
  inputs = _pad([n.inputs for n in nodes])
  legal = np.zeros(inputs.shape, bool)
  for i, node in enumerate(nodes):
    for s, j in enumerate(node.inputs):
      legal[i, s] = (stats.out_bytes[j] >= stats.out_bytes[i]
                     and stats.width_out[j] == stats.width_out[i])
  return Template(
      graph=graph, stats=stats, inputs=inputs, consumers=_pad(consumers),
      consumer_slot=_pad(slots, 0),
      gate_idx=np.array([n.gate for n in nodes], np.int32),
      is_sum=np.array([n.op in graph_lib.SUM_OPS for n in nodes]),
      is_add=np.array([n.op == 'add' for n in nodes]),
      is_alias=np.array([n.op in graph_lib.ALIAS_OPS for n in nodes]),
      inplace_ok=np.array([n.op in graph_lib.INPLACE_OPS for n in nodes]),
      inplace_legal=legal, duplicate_of=graph_lib.duplicate_of(graph).astype(np.int32),
      static_consts=np.array([len(n.const_slots) for n in nodes], np.float32),
      channels=np.array([n.shape[2] for n in nodes], np.float32))


def as_template(graph_or_template) -> Template:
  if isinstance(graph_or_template, Template):
    return graph_or_template
  return compile_template(graph_or_template)


def node_gates(t: Template, gates: Optional[jax.Array]) -> jax.Array:
  if gates is None or t.num_gates == 0:
    return jnp.ones(t.num_nodes)
  gates = jnp.asarray(gates, jnp.float32).reshape(-1)
  idx = jnp.asarray(np.maximum(t.gate_idx, 0))
  return jnp.where(jnp.asarray(t.gate_idx >= 0), gates[idx], 1.0)


def width_scales(t: Template, widths: Optional[jax.Array]):
  """Per-node (input, output) channel multipliers."""
  if widths is None or t.num_widths == 0:
    one = jnp.ones(t.num_nodes)
    return one, one
  widths = jnp.asarray(widths, jnp.float32).reshape(-1)

  def pick(idx):
    return jnp.where(jnp.asarray(idx >= 0), widths[jnp.asarray(np.maximum(idx, 0))], 1.0)

  return pick(t.stats.width_in), pick(t.stats.width_out)


def _forward_live(t: Template, g, fold_constants: bool = True):
  inputs = jnp.asarray(t.inputs)
  is_sum = jnp.asarray(t.is_sum)

  def body(n, live):
    ins = inputs[n]
    valid = ins >= 0
    vals = live[jnp.maximum(ins, 0)]
    # without constant folding a sum of absent terms is still a (zero) tensor
    any_live = jnp.max(jnp.where(valid, vals, 0.0)) if fold_constants else 1.0
    all_live = jnp.min(jnp.where(valid, vals, 1.0))
    v = jnp.minimum(g[n], jnp.where(is_sum[n], any_live, all_live))
    return live.at[n].set(jnp.where(n == 0, 1.0, v))

  return jax.lax.fori_loop(0, t.num_nodes, body, jnp.zeros(t.num_nodes))


def _forward_present(t: Template, g):
  """Node yields a tensor, live or constant (`graph.hard_present`): sums whenever on, other ops
  when on and all inputs are present."""
  inputs = jnp.asarray(t.inputs)
  is_sum = jnp.asarray(t.is_sum)

  def body(n, present):
    ins = inputs[n]
    all_in = jnp.min(jnp.where(ins >= 0, present[jnp.maximum(ins, 0)], 1.0))
    v = jnp.where(is_sum[n], g[n], jnp.minimum(g[n], all_in))
    return present.at[n].set(jnp.where(n == 0, 1.0, v))

  return jax.lax.fori_loop(0, t.num_nodes, body, jnp.zeros(t.num_nodes))


def _const_operands(t: Template, live, present):
  """[N] folded constant operands of each add (`graph.const_operand_slots`): constant terms,
  the leading ones counted once; exact at 0/1, fuzzy products in between."""
  ins = jnp.asarray(t.inputs)
  valid = ins >= 0
  live_in = jnp.where(valid, live[jnp.maximum(ins, 0)], 0.0)
  const_in = jnp.where(valid, jnp.minimum(present, 1.0 - live)[jnp.maximum(ins, 0)], 0.0)
  seen_live = jax.lax.cummax(live_in, axis=1)
  before = 1.0 - jnp.concatenate([jnp.zeros_like(live_in[:, :1]), seen_live[:, :-1]], axis=1)
  leading = jnp.sum(const_in * before, axis=1)
  n = jnp.sum(const_in, axis=1) - jnp.maximum(leading - 1.0, 0.0)
  return jnp.where(jnp.asarray(t.is_add), n, 0.0) + jnp.asarray(t.static_consts)


def _backward_useful(t: Template, g):
  consumers = jnp.asarray(t.consumers)
  last = t.num_nodes - 1

  def body(k, useful):
    n = last - k
    cons = consumers[n]
    c = jnp.maximum(cons, 0)
    u = jnp.max(jnp.where(cons >= 0, jnp.minimum(useful[c], g[c]), 0.0))
    return useful.at[n].set(jnp.where(n == last, 1.0, u))

  return jax.lax.fori_loop(0, t.num_nodes, body, jnp.zeros(t.num_nodes))


def _alias_weights(t: Template, live, consts):
  """[N, I] weight with which node n is an alias of its input slot i (0/1 when hard); a sum
  with a constant operand is not an alias."""
  valid = jnp.asarray(t.inputs >= 0)
  vals = jnp.where(valid, live[jnp.maximum(jnp.asarray(t.inputs), 0)], 0.0)
  # max over the *other* inputs of each slot, via the top two values
  top = jnp.argmax(vals, axis=1)
  m1 = jnp.max(vals, axis=1)
  m2 = jnp.max(jnp.where(jnp.arange(vals.shape[1])[None] == top[:, None], -1.0, vals), axis=1)
  m2 = jnp.maximum(m2, 0.0)
  others = jnp.where(jnp.arange(vals.shape[1])[None] == top[:, None], m2[:, None], m1[:, None])
  # "this input is the single live one, and no constant is added to it"
  only = jnp.minimum(jnp.minimum(vals, 1.0 - others), 1.0 - jnp.minimum(consts, 1.0)[:, None])
  sum_alias = jnp.where(jnp.asarray(t.is_sum)[:, None], only, 0.0)
  static_alias = jnp.where(jnp.asarray(t.is_alias)[:, None] & valid, 1.0, 0.0)
  return jnp.where(valid, sum_alias + static_alias, 0.0), vals


def _backward_last_use(t: Template, act, alias):
  """Extended last-use step of each node's value (uses through aliases extend it).

  Max-over-active: any use with a nonzero weight keeps the value alive (lifetimes are integer
  steps, exact at 0/1 gates); the soft weights enter the bytes through buffer ownership.
  """
  consumers = jnp.asarray(t.consumers)
  slots = jnp.asarray(t.consumer_slot)
  last = t.num_nodes - 1

  def body(k, end):
    n = last - k
    cons = consumers[n]
    c = jnp.maximum(cons, 0)
    needed_until = jnp.where(alias[c, slots[n]] > _EPS, end[c], c)
    used = (cons >= 0) & (act[c] > _EPS)
    return end.at[n].set(jnp.maximum(n, jnp.max(jnp.where(used, needed_until, 0))))

  return jax.lax.fori_loop(0, t.num_nodes, body, jnp.zeros(t.num_nodes, jnp.int32))


def _forward_root_end(t: Template, end, alias):
  """Last-use step of the buffer that actually holds each node's value."""
  inputs = jnp.asarray(t.inputs)

  def body(n, root_end):
    ins = inputs[n]
    a = jnp.where(ins >= 0, alias[n], 0.0)
    total = jnp.sum(a)
    a = a / jnp.maximum(total, 1.0)
    v = (1.0 - jnp.minimum(total, 1.0)) * end[n] + jnp.sum(a * root_end[jnp.maximum(ins, 0)])
    return root_end.at[n].set(v)

  return jax.lax.fori_loop(0, t.num_nodes, body, jnp.zeros(t.num_nodes))


def soft_activity(t: Template, gates=None, widths=None, fold_constants: bool = True,
                  prune_dead: bool = True, merge_duplicates: bool = False) -> dict:
  """Per-node activity of one candidate.

  fold_constants / prune_dead: what the toolchain's graph optimiser removes (see
  `graph.hard_activity`); the defaults are the exact pruner's semantics.  merge_duplicates:
  equal parameter-free ops on the same input (`graph.duplicate_of`) execute once: the group's
  representative is charged the max of its members' executions, the others nothing (`mult`
  only; `act`, `own` and the buffer lifetimes are unchanged).

  Returns dict with
    act:   node is computed (0..1);
    mult:  number of kernel executions (binary adds of an n-ary sum; 0 for aliases);
    consts: folded constant operands of each add (int8 channel vectors in flash);
    own:   node owns an arena buffer (not an alias);
    end:   extended last-use step of the node's buffer;
    root_end: last-use step of the buffer holding the node's value (for in-place checks);
    live_in: [N, I] liveness of each input slot;
    s_in, s_out: channel multipliers.
  """
  g = node_gates(t, gates)
  live = _forward_live(t, g, fold_constants)
  useful = _backward_useful(t, g) if prune_dead else jnp.ones(t.num_nodes)
  act = jnp.minimum(live, useful).at[0].set(1.0)
  if fold_constants:
    consts = act * _const_operands(t, live, _forward_present(t, g))
  else:  # nothing is folded, so every present node is live and no add has a constant operand
    consts = act * jnp.asarray(t.static_consts)
  alias, live_in = _alias_weights(t, live, consts)
  alias = alias * act[:, None]
  alias_total = jnp.clip(jnp.sum(alias, axis=1), 0.0, 1.0)
  own = jnp.where(jnp.asarray(t.is_alias), 0.0, act * (1.0 - alias_total))
  n_terms = jnp.sum(jnp.minimum(live_in, useful[:, None]), axis=1)
  add_mult = jnp.maximum(n_terms + consts - 1.0, 0.0)
  mult = jnp.where(jnp.asarray(t.is_add), add_mult, own)
  if merge_duplicates:
    rep = jnp.asarray(t.duplicate_of)
    group = jax.ops.segment_max(mult, rep, num_segments=t.num_nodes)
    mult = jnp.where(rep == jnp.arange(t.num_nodes), group, 0.0)
  end = jax.lax.stop_gradient(_backward_last_use(t, act, alias).astype(jnp.float32))
  root_end = _forward_root_end(t, end, alias)
  s_in, s_out = width_scales(t, widths)
  return dict(act=act, mult=mult, own=own, end=end, root_end=root_end, live_in=live_in,
              consts=consts, s_in=s_in, s_out=s_out)


def scaled(t: Template, base: np.ndarray, s_in, s_out, scale_in, scale_out):
  """base * s_in^scale_in * s_out^scale_out for per-node (or per-node-feature) counts."""
  base = jnp.asarray(base, jnp.float32)
  si = jnp.where(jnp.asarray(scale_in), s_in.reshape(s_in.shape + (1,) * (base.ndim - 1)), 1.0)
  so = jnp.where(jnp.asarray(scale_out), s_out.reshape(s_out.shape + (1,) * (base.ndim - 1)),
                 1.0)
  return base * si * so


def mixes_channels(t: Template) -> np.ndarray:
  return np.array([c in ('conv', 'pointwise', 'dense') for c in t.stats.op_classes])


def counts(t: Template, gates=None, widths=None, activity: Optional[dict] = None) -> dict:
  """Gate- and width-weighted totals: MACs, params, quantisation channels, latency features."""
  a = soft_activity(t, gates, widths) if activity is None else activity
  st = t.stats
  mix = mixes_channels(t)
  weights = scaled(t, st.weights, a['s_in'], a['s_out'], mix, True)
  biases = scaled(t, st.biases, a['s_in'], a['s_out'], False, True)
  macs = scaled(t, st.macs, a['s_in'], a['s_out'], mix, True)
  qch = scaled(t, st.quant_channels, a['s_in'], a['s_out'], False, True)
  feats = scaled(t, st.features, a['s_in'], a['s_out'], st.scale_in, st.scale_out)
  # traffic mixes an input part (scales with s_in) and an output part (scales with s_out)
  col = graph_lib.FEATURES.index
  act_in = jnp.asarray(st.activation_in_bytes, jnp.float32)
  act_out = jnp.asarray(st.features[:, col('activation_bytes')], jnp.float32) - act_in
  feats = feats.at[:, col('activation_bytes')].set(act_in * a['s_in'] + act_out * a['s_out'])
  feats = feats.at[:, col('weight_bytes')].set(weights + 4.0 * biases)
  m = a['mult']
  features = jnp.sum(m[:, None] * feats, axis=0)
  features = features.at[graph_lib.FEATURES.index('inference')].set(1.0)
  const_bytes = jnp.sum(a['consts'] * jnp.asarray(t.channels) * a['s_out'])
  return dict(macs=jnp.sum(m * macs), weights=jnp.sum(m * weights), biases=jnp.sum(m * biases),
              const_bytes=const_bytes,
              params=jnp.sum(m * (weights + biases)), quant_channels=jnp.sum(m * qch),
              kernel_calls=jnp.sum(m * jnp.asarray(st.features[:, graph_lib.FEATURES.index(
                  'kernel_calls')])), features=features)


def union_width(weights, sizes) -> jax.Array:
  """Width multiplier (of max(sizes) channels) of a layer whose channel count is one of `sizes`
  (ascending), chosen with option weights [..., len(sizes)]: a channel is on with the Goedel OR
  (max) of the weights of the options that have it, as gates combine (graph.py). Exact at a
  one-hot choice; a multi-hot one gets the width of the union (its largest option)."""
  sizes = np.asarray(sizes, np.float32)
  have = jax.lax.cummax(jnp.asarray(weights, jnp.float32), axis=np.ndim(weights) - 1,
                        reverse=True)
  return have @ (np.diff(sizes, prepend=0.0) / sizes[-1])

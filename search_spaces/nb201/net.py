"""The NB201 macro network: its one walk (`network`, with `Backend`s) and the JAX supernet.

`init_params` / `apply` / `run` form the supernet the scoring engine uses. Its arch is an op mask
[6, 5] (a one-hot row is one architecture, a multi-hot row sums its active ops, a soft row
weights them, for gradient-guided pruning) or op indices [6]. Executions (docs/network.md):
  * single path (op indices, the scoring default): each edge runs its one op under a
    `lax.switch` with a rematerialising custom VJP, a stage's cells as one `lax.scan`; one
    compile serves every arch, and an arch costs about its own network.
  * dense (traced masks): every op runs and is multiplied by its mask entry; no control flow,
    candidates batch with `vmap`.
  * sparse (traced masks, `sparse=True`): each op under `lax.cond` on its mask entry.
  * concrete numpy masks or op indices: only the active ops are walked at all.
The convolution's own gradients (`search_spaces.kernels.conv`) keep all of these fast on
XLA:CPU.

BatchNorm always normalises with the statistics of the batch (or with statistics passed in,
which is how the NTK's `independent` variant holds them fixed). `apply` returns the statistics
it used, so a caller can compute them once and feed them back.

`network` is the one walk of the network; the other execution is its hardware lowering
(`search_spaces.nb201.graph`, a backend that emits graph nodes), which is also what trains,
runs in integers and exports (`engine.quant.graph_qat`, `engine.quant.graph_int`,
`deploy.graph_tflite`, at the trained width and cells; in fp32 mode with batch statistics it
equals this supernet's single path given the same weights, tests/nb201_net_test.py).
The walk's names in `PUBLIC_WALK` are this module's interface to code outside the NB201 package;
everything else here (the supernet, its parameter layout) is NB201's own
(tests/import_rules_test.py holds other modules to that).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from search_spaces.nb201 import CONV1, CONV3, NB201Config, NODE_INPUTS, NONE, NUM_EDGES, POOL, SKIP
# The kernels every space shares. The supernet calls them through this module's globals, so a
# test that patches `net.conv` reaches every conv of the walk. BN_EPS is re-exported for the
# package's own modules (nb201/space.py's identity statistics).
from search_spaces.kernels import (BN_EPS, _conv, avg_pool_2x2, avg_pool_3x3,  # noqa: F401
                                   batch_norm, conv)

INITS = ('torch_default', 'kaiming_normal')
Params = dict[str, Any]


def _segments(config: NB201Config):
  """Layer plan grouped into ('cells', stage, count) and ('reduce', stage) segments."""
  segs = []
  for kind, stage in config.layer_plan():
    if kind == 'cell' and segs and segs[-1][0] == 'cells' and segs[-1][1] == stage:
      segs[-1] = ('cells', stage, segs[-1][2] + 1)
    elif kind == 'cell':
      segs.append(('cells', stage, 1))
    else:
      segs.append(('reduce', stage))
  return segs


def _channels(config: NB201Config, stage: int) -> int:
  return config.C * 2 ** stage


def output_channels(config: NB201Config) -> int:
  plan = config.layer_plan()
  return _channels(config, plan[-1][1]) if plan else config.C


# ----------------------------------------------------------------------------- init

def _weight(key, shape, fan_in, init):
  if init == 'torch_default':  # PyTorch's kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  if init == 'kaiming_normal':  # He et al., fan_in mode, ReLU gain
    return jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
  raise ValueError(f'unknown init {init!r}; choose one of {", ".join(INITS)}')


def _conv_w(key, k, cin, cout, init, lead=()):
  return _weight(key, tuple(lead) + (k, k, cin, cout), cin * k * k, init)


def init_params(key, config: NB201Config, init: str = 'torch_default') -> Params:
  """Supernet parameters: every op on every edge of every cell. BN scale 1, shift 0."""
  keys = iter(jax.random.split(key, 64))
  params: Params = {}
  ones, zeros = jnp.ones, jnp.zeros
  if config.use_stem:
    params['stem'] = {'conv': _conv_w(next(keys), 3, config.in_channels, config.C, init),
                      'bn_scale': ones(config.C), 'bn_bias': zeros(config.C)}
  for seg in _segments(config):
    if seg[0] == 'cells':
      _, s, n = seg
      c = _channels(config, s)
      lead = (n, NUM_EDGES)
      params[f'stage{s}'] = {
          'conv1': _conv_w(next(keys), 1, c, c, init, lead),
          'conv3': _conv_w(next(keys), 3, c, c, init, lead),
          'bn1_scale': ones(lead + (c,)), 'bn1_bias': zeros(lead + (c,)),
          'bn3_scale': ones(lead + (c,)), 'bn3_bias': zeros(lead + (c,)),
      }
    else:
      s = seg[1]
      cin, cout = _channels(config, s - 1), _channels(config, s)
      params[f'reduce{s}'] = {
          'conv_a': _conv_w(next(keys), 3, cin, cout, init),
          'bna_scale': ones(cout), 'bna_bias': zeros(cout),
          'conv_b': _conv_w(next(keys), 3, cout, cout, init),
          'bnb_scale': ones(cout), 'bnb_bias': zeros(cout),
          'shortcut': _conv_w(next(keys), 1, cin, cout, init),
      }
  c = output_channels(config)
  k1, k2 = jax.random.split(next(keys))
  params['head'] = {'bn_scale': ones(c), 'bn_bias': zeros(c),
                    'fc': _weight(k1, (c, config.num_classes), c, init),
                    'fc_bias': _weight(k2, (config.num_classes,), c, 'torch_default')}
  return params


def is_weight(path) -> bool:
  """TE-NAS's NTK uses parameters named 'weight' in PyTorch: conv, BN scale, classifier matrix."""
  return not str(path[-1].key).endswith('bias')


# ----------------------------------------------------------------------------- the one walk

# What code outside the NB201 package may use (a backend of its own, as the tests write): the
# walk and the protocol it calls. tests/import_rules_test.py reads this tuple.
PUBLIC_WALK = ('network', 'Backend', 'EdgeSwitch', 'edge_choices', 'path_key')

EDGE_OPS = (SKIP, CONV1, CONV3, POOL)  # 'none' contributes nothing and is never walked


def edge_choices(arch):
  """What each edge runs: [6] lists of (op, weight) for the walk.

  `arch` is op indices [6] (a single path), or an op mask [6, 5]. A concrete mask (numpy) is
  resolved here: zero entries are not walked at all and entries of 1 carry weight None (plain
  sum), so a one-hot or multi-hot 0/1 mask walks exactly its active ops. A traced mask walks
  every op with its (traced) weight; the backend decides whether that weight multiplies a
  computed op (dense) or gates it (sparse). Traced op indices [6] give one `EdgeSwitch` per edge
  (the single-path fast path of `Supernet`). A function `arch(edge, op) -> weight` walks every op
  with the weight it returns (the hardware template passes each op's gate index).
  """
  if callable(arch):
    return [[(op, arch(e, op)) for op in EDGE_OPS] for e in range(NUM_EDGES)]
  if arch is None:  # a network without cells (depth 0)
    return [[] for _ in range(NUM_EDGES)]
  if not isinstance(arch, jax.Array) or isinstance(arch, np.ndarray):
    a = np.asarray(arch)
    if a.ndim == 1:
      return [[(int(o), None)] if int(o) != NONE else [] for o in a]
    return [[(op, None if a[e, op] == 1 else float(a[e, op])) for op in EDGE_OPS
             if a[e, op] != 0] for e in range(NUM_EDGES)]
  if arch.ndim == 1:  # traced op indices: one switch per edge
    return [[EdgeSwitch(arch[e])] for e in range(NUM_EDGES)]
  return [[(op, arch[e, op]) for op in EDGE_OPS] for e in range(NUM_EDGES)]


class EdgeSwitch(NamedTuple):
  """An edge whose op is a traced index: the backend runs that op alone (`Backend.edge`)."""
  op: Any


class Backend:
  """What the walk needs from an execution: one method per primitive of the NB201 network.

  Paths name layers: ('stem',), ('stage{s}', cell, edge, 'conv1'|'conv3'),
  ('stage{s}', cell, 'node{j}') for a node sum, ('reduce{s}', 'a'|'b'|'shortcut'|'add'),
  ('head',) for the head BN, ('gap',) and ('classifier',). A tensor `t` is whatever the backend
  carries (an array, an (array, qparams) pair, an integer tensor, a graph node id).
  """

  def input(self, x):
    return x

  def conv(self, t, path, features, k, stride=1, bn=True):
    """k x k conv (padding k // 2), then BN unless bn=False."""
    raise NotImplementedError

  def relu(self, t, path):
    raise NotImplementedError

  def pool(self, t, path, size):
    """size 3: 3x3/s1 average pool, padding not counted; size 2: 2x2/s2."""
    raise NotImplementedError

  def identity(self, t, path):
    return t

  def add(self, terms, path, like):
    """Sum of terms: none -> zeros shaped like `like`, one -> that term, more -> an add."""
    raise NotImplementedError

  def gate(self, weight, fn, like):
    """One candidate op: fn() computes it. weight None: a plain term of a single path."""
    if weight is None:
      return fn()
    raise NotImplementedError

  def cells(self, cell, t, stage, count, edges):
    """The `count` cells of one stage: cell(t, index) for index 0, 1, ... in turn."""
    del stage, edges
    for i in range(count):
      t = cell(t, i)
    return t

  def edge(self, choices, h, path, channels):
    """The terms one edge adds to its node: each candidate op under `gate`."""
    if any(isinstance(c, EdgeSwitch) for c in choices):
      raise NotImplementedError(f'{type(self).__name__} takes op indices or masks, not traced '
                                'op indices')
    return [self.gate(weight, functools.partial(_edge_op, self, op, h, path, channels), h)
            for op, weight in choices]

  def after_layer(self, t):
    """Called on the output of the stem, of every cell and of every reduction block."""
    return t

  def head_bn(self, t, path):
    raise NotImplementedError

  def global_pool(self, t, path):
    raise NotImplementedError

  def dense(self, t, path, features):
    raise NotImplementedError


def _edge_op(backend: Backend, op, h, path, channels):
  if op == SKIP:
    return backend.identity(h, path + ('skip',))
  if op == POOL:
    return backend.pool(h, path + ('pool',), 3)
  k = 1 if op == CONV1 else 3
  conv_path = path + (f'conv{k}',)
  return backend.conv(backend.relu(h, conv_path), conv_path, channels, k)


def _cell(backend: Backend, edges, t, stage, index, channels):
  nodes = [t]
  for to_node, inputs in enumerate(NODE_INPUTS, 1):
    terms = []
    for e, frm in inputs:
      terms += backend.edge(edges[e], nodes[frm], (f'stage{stage}', index, e), channels)
    nodes.append(backend.add(terms, (f'stage{stage}', index, f'node{to_node}'), t))
  return nodes[3]


def _reduction(backend: Backend, t, stage, channels):
  name = f'reduce{stage}'
  a = backend.conv(backend.relu(t, (name, 'a')), (name, 'a'), channels, 3, 2)
  b = backend.conv(backend.relu(a, (name, 'b')), (name, 'b'), channels, 3)
  s = backend.conv(backend.pool(t, (name, 'pool'), 2), (name, 'shortcut'), channels, 1, bn=False)
  return backend.add([b, s], (name, 'add'), None)


def network(backend: Backend, arch, x, config: NB201Config):
  """The NB201 macro network, walked once for every execution (see `Backend`): stem conv-BN;
  per stage N cells (node j sums op(node i) over i < j; ops ReLU-conv-BN, 3x3 average pool,
  skip); ResNet reduction blocks (ReLU-conv3x3/s2-BN, ReLU-conv3x3-BN, plus 2x2 average pool ->
  1x1 conv); head BN, ReLU, global average pool, dense. `arch`: see `edge_choices`."""
  edges = edge_choices(arch)
  t = backend.input(x)
  if config.use_stem:
    t = backend.after_layer(backend.conv(t, ('stem',), config.C, 3))
  for seg in _segments(config):
    stage = seg[1]
    channels = _channels(config, stage)
    if seg[0] == 'cells':
      cell = functools.partial(_cell, backend, edges, stage=stage, channels=channels)
      t = backend.cells(lambda t_, i: backend.after_layer(cell(t=t_, index=i)), t, stage, seg[2],
                        edges)
    else:
      t = backend.after_layer(_reduction(backend, t, stage, channels))
  t = backend.relu(backend.head_bn(t, ('head',)), ('head',))
  return backend.dense(backend.global_pool(t, ('gap',)), ('classifier',), config.num_classes)


CELL_WILDCARD = '*'


def path_key(path) -> str:
  """'stage0/3/2/conv3'; a traced cell index (inside a scan over cells) reads '*'."""
  return '/'.join(CELL_WILDCARD if isinstance(p, jax.core.Tracer) else str(p) for p in path)


# ----------------------------------------------------------------------------- JAX supernet

def _cell_leaf(stacked, i, e):
  """stacked[i, e] for a leaf stacked [cells, edges, ...], i possibly a traced cell index. One
  lax.dynamic_slice: numpy-style indexing by a tracer costs many times more to trace, and a
  static slice followed by a dynamic one transposes into two full-stack buffers per use (which
  slowed the per-sample NTK: BENCHMARKS.md, "Design choices measured")."""
  inner = stacked.shape[2:]
  part = jax.lax.dynamic_slice(stacked, (i, e) + (0,) * len(inner), (1, 1) + inner)
  return part.reshape(inner)


def _conv_leaves(params, path):
  """(conv weight, BN scale, BN bias) of a path in the supernet's parameter tree (BN None for the
  reduction shortcut). Cell convs are stacked [cells, edges, ...]."""
  head = path[0]
  if head == 'stem':
    p = params['stem']
    return p['conv'], p['bn_scale'], p['bn_bias']
  if head.startswith('stage'):
    _, i, e, kind = path
    p = params[head]
    return tuple(_cell_leaf(p[name], i, e)
                 for name in (kind, f'bn{kind[-1]}_scale', f'bn{kind[-1]}_bias'))
  p = params[head]
  if path[1] == 'shortcut':
    return p['shortcut'], None, None
  return p[f'conv_{path[1]}'], p[f'bn{path[1]}_scale'], p[f'bn{path[1]}_bias']


def _probe_leaf(probes, path):
  head = path[0]
  if head.startswith('stage'):
    _, i, e, kind = path
    return _cell_leaf(probes[head][kind], i, e)
  if head == 'stem':
    return probes['stem']['conv']
  if head == 'classifier':
    return probes['head']['fc']
  return probes[head]['shortcut' if path[1] == 'shortcut' else f'conv_{path[1]}']


_CONV_KINDS = ('conv1', 'conv3')


def _single_op(op, h, leaves, probes, fixed, conv_fn, record):
  """One edge op of a single path, as a pure function: (output, records). Records hold both conv
  kinds' BN statistics and (with `record`) ReLU pre-activations, zeros for the op not run, so
  every op returns the same structure (the branches of one `lax.switch`)."""
  c, batch = h.shape[-1], h.shape[0]
  rec = {}
  for kind in _CONV_KINDS:
    rec[kind] = (jnp.zeros(c, h.dtype), jnp.zeros(c, h.dtype))
    if record:
      rec['relu_' + kind] = (jnp.zeros((batch, h[0].size), h.dtype), jnp.bool_(False))
  if op == NONE:
    return jnp.zeros_like(h), rec
  if op == SKIP:
    return h, rec
  if op == POOL:
    return avg_pool_3x3(h), rec
  kind = 'conv1' if op == CONV1 else 'conv3'
  w, scale, bias = leaves[kind]
  if record:
    rec['relu_' + kind] = (h.reshape(batch, -1), jnp.bool_(True))
  y = conv_fn(jax.nn.relu(h), w, 1)
  if probes is not None:
    y = y * probes[kind][:, None, None, :]
  y, rec[kind] = batch_norm(y, scale, bias, None if fixed is None else fixed[kind])
  return y, rec


@functools.partial(jax.jit, static_argnums=(0, 1))
def _op_forward(op, record, h, leaves, probes, fixed):
  """`_single_op` with XLA's plain conv. Jitted so that its trace is cached (by op and shapes)
  across the many edges and transformations of one scorer: tracing was most of its compile."""
  return _single_op(op, h, leaves, probes, fixed, _conv, record)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _op_pullback(op, record, h, leaves, probes, fixed, ct):
  """The pullback of one edge op's output: (dh, dleaves, dprobes). Jitted for the same reason."""
  f = lambda h_, l_, p_: _single_op(op, h_, l_, p_, fixed, conv, record)[0]
  return jax.vjp(f, h, leaves, probes)[1](ct)


@functools.lru_cache(maxsize=None)
def _switched_edge(record: bool):
  """f(op, h, leaves, probes, fixed) -> (output, records): the edge's op chosen by a traced index.

  Why a custom VJP: differentiating a `lax.switch` makes its forward pass emit the residuals of
  every branch (zero-filled for the branches not taken), several activation-sized buffers per
  edge. Here the residuals are the edge's input and weights; the backward pass recomputes the
  chosen op's forward inside a switch and pulls back through it (the fast conv gradients). The
  forward uses XLA's plain conv, so forward mode over the backward pass (GraSP) works. Records
  carry no gradient (callers stop gradients on statistics they feed back). (Keeping the conv's
  output as a residual instead of recomputing it was slower: BENCHMARKS.md, "Design choices
  measured".)
  """
  ops = range(len(EDGE_OPS) + 1)

  def run(op, h, leaves, probes, fixed):
    return jax.lax.switch(op, [functools.partial(_op_forward, o, record) for o in ops],
                          h, leaves, probes, fixed)

  @jax.custom_vjp
  def edge(op, h, leaves, probes, fixed):
    return run(op, h, leaves, probes, fixed)

  def fwd(op, h, leaves, probes, fixed):
    return run(op, h, leaves, probes, fixed), (op, h, leaves, probes, fixed)

  def bwd(res, cotangents):
    op, h, leaves, probes, fixed = res
    dh, dleaves, dprobes = jax.lax.switch(
        op, [functools.partial(_op_pullback, o, record) for o in ops],
        h, leaves, probes, fixed, cotangents[0])
    return None, dh, dleaves, dprobes, jax.tree.map(jnp.zeros_like, fixed)

  edge.defvjp(fwd, bwd)
  return edge


class Supernet(Backend):
  """The masked supernet in JAX (scoring, pruning, soft masks), and single paths of it.

  * dense: every op runs and is multiplied by its mask entry; no control flow, candidates batch
    with vmap.
  * sparse: each op runs under `lax.cond` on its mask entry (multi-hot and soft masks) or, given
    traced op indices [6], each edge runs its one op under a `lax.switch` (`_switched_edge`), so
    a candidate costs about its own single-path network (the conv gradients stay fast there, see
    `conv`).
  A concrete mask or op indices never walks inactive ops at all (`edge_choices`).

  Records, by path key: BN statistics used (`stats`), ReLU pre-activations with whether their op
  is active (`relus`, when `record_relus`). `fixed_stats` holds BN statistics constant;
  `probes` multiplies every conv / dense output by a [B, C_out] factor (fisher's hooks);
  `hook(x)` rewrites the features after the stem, every cell and every reduction block (no
  scan over cells then); `rescale` divides them by their peak instead, summing the logs in
  `log_scale` (synflow). `record_stages` keeps those features in `stage_features` (AZ-NAS);
  `stage_shifts` (one array per such feature) makes the next layer read
  stop_gradient(feature) + shift, so each block's input Jacobian is a gradient by its shift.
  """

  def __init__(self, params, sparse=False, fixed_stats=None, probes=None, hook=None,
               record_relus=False, rescale=False, record_stages=False, stage_shifts=None):
    self.params, self.sparse = params, sparse
    self.fixed_stats, self.probes, self.hook = fixed_stats, probes, hook
    self.record_relus, self.rescale = record_relus, rescale
    self.record_stages = record_stages or stage_shifts is not None
    self.stage_shifts = stage_shifts
    self.stage_features: list = []  # block outputs in order (`record_stages`)
    self._cell_shift = None         # inside a scan over cells: this cell's shift
    self.log_scale = jnp.zeros(())  # sum of log rescaling factors (`rescale`)
    self.last = None                # the features after the last layer (the head's input)
    self.stats: dict[str, Any] = {}
    self.relus: dict[str, Any] = {}
    self._active = jnp.bool_(True)

  def conv(self, t, path, features, k, stride=1, bn=True):
    w, scale, bias = _conv_leaves(self.params, path)
    y = conv(t, w, stride)
    if self.probes is not None:
      y = y * _probe_leaf(self.probes, path)[:, None, None, :]
    if scale is None:
      return y
    key = path_key(path)
    fixed = None if self.fixed_stats is None else self.fixed_stats[key]
    y, self.stats[key] = batch_norm(y, scale, bias, fixed)
    return y

  def relu(self, t, path):
    if self.record_relus:
      self.relus[path_key(path)] = (t.reshape(t.shape[0], -1), self._active)
    return jax.nn.relu(t)

  def cells(self, cell, t, stage, count, edges):
    """With switched edges (traced op indices) and no per-layer hook, a stage's cells run as one
    `lax.scan` over their stacked weights: every cell is the same program, so it is compiled
    once instead of N times (compile time is what this buys; run time is unchanged)."""
    switched = any(isinstance(c, EdgeSwitch) for choices in edges for c in choices)
    if not switched or self.hook is not None or count == 1:
      return super().cells(cell, t, stage, count, edges)
    prefix = f'stage{stage}/'
    wild = prefix + CELL_WILDCARD + '/'
    fixed = None
    if self.fixed_stats is not None:
      per_cell = [{k.replace(f'{prefix}{i}/', wild, 1): v for k, v in self.fixed_stats.items()
                   if k.startswith(f'{prefix}{i}/')} for i in range(count)]
      fixed = jax.tree.map(lambda *a: jnp.stack(a), *per_cell)
    saved = self.stats, self.relus, self.fixed_stats, self.stage_features
    first = len(self.stage_features)
    shifts = (None if self.stage_shifts is None else
              jnp.stack(self.stage_shifts[first:first + count]))

    def body(carry, xs):
      t, self.log_scale = carry
      i, fixed_i, self._cell_shift = xs
      self.stats, self.relus, self.stage_features = {}, {}, []
      if fixed_i is not None:
        self.fixed_stats = fixed_i
      t = cell(t, i)
      return (t, self.log_scale), (self.stats, self.relus, self.stage_features)

    (t, log_scale), (stats, relus, stages) = jax.lax.scan(
        body, (t, self.log_scale), (jnp.arange(count), fixed, shifts))
    self.stats, self.relus, self.fixed_stats, self.stage_features = saved
    self._cell_shift = None
    if self.record_stages:
      self.stage_features.extend(jax.lax.unstack(stages[0]))
    self.log_scale, self.last = log_scale, t
    for recorded, into in ((stats, self.stats), (relus, self.relus)):
      for k, v in recorded.items():
        # one unstack per leaf: indexing each cell's slice (a[i]) was seconds of trace per scorer
        leaves, treedef = jax.tree.flatten(v)
        per_leaf = [jax.lax.unstack(a) for a in leaves]
        for i in range(count):
          into[k.replace(wild, f'{prefix}{i}/', 1)] = treedef.unflatten(
              [parts[i] for parts in per_leaf])
    return t

  def edge(self, choices, h, path, channels):
    if not (len(choices) == 1 and isinstance(choices[0], EdgeSwitch)):
      return super().edge(choices, h, path, channels)
    keys = {k: path_key(path + (k,)) for k in _CONV_KINDS}
    leaves = {k: _conv_leaves(self.params, path + (k,)) for k in _CONV_KINDS}
    probes = (None if self.probes is None else
              {k: _probe_leaf(self.probes, path + (k,)) for k in _CONV_KINDS})
    fixed = None if self.fixed_stats is None else {k: self.fixed_stats[keys[k]] for k in keys}
    y, rec = _switched_edge(self.record_relus)(choices[0].op, h, leaves, probes, fixed)
    for k, key in keys.items():
      self.stats[key] = rec[k]
      if self.record_relus:
        pre, active = rec['relu_' + k]
        self.relus[key] = (pre, active & self._active)
    return [y]

  def pool(self, t, path, size):
    return avg_pool_3x3(t) if size == 3 else avg_pool_2x2(t)

  def add(self, terms, path, like):
    if not terms:
      return jnp.zeros_like(like)
    total = terms[0]
    for y in terms[1:]:
      total = total + y
    return total

  def gate(self, weight, fn, like):
    if weight is None:
      return fn()
    outer = self._active
    self._active = outer & (weight != 0)
    try:
      if not self.sparse:
        return weight * fn()
      return self._cond(weight, fn)
    finally:
      self._active = outer

  def _cond(self, weight, fn):
    """weight * fn() under lax.cond; what fn records comes out of the branch as outputs."""
    saved = self.stats, self.relus

    def on():
      self.stats, self.relus = {}, {}
      y = weight * fn()
      return y, self.stats, self.relus

    shapes = jax.eval_shape(on)
    off = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    y, stats, relus = jax.lax.cond(weight != 0, on, off)
    self.stats, self.relus = saved
    self.stats.update(stats)
    self.relus.update(relus)
    return y

  def after_layer(self, t):
    if self.hook:
      t = self.hook(t)
    if self.rescale:  # divide by the (constant) peak so deep products stay in float32 range
      peak = jax.lax.stop_gradient(jnp.max(t))
      scale = jnp.where(peak > 0, peak, 1.0)
      self.log_scale = self.log_scale + jnp.log(scale)
      t = t / scale
    if self.record_stages:
      shift = self._cell_shift
      if shift is None and self.stage_shifts is not None:
        shift = self.stage_shifts[len(self.stage_features)]
      self.stage_features.append(t)
      if shift is not None:
        t = jax.lax.stop_gradient(t) + shift
    self.last = t
    return t

  def head_bn(self, t, path):
    p = self.params['head']
    key = path_key(path)
    fixed = None if self.fixed_stats is None else self.fixed_stats[key]
    y, self.stats[key] = batch_norm(t, p['bn_scale'], p['bn_bias'], fixed)
    return y

  def global_pool(self, t, path):
    return jnp.mean(t, (1, 2))

  def dense(self, t, path, features):
    p = self.params['head']
    y = t @ p['fc'] + p['fc_bias']
    if self.probes is not None:
      y = y * _probe_leaf(self.probes, path)
    return y


def run(params: Params, arch, x, config: NB201Config, **options):
  """(logits, the `Supernet` backend after the walk: stats, relus, log_scale, last)."""
  backend = Supernet(params, **options)
  return network(backend, arch, x, config), backend


def apply(params: Params, mask, x, config: NB201Config, stats=None, sparse=False, hook=None,
          probes=None):
  """Supernet forward: (logits [B, classes], BN statistics used by path key). `stats` fixes BN
  statistics; `sparse` runs only active ops; `hook(x) -> x` is applied to the features after the
  stem and after every cell and reduction block (synflow rescales there to stay in float32
  range); `probes` (`probe_ones`) multiply conv and dense outputs. `mask` may be op indices [6]
  or a concrete mask, which walks only the active ops (see `edge_choices`)."""
  backend = Supernet(params, sparse, stats, probes, hook)
  logits = network(backend, mask, x, config)
  return logits, backend.stats


def relu_blocks(params: Params, mask, x, config: NB201Config, sparse=False):
  """[(pre-activation [B, units], active)] for every ReLU module the network has.

  Mirrors forward hooks on PyTorch's nn.ReLU modules (TE-NAS, NASWOT): one ReLU per conv op of
  every edge (on that op's input node), two per reduction block, and the head's. `active` is
  False for the ReLU of a conv op the mask switches off: that module does not exist in the
  single-path network, so callers must drop its columns (a Hamming kernel would count them).
  BatchNorm uses the batch's statistics, as `apply` does without `stats`.
  """
  backend = Supernet(params, sparse, record_relus=True)
  network(backend, mask, x, config)
  return list(backend.relus.values())


def relu_inputs(params: Params, mask, x, config: NB201Config):
  """Pre-activations of every ReLU the network applies, flattened per sample [B, units].

  Matches TE-NAS's hooks on nn.ReLU (see `relu_blocks`). Inactive ops contribute all-zero
  columns, which leave linear-region pattern counts unchanged.
  """
  return jnp.concatenate([jnp.where(active, pre, 0.0)
                          for pre, active in relu_blocks(params, mask, x, config)], axis=1)


# Leaves holding nn.Conv2d / nn.Linear weights (the zero-cost proxies' layers).
LAYER_WEIGHTS = ('conv', 'conv1', 'conv3', 'conv_a', 'conv_b', 'shortcut', 'fc')


def probe_ones(params, batch: int):
  """Ones [*lead, B, C_out] for every layer weight (lead: the [cells, edges] axes of cell
  convs): the per-sample, per-channel factors `apply(probes=...)` multiplies each Conv/Linear
  output by. d loss / d probe[n, k] is then sum over pixels of activation * dLoss/dactivation
  (zero-cost-nas's fisher hooks)."""
  def ones(path, w):
    lead = 2 if str(path[-1].key) in ('conv1', 'conv3') else 0
    return jnp.ones(w.shape[:lead] + (batch, w.shape[-1]), w.dtype)
  return jax.tree_util.tree_map_with_path(
      lambda p, w: ones(p, w) if str(p[-1].key) in LAYER_WEIGHTS else None, params)

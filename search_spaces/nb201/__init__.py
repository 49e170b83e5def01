"""The NAS-Bench-201 cell space: ops, edges, arch strings, indices, masks, params and FLOPs.

A cell has 4 nodes; node j sums op_(j,i)(node i) over i < j, and node 3 is the output. An
architecture picks one of 5 ops on each of the 6 edges (5**6 = 15,625 archs). Everything here is
numpy and vectorised over archs; the network itself lives in `nb201.net`.

Three ways to name an arch:
  * op tuple / op-index array ``[6]`` of indices into ``OPS`` (edge order ``EDGES``),
  * the NB201 arch string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``,
  * the benchmark's ``arch_index`` (0..15624). NB201 numbers archs in a shuffled order, so the
    index needs the benchmark's table (`ArchIndex`), read from a CSV with ``arch_index`` and
    ``arch_str`` columns; it is never a formula.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import pathlib

import numpy as np

OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
NONE, SKIP, CONV1, CONV3, POOL = range(5)
# (to_node, from_node), in the order edges appear in an arch string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_EDGES = len(EDGES)
# For nodes 1, 2, 3: the (edge, from_node) pairs feeding it, in edge order. Every cell
# implementation walks the DAG this way.
NODE_INPUTS = tuple(tuple((e, frm) for e, (to, frm) in enumerate(EDGES) if to == node)
                    for node in (1, 2, 3))
NUM_OPS = len(OPS)
NUM_ARCHS = NUM_OPS ** NUM_EDGES

DATASETS = {  # name -> (input_size, num_classes)
    'cifar10': (32, 10),
    'cifar100': (32, 100),
    'ImageNet16-120': (16, 120),
}


class ArchError(ValueError):
  """A malformed architecture description; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class NB201Config:
  """Macro-network hyper-parameters (NB201 standard: C=16, N=5)."""
  C: int = 16
  N: int = 5
  num_classes: int = 10
  input_size: int = 32
  in_channels: int = 3
  use_stem: bool = True
  # Number of layers (cells and reduction blocks) kept from the start; -1 keeps all. TE-NAS's
  # linear-region network keeps only the first cell (depth=1, no stem).
  depth: int = -1

  @classmethod
  def for_dataset(cls, dataset: str, **overrides) -> 'NB201Config':
    if dataset not in DATASETS:
      raise ArchError(f'unknown dataset {dataset!r}; choose one of {", ".join(DATASETS)}')
    size, classes = DATASETS[dataset]
    return cls(**{'input_size': size, 'num_classes': classes, **overrides})

  def layer_plan(self) -> list[tuple[str, int]]:
    """[('cell', stage) | ('reduce', stage)] in order, truncated to `depth`."""
    plan = []
    for stage in range(3):
      if stage > 0:
        plan.append(('reduce', stage))
      plan.extend([('cell', stage)] * self.N)
    return plan if self.depth < 0 else plan[:self.depth]


# ----------------------------------------------------------------------------- arch strings

def format_arch_str(ops) -> str:
  """Op indices [6] -> NB201 arch string."""
  ops = [int(o) for o in ops]
  nodes = []
  for to_node in (1, 2, 3):
    parts = [f'{OPS[ops[e]]}~{frm}' for e, (t, frm) in enumerate(EDGES) if t == to_node]
    nodes.append('|' + '|'.join(parts) + '|')
  return '+'.join(nodes)


def parse_arch_str(arch_str: str) -> tuple[int, ...]:
  """NB201 arch string -> op indices [6]; raises ArchError with a one-line reason."""
  s = arch_str.strip()
  nodes = s.split('+')
  if len(nodes) != 3:
    raise ArchError(f'bad NB201 arch string {s!r}: expected 3 nodes joined by "+", e.g. '
                    f'{format_arch_str([CONV3] * 6)!r}')
  ops = []
  for to_node, node in enumerate(nodes, start=1):
    if not (node.startswith('|') and node.endswith('|')):
      raise ArchError(f'bad NB201 arch string {s!r}: node {to_node} must be wrapped in "|...|"')
    edges = node[1:-1].split('|')
    if len(edges) != to_node:
      raise ArchError(f'bad NB201 arch string {s!r}: node {to_node} needs {to_node} inputs, '
                      f'got {len(edges)}')
    for frm, edge in enumerate(edges):
      op, sep, src = edge.partition('~')
      if not sep or src != str(frm):
        raise ArchError(f'bad NB201 arch string {s!r}: edge {edge!r} should read "<op>~{frm}"')
      if op not in OPS:
        raise ArchError(f'bad NB201 arch string {s!r}: unknown op {op!r}; ops are '
                        f'{", ".join(OPS)}')
      ops.append(OPS.index(op))
  return tuple(ops)


# ----------------------------------------------------------------------------- codes and masks

_POWERS = NUM_OPS ** np.arange(NUM_EDGES)


def ops_to_code(ops) -> np.ndarray:
  """Op indices [..., 6] -> canonical code in [0, 15625) (base 5, edge 0 least significant)."""
  return (np.asarray(ops, np.int64) * _POWERS).sum(-1)


def code_to_ops(code) -> np.ndarray:
  """Canonical code [...] -> op indices [..., 6]."""
  code = np.asarray(code, np.int64)
  return (code[..., None] // _POWERS) % NUM_OPS


def all_ops() -> np.ndarray:
  """All 15,625 archs as op indices [15625, 6] in canonical-code order."""
  return code_to_ops(np.arange(NUM_ARCHS))


def ops_to_mask(ops) -> np.ndarray:
  """Op indices [..., 6] -> one-hot op masks [..., 6, 5] (float32)."""
  return np.eye(NUM_OPS, dtype=np.float32)[np.asarray(ops, np.int64)]


def mask_to_ops(mask) -> np.ndarray:
  """One-hot masks [..., 6, 5] -> op indices [..., 6]; rejects rows that are not one-hot."""
  mask = np.asarray(mask)
  active = mask != 0
  if not np.all(active.sum(-1) == 1):
    raise ArchError('mask is not one-hot: every edge row must have exactly one active op')
  return active.argmax(-1)


def supernet_mask(num: int = 1) -> np.ndarray:
  """All ops active on every edge: [num, 6, 5] ones."""
  return np.ones((num, NUM_EDGES, NUM_OPS), np.float32)


def sample_ops(rng: np.random.Generator, num: int) -> np.ndarray:
  """`num` distinct archs drawn uniformly without replacement, op indices [num, 6]."""
  if not 0 < num <= NUM_ARCHS:
    raise ArchError(f'cannot sample {num} archs: NB201 has {NUM_ARCHS}; use 1..{NUM_ARCHS}')
  return code_to_ops(rng.choice(NUM_ARCHS, size=num, replace=False))


def live_nodes(edge_live) -> list:
  """Per cell node 0-3, whether the cell input reaches it through edges with
  edge_live[..., e] true, one entry per node (node 0 always). Takes numpy or traced JAX
  booleans [..., 6], so the engine's traced masks use the same rule as the numpy tables."""
  live = [np.ones(np.shape(edge_live)[:-1], bool)]
  for inputs in NODE_INPUTS:  # nodes 1, 2, 3
    reach = np.zeros(np.shape(edge_live)[:-1], bool)
    for e, frm in inputs:
      reach = reach | (live[frm] & edge_live[..., e])
    live.append(reach)
  return live


def is_connected(ops) -> np.ndarray:
  """Whether the cell output (node 3) is reachable from the input through non-none ops."""
  return live_nodes(np.asarray(ops) != NONE)[3]


def without_dead_edges(ops) -> np.ndarray:
  """Op indices [..., 6] with `none` on every edge that carries nothing from the cell input to
  its output (it leaves a node the input does not reach, or enters one that does not reach the
  output). Archs equal after this are one network at init (a dead edge's output is zero, or
  after BN its zero-initialised bias) and score alike on every proxy."""
  ops = np.asarray(ops)
  on = ops != NONE
  reached = live_nodes(on)
  reaches = {3: np.ones(on.shape[:-1], bool)}  # node -> whether it reaches the output
  for node in (2, 1, 0):
    reaches[node] = np.zeros(on.shape[:-1], bool)
    for e, (to, frm) in enumerate(EDGES):
      if frm == node:
        reaches[node] = reaches[node] | (on[..., e] & reaches[to])
  live = np.stack([reached[frm] & reaches[to] for to, frm in EDGES], -1)
  return np.where(live, ops, NONE)


# ----------------------------------------------------------------------------- params and FLOPs

def _stage_geometry(config: NB201Config):
  plan = config.layer_plan()
  channels = [config.C * 2 ** s for s in range(3)]
  sizes = [config.input_size // 2 ** s for s in range(3)]
  return plan, channels, sizes


def count_params(mask, config: NB201Config) -> np.ndarray:
  """Trainable parameters of the macro network for masks [..., 6, 5] (NB201's `params` * 1e6).

  A multi-hot row counts every active op. Conv weights have no bias; BN has scale and shift.
  """
  active = np.asarray(mask) != 0
  plan, ch, _ = _stage_geometry(config)
  base = 0
  per_op = np.zeros(active.shape[:-2] + (NUM_OPS,), np.int64)
  c0 = config.in_channels
  if config.use_stem:
    base += 9 * config.in_channels * config.C + 2 * config.C
    c0 = config.C
  last = c0
  for kind, s in plan:
    if kind == 'reduce':
      cin, cout = ch[s - 1], ch[s]
      base += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + cin * cout
    else:
      c = ch[s]
      per_op = per_op + np.array([0, 0, c * c + 2 * c, 9 * c * c + 2 * c, 0])
    last = ch[s]
  base += 2 * last + last * config.num_classes + config.num_classes
  return base + (active * per_op[..., None, :]).sum((-1, -2))


FLOPS_CONVENTIONS = ('naslib', 'nb201')


def count_flops(mask, config: NB201Config, convention: str = 'naslib') -> np.ndarray:
  """FLOPs of the macro network for masks [..., 6, 5] (the benchmarks' MFLOPs * 1e6).

  convention='nb201' follows NB201's own counter: conv and classifier multiply-accumulates only.
  convention='naslib' (NAS-Bench-Suite-Zero's `flops`) adds elementwise work on top: ReLU one op
  per input element, BN two per element, k x k pooling k*k per output element, global pooling one
  per input element. A multi-hot row counts every active op.
  """
  if convention not in FLOPS_CONVENTIONS:
    raise ArchError(f'unknown FLOPs convention {convention!r}; use one of '
                    f'{", ".join(FLOPS_CONVENTIONS)}')
  extra = convention == 'naslib'
  active = np.asarray(mask) != 0
  plan, ch, hw = _stage_geometry(config)
  base = 0
  per_op = np.zeros(NUM_OPS, np.int64)
  if config.use_stem:
    base += 9 * config.in_channels * config.C * hw[0] ** 2 + extra * 2 * config.C * hw[0] ** 2
  last, last_hw = config.C, hw[0]
  for kind, s in plan:
    c, area = ch[s], hw[s] ** 2
    if kind == 'reduce':
      cin, area_in = ch[s - 1], hw[s - 1] ** 2
      base += (9 * cin * c + 9 * c * c + cin * c) * area
      # relu+bn of both convs, 2x2 average pool of the shortcut.
      base += extra * ((cin * area_in + 2 * c * area) + (c * area + 2 * c * area) + 4 * cin * area)
    else:
      elems = c * area
      per_op = per_op + np.array([0, 0, c * c * area + extra * 3 * elems,
                                  9 * c * c * area + extra * 3 * elems, extra * 9 * elems])
    last, last_hw = c, hw[s]
  base += extra * 4 * last * last_hw ** 2  # head BN + ReLU + global pool
  base += last * config.num_classes + config.num_classes
  return base + (active * per_op).sum((-1, -2))


# ----------------------------------------------------------------------------- benchmark index

def data_dir() -> pathlib.Path:
  """Third-party data: $ZERONAS_DATA_DIR, else ../shared/data beside the repository."""
  env = os.environ.get('ZERONAS_DATA_DIR')
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data'


def default_benchmark_file() -> pathlib.Path:
  return data_dir() / 'nb201' / 'nb201_test_acc_200ep_nats.csv'


class ArchIndex:
  """NB201's arch_index <-> op-index table, read from a benchmark CSV (arch_index, arch_str)."""

  def __init__(self, index_to_ops: np.ndarray, columns: dict[str, np.ndarray] | None = None):
    if index_to_ops.shape != (NUM_ARCHS, NUM_EDGES):
      raise ArchError(f'benchmark table must list all {NUM_ARCHS} archs, got '
                      f'{index_to_ops.shape[0]}')
    self.index_to_ops = index_to_ops
    self.code_to_index = np.full(NUM_ARCHS, -1, np.int64)
    self.code_to_index[ops_to_code(index_to_ops)] = np.arange(NUM_ARCHS)
    if (self.code_to_index < 0).any():
      raise ArchError('benchmark table repeats an arch; every NB201 arch must appear once')
    self.columns = columns or {}

  @classmethod
  def from_csv(cls, path) -> 'ArchIndex':
    path = pathlib.Path(path)
    if not path.is_file():
      raise ArchError(f'benchmark file not found: {path}; pass --benchmark_file or set '
                      f'ZERONAS_DATA_DIR to the folder holding nb201/')
    with path.open(newline='') as f:
      rows = list(csv.DictReader(f))
    if not rows or 'arch_index' not in rows[0] or 'arch_str' not in rows[0]:
      raise ArchError(f'{path} lacks arch_index/arch_str columns')
    index_to_ops = np.zeros((len(rows), NUM_EDGES), np.int64)
    for r in rows:
      index_to_ops[int(r['arch_index'])] = parse_arch_str(r['arch_str'])
    numeric = {}
    for name in rows[0]:
      if name in ('arch_index', 'arch_str'):
        continue
      try:
        col = np.array([float(r[name]) for r in rows])
      except ValueError:
        continue
      numeric[name] = col[np.argsort([int(r['arch_index']) for r in rows])]
    return cls(index_to_ops, numeric)

  def ops_to_index(self, ops) -> np.ndarray:
    return self.code_to_index[ops_to_code(ops)]


@functools.lru_cache(maxsize=4)
def load_arch_index(path=None) -> ArchIndex:
  """Cached `ArchIndex` for `path` (default: the NB201 accuracy table in the data dir)."""
  return ArchIndex.from_csv(path or default_benchmark_file())

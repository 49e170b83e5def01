"""NB201 as a registered search space: the cell's 6 edges, 5 ops each (15,625 archs).

An arch is a tuple of 6 op indices (`nb201.OPS`), its string the benchmark's arch string. Its
choices are those indices (one slot per edge, 5 options) and its supernet the op mask [6, 5]
that the scoring network (`nb201.net`) and the gated hardware template (`nb201.graph.cost`)
take directly; `none` is the optional option pruning may start without. Archs whose output
ignores the input (no path through non-`none` ops) are not valid.

The input shape and class count are the dataset's (`nb201.DATASETS`): `lower` and the relaxed
cost take them, and `config_for` maps them back to the network's configuration.
"""
from __future__ import annotations

import numpy as np

from search_spaces import interface, nb201, registry
from search_spaces.nb201 import graph as nb201_graph


def config_for(input_shape=None, num_classes=None) -> nb201.NB201Config:
  """The full NB201 network (C=16, N=5) at this input shape and class count."""
  size = int(input_shape[0]) if input_shape else nb201.DATASETS['cifar10'][0]
  classes = int(num_classes) if num_classes else nb201.DATASETS['cifar10'][1]
  return nb201.NB201Config(input_size=size, num_classes=classes)


def decode(arch_str: str) -> tuple:
  return tuple(int(o) for o in nb201.parse_arch_str(arch_str))


def encode(arch) -> str:
  return nb201.format_arch_str(np.asarray(arch))


def to_array(archs) -> np.ndarray:
  rows = [decode(a) if isinstance(a, str) else tuple(a) for a in archs]
  return np.asarray(rows, np.int32).reshape(-1, nb201.NUM_EDGES)


def from_rows(group, rows) -> list:
  return [tuple(int(o) for o in r) for r in np.asarray(rows).reshape(-1, nb201.NUM_EDGES)]


def mutate(arch, rng: np.random.Generator) -> tuple:
  """One edge's op changed to another op."""
  ops = list(arch)
  edge = int(rng.integers(nb201.NUM_EDGES))
  ops[edge] = (ops[edge] + int(rng.integers(1, nb201.NUM_OPS))) % nb201.NUM_OPS
  return tuple(ops)


def lower(arch, input_shape=None, num_classes=None):
  arch = decode(arch) if isinstance(arch, str) else arch
  return nb201_graph.lower(nb201.ops_to_mask(np.asarray(arch)), config_for(input_shape,
                                                                          num_classes),
                           name=encode(arch))


def relaxed_cost(group, masks, device, runtime, input_shape=None, num_classes=None) -> dict:
  return nb201_graph.cost(masks, config_for(input_shape, num_classes), device, runtime)


def make_scorer(proxy_names, config, seed, images):
  """NB201's own scorer (the single path, `engine.scoring.SearchScorer`)."""
  from engine import proxies, scoring
  return scoring.SearchScorer(proxy_names, proxies.ScoreSettings.from_config(config), seed,
                              images, config.candidate_chunk)


RELAXATION = interface.Relaxation(
    slots=lambda group: (nb201.NUM_OPS,) * nb201.NUM_EDGES, to_rows=to_array,
    from_rows=from_rows, cost=relaxed_cost, optional=nb201.NONE, valid=nb201.is_connected)

SPACE = registry.register(interface.SearchSpace(
    name='nb201', summary='NAS-Bench-201 cell (6 edges x 5 ops, 15,625 archs)',
    decode=decode, encode=encode,
    sample=lambda rng, n: from_rows((), nb201.sample_ops(rng, n)),
    enumerate=lambda: from_rows((), nb201.all_ops()), to_array=to_array, net=None,
    lower=lower, mutate=mutate, relax=RELAXATION, scorer=make_scorer,
    input_shape=(32, 32, 3), num_classes=10,
    datasets={name: ((size, size, 3), classes) for name, (size, classes) in
              nb201.DATASETS.items()}))

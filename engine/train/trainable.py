"""One arch's network as the trainer (`engine.train.train`) and the exporter (`deploy.export`) see
it, whatever its search space; nothing here names a space.

Every space trains and exports the arch's lowered hardware graph (the network its costs are
computed on), run by `engine.quant.graph_qat` (Flax, fp32 / folded / QAT), `engine.quant.graph_int`
(integers) and `deploy.graph_tflite` (the .tflite):
  * by default `SearchSpace.lower`'s graph at the space's own size;
  * a space with size settings (NB201: width C and cells N, `--train_width`, `--train_cells`)
    gives the graph at those settings with its constants kept (`SearchSpace.sized_lower`,
    `hardware.graph.prune(constants=True)`), and the kernel inits of its layers without BN
    (`SearchSpace.train_inits`).

`Trainable` holds the model per mode, init, calibration, the integer reference and the
.tflite, the hardware graph and the input size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class IntReference:
  """An integer network: int8 logits of normalised images, and its input quantization."""
  logits: Callable[[np.ndarray], np.ndarray]
  quantize_input: Callable[[np.ndarray], np.ndarray]   # -> int8 values (int array)
  input_qparams: tuple[float, int]
  weight_counts: Callable[[], dict]
  reference: Callable[[np.ndarray], np.ndarray] = None  # the same logits, numpy, eager

  def predict(self, x) -> np.ndarray:
    return np.argmax(self.logits(x), -1)


@dataclasses.dataclass(frozen=True)
class Trainable:
  space: str
  arch: str
  model_fn: Callable[[str], Any]           # mode -> flax Module(x, train, update_ranges)
  init: Callable[[Any], dict]              # key -> variables
  calibrate: Callable[[dict, Any], dict]   # (variables, batches) -> variables, fresh ranges
  integer: Callable[..., IntReference]     # (variables, rounding='tflm') -> IntReference
  tflite: Callable[[dict, str], bytes]     # (variables, description) -> .tflite bytes
  graph: Any                               # the lowered hardware graph
  image_size: int
  num_classes: int
  size: dict = dataclasses.field(default_factory=dict)  # the trained network's size settings
                                                        # ({'C': 16, 'N': 5}); {}: the space's own


def init_calibrated(net: Trainable, key, images) -> dict:
  """An untrained int8 model of `net` from `key`, its BN statistics and ranges from `images`
  (`qat_layers.init_calibrated`)."""
  from engine.quant import qat_layers
  return qat_layers.init_calibrated(net.init(key), net.model_fn('fp32'), net.model_fn('folded'),
                                    images)


def graph_trainable(space_name: str, arch: str, num_classes: int = 0, *, C: int = 16, N: int = 5,
                    dataset: str = 'cifar10') -> Trainable:
  """An arch through its lowered graph (`engine.quant.graph_qat`, `engine.quant.graph_int`,
  `deploy.graph_tflite`); raises ValueError (one line) for an arch the space cannot decode or the
  int8 path cannot run. A space with size settings (`SearchSpace.sized_lower`) lowers it at
  width C and cells N with its constants kept; the hardware graph is then that graph's `prune`."""
  from deploy import graph_tflite
  from engine.quant import graph_int, graph_qat
  from hardware import graph as graph_lib
  from search_spaces import registry
  space = registry.get(space_name)
  decoded = space.decode(arch)
  if space.sized_lower is not None:
    graph = space.sized_lower(decoded, C=C, N=N, dataset=dataset, num_classes=num_classes)
    hardware_graph, size = graph_lib.prune(graph), {'C': C, 'N': N}
  else:
    graph = space.lower(decoded, space.shape_of(space.group(decoded)),
                        num_classes or space.num_classes)
    hardware_graph, size = graph, {}
  try:
    graph_qat.check_graph(graph)
  except graph_qat.UnsupportedGraph as err:
    example = _exportable_example(space)
    raise graph_qat.UnsupportedGraph(
        f'{err}' + (f', e.g. {example}' if example else '')) from None
  inits = tuple(space.train_inits)

  def integer(variables, rounding='tflm'):
    net = graph_int.IntGraph(variables, graph, rounding=rounding)
    return IntReference(net.logits, net.quantize_input, net.act(0), net.weight_counts,
                        net.reference_logits)

  return Trainable(
      space_name, space.encode(decoded), lambda mode: graph_qat.GraphNetwork(graph, mode, inits),
      lambda key: graph_qat.init_variables(key, graph, inits),
      lambda v, batches: graph_qat.calibrate(v, graph, batches), integer,
      lambda v, description: graph_tflite.to_tflite(
          graph, graph_int.IntGraph(v, graph), description=description),
      hardware_graph, graph.nodes[0].shape[0], graph.nodes[-1].shape[2], size=size)


def trainable(space: str, arch: str, *, C: int = 16, N: int = 5, dataset: str = 'cifar10',
              num_classes: int = 0) -> Trainable:
  """`arch` of the registered space `space`; C and N size a space's network where it has
  size settings (`SearchSpace.sized_lower`), and are not read otherwise."""
  return graph_trainable(space, arch, num_classes, C=C, N=N, dataset=dataset)


def _exportable_example(space, draws: int = 64) -> str | None:
  """An arch of `space` (the first of a fixed draw) that the int8 path runs, for an error
  message; None if none of the draw does."""
  ok = int8_exportable(space.name) or (lambda arch: True)
  for arch in space.sample(np.random.default_rng(0), draws):
    if ok(arch):
      return space.encode(arch)
  return None


def int8_exportable(space_name: str):
  """None when every arch of the space trains and exports in int8 (a space with size settings,
  `SearchSpace.sized_lower`: NB201), else a predicate arch -> bool: its lowered graph has only
  ops the int8 path runs (tinycnn: not swish)."""
  from engine.quant import graph_qat
  from search_spaces import registry
  space = registry.get(space_name)
  if space.sized_lower is not None:
    return None

  def ok(arch) -> bool:
    graph = space.lower(arch, space.shape_of(space.group(arch)), space.num_classes)
    try:
      graph_qat.check_graph(graph)
    except graph_qat.UnsupportedGraph:
      return False
    return True

  return ok

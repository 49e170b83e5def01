"""An NB201 arch as the trainer and the exporter see it (`engine.trainable.Trainable`), at the
trained width C and cells N: the one walk's Flax backend (`search_spaces.nb201.qat`), integer
backend (`search_spaces.nb201.integer`) and TFLite backend (`search_spaces.nb201.tflite`). The
registered space hands this to `engine.trainable` (`SearchSpace.trainable`), which names no
space.
"""
from __future__ import annotations


def trainable(arch: str, C: int = 16, N: int = 5, dataset: str = 'cifar10',
              num_classes: int = 0):
  from engine.trainable import IntReference, Trainable
  from search_spaces import nb201
  from search_spaces.nb201 import graph as nb201_graph
  from search_spaces.nb201 import integer, qat, tflite
  ops = tuple(int(o) for o in nb201.parse_arch_str(arch))
  classes = {'num_classes': num_classes} if num_classes else {}
  config = nb201.NB201Config.for_dataset(dataset, C=C, N=N, **classes)

  def int_reference(variables, rounding='tflm'):
    net = integer.IntNetwork(variables, ops, config, rounding=rounding)
    scale, zp = net._range_qparams('input_q')

    def counts():
      c = net.weight_counts()
      return {'weights': c['weights'], 'biases': c['biases'],
              'head_bn_affine': {'weights': c['head_bn_weights'], 'biases': c['head_bn_biases']}}

    return IntReference(net.logits, lambda x: net.quantize_input(x).q, (scale, zp), counts)

  return Trainable(
      'nb201', arch, lambda mode: qat.QATNetwork(ops, config, mode),
      lambda key: qat.init_variables(key, ops, config),
      lambda v, batches: qat.calibrate(v, ops, config, batches), int_reference,
      lambda v, description: tflite.to_tflite(v, ops, config, description=description)[0],
      nb201_graph.lower(ops, config), config.input_size, config.num_classes,
      size={'C': C, 'N': N})

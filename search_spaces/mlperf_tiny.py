"""The four MLPerf Tiny reference models as built-in hardware graphs ('ic', 'kws', 'vww', 'ad').

Layer structure from mlcommons/tiny (summarised in ../shared/data/mlperf_tiny/reference_models.md),
lowered as the int8 TFLite converter deploys them: BatchNorm folded into the preceding conv /
dense, ReLU fused into the conv/dense/add that feeds it, dropout removed, softmax kept.
"""

from __future__ import annotations

from typing import Callable, Sequence

from hardware import graph as graph_lib


def resnet8_ic() -> graph_lib.Graph:
  """ResNet-8 (`resnet_v1_eembc`, 2021 revision: 16/32/64 filters), CIFAR-10 32x32x3."""
  b = graph_lib.GraphBuilder('ic')
  x = b.input((32, 32, 3))
  x = b.conv2d(x, 16, 3, folded_bn=True, activation='relu', name='conv1')
  for stage, filters in enumerate((16, 32, 64)):
    stride = 1 if stage == 0 else 2
    y = b.conv2d(x, filters, 3, stride, folded_bn=True, activation='relu', name=f's{stage}/conv_a')
    y = b.conv2d(y, filters, 3, folded_bn=True, name=f's{stage}/conv_b')
    if stage:
      x = b.conv2d(x, filters, 1, stride, name=f's{stage}/shortcut')
    x = b.add(y, x, activation='relu', name=f's{stage}/add')
  x = b.pool(x, 'avg', 8, 8, 'valid', name='avg_pool')
  x = b.reshape(x, name='flatten')
  x = b.dense(x, 10, name='fc')
  b.activation(x, 'softmax', name='softmax')
  return b.build()


def ds_cnn_kws() -> graph_lib.Graph:
  """DS-CNN keyword spotting, 49x10 MFCC input, 12 classes."""
  b = graph_lib.GraphBuilder('kws')
  x = b.input((49, 10, 1))
  x = b.conv2d(x, 64, (10, 4), 2, folded_bn=True, activation='relu', name='conv1')
  for i in range(4):
    x = b.depthwise_conv2d(x, 3, folded_bn=True, activation='relu', name=f'block{i}/dw')
    x = b.conv2d(x, 64, 1, folded_bn=True, activation='relu', name=f'block{i}/pw')
  x = b.pool(x, 'avg', (24, 5), (24, 5), 'valid', name='avg_pool')
  x = b.reshape(x, name='flatten')
  x = b.dense(x, 12, name='fc')
  b.activation(x, 'softmax', name='softmax')
  return b.build()


_MOBILENET_BLOCKS = ((1, 16), (2, 32), (1, 32), (2, 64), (1, 64), (2, 128), (1, 128), (1, 128),
                     (1, 128), (1, 128), (1, 128), (2, 256), (1, 256))  # alpha = 1 widths / 4


def mobilenet_v1_vww(alpha: float = 0.25, size: int = 96) -> graph_lib.Graph:
  """MobileNetV1 (alpha 0.25) visual wake words, 96x96x3, 2 classes."""
  b = graph_lib.GraphBuilder('vww')
  x = b.input((size, size, 3))
  x = b.conv2d(x, int(32 * alpha), 3, 2, folded_bn=True, activation='relu', name='conv1')
  for i, (stride, filters) in enumerate(_MOBILENET_BLOCKS):
    x = b.depthwise_conv2d(x, 3, stride, folded_bn=True, activation='relu', name=f'block{i}/dw')
    x = b.conv2d(x, int(filters * 4 * alpha), 1, folded_bn=True, activation='relu',
                 name=f'block{i}/pw')
  h, w, _ = b.shape(x)
  x = b.pool(x, 'avg', (h, w), (h, w), 'valid', name='avg_pool')
  x = b.reshape(x, name='flatten')
  x = b.dense(x, 2, name='fc')
  b.activation(x, 'softmax', name='softmax')
  return b.build()


def fc_autoencoder_ad() -> graph_lib.Graph:
  """Fully connected autoencoder for ToyCar anomaly detection, 640-d input (64 mels x 5)."""
  b = graph_lib.GraphBuilder('ad')
  x = b.input((1, 1, 640))
  for i, units in enumerate((128, 128, 128, 128, 8, 128, 128, 128, 128)):
    x = b.dense(x, units, folded_bn=True, activation='relu', name=f'dense{i}')
  b.dense(x, 640, name='output')
  return b.build()


MODELS: dict[str, Callable[[], graph_lib.Graph]] = {
    'ic': resnet8_ic, 'kws': ds_cnn_kws, 'vww': mobilenet_v1_vww, 'ad': fc_autoencoder_ad}
NAMES = tuple(MODELS)

# Size of the int8 .tflite files in mlcommons/tiny (reference_models.md), for flash checks.
TFLITE_BYTES = {'ic': 98_496, 'kws': 53_936, 'ad': 276_976}


def get_model(name: str) -> graph_lib.Graph:
  key = name.strip().lower()
  if key not in MODELS:
    raise ValueError(f'unknown MLPerf Tiny model {name!r}; valid names: {", ".join(NAMES)}')
  return MODELS[key]()


def parse_archs(archs: str | Sequence[str] | None) -> list[str]:
  """'ic,kws' / ['ic'] / None (= all) -> validated names."""
  if archs is None or archs == '' or archs == 'all':
    return list(NAMES)
  names = archs.split(',') if isinstance(archs, str) else list(archs)
  return [get_model(n).name for n in names]


def graphs(archs=None) -> dict[str, graph_lib.Graph]:
  return {n: get_model(n) for n in parse_archs(archs)}


def cost_rows(archs=None, device='stm32f746', runtime='cmsis-nn', cycles=None) -> list[dict]:
  import hardware
  return hardware.cost_rows(graphs(archs), device, runtime, cycles)

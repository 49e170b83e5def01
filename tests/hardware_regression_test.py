"""REGRESSION CHECK of unchanged behaviour, not a result: MCU latency/energy predictions.

The reference numbers below were computed with the code at commit 1f7df36 (before the richer
opt-in latency features for the NB201 CPU validation were added), for three NB201 archs, the four
MLPerf Tiny reference models and three tinycnn archs on five (device, runtime) catalog pairs,
plus one soft NB201 mask.  They are not measurements and say nothing about accuracy; they only
guarantee that the catalog profiles (which running searches depend on) predict exactly what
they predicted before.
"""

import numpy as np
import pytest

import hardware
from search_spaces import mlperf_tiny
from search_spaces.nb201 import graph as nb201_graph
from search_spaces import tinycnn

ARCHS = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|'
         'nor_conv_3x3~2|',
         '|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|'
         'skip_connect~2|',
         '|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|')
SOFT_MASK = [[0.3, 0.45, 0.01, 0.0, 0.24], [0.14, 0.06, 0.06, 0.24, 0.5],
             [0.49, 0.0, 0.34, 0.01, 0.16], [0.14, 0.51, 0.06, 0.05, 0.24],
             [0.01, 0.04, 0.28, 0.21, 0.46], [0.09, 0.09, 0.39, 0.36, 0.07]]

# (device, runtime, graph; nb201:i = ARCHS[i]) -> (latency_ms, energy_mj), concrete_cost at 1f7df36
HARD = {
    ('stm32f746', 'cmsis-nn', 'nb201:0'): (1142.8588203703705, 377.14341072222226),
    ('stm32f746', 'cmsis-nn', 'nb201:1'): (92.9866351851852, 30.685589611111116),
    ('stm32f746', 'cmsis-nn', 'nb201:2'): (245.60556111111111, 81.04983516666667),
    ('stm32f746', 'cmsis-nn', 'mlperf:ic'): (64.37289814814815, 21.24305638888889),
    ('stm32f746', 'cmsis-nn', 'mlperf:kws'): (14.102627777777776, 4.653867166666666),
    ('stm32f746', 'cmsis-nn', 'mlperf:vww'): (39.75086851851852, 13.117786611111113),
    ('stm32f746', 'cmsis-nn', 'mlperf:ad'): (2.6704444444444446, 0.8812466666666666),
    ('stm32f746', 'cmsis-nn', 'tinycnn:f16k3-relu-max'): (2.819820370370371, 0.9305407222222224),
    ('stm32f746', 'cmsis-nn', 'tinycnn:f32k5-f32k3-relu-max'):
        (25.104657407407412, 8.284536944444445),
    ('stm32f746', 'cmsis-nn', 'tinycnn:f16k3-f16k5-swish-avg'):
        (11.53359814814815, 3.8060873888888893),
    ('nucleo-l4r5zi', 'tflm', 'nb201:0'): (12928.407480833333, 563.6785661643333),
    ('nucleo-l4r5zi', 'tflm', 'nb201:1'): (938.4888641666666, 40.91811447766667),
    ('nucleo-l4r5zi', 'tflm', 'nb201:2'): (2755.569380833333, 120.14282500433332),
    ('nucleo-l4r5zi', 'tflm', 'mlperf:ic'): (730.5397058333334, 31.85153117433334),
    ('nucleo-l4r5zi', 'tflm', 'mlperf:kws'): (152.3191625, 6.641115485),
    ('nucleo-l4r5zi', 'tflm', 'mlperf:vww'): (426.71415916666666, 18.604737339666666),
    ('nucleo-l4r5zi', 'tflm', 'mlperf:ad'): (12.456133333333334, 0.5430874133333334),
    ('nucleo-l4r5zi', 'tflm', 'tinycnn:f16k3-relu-max'): (28.264570833333334, 1.2323352883333334),
    ('nucleo-l4r5zi', 'tflm', 'tinycnn:f32k5-f32k3-relu-max'):
        (283.1804041666667, 12.346665621666666),
    ('nucleo-l4r5zi', 'tflm', 'tinycnn:f16k3-f16k5-swish-avg'):
        (125.78730416666667, 5.484326461666668),
    ('stm32u575', 'x-cube-ai', 'nb201:0'): (2507.3476605, 25.82568090315),
    ('stm32u575', 'x-cube-ai', 'nb201:1'): (192.940988, 1.9872921764000002),
    ('stm32u575', 'x-cube-ai', 'nb201:2'): (536.2589055, 5.52346672665),
    ('stm32u575', 'x-cube-ai', 'mlperf:ic'): (141.42420300000003, 1.4566692909000005),
    ('stm32u575', 'x-cube-ai', 'mlperf:kws'): (29.7522175, 0.30644784025),
    ('stm32u575', 'x-cube-ai', 'mlperf:vww'): (83.57729650000002, 0.8608461539500003),
    ('stm32u575', 'x-cube-ai', 'mlperf:ad'): (4.455955, 0.0458963365),
    ('stm32u575', 'x-cube-ai', 'tinycnn:f16k3-relu-max'):
        (5.8740000000000006, 0.060502200000000006),
    ('stm32u575', 'x-cube-ai', 'tinycnn:f32k5-f32k3-relu-max'):
        (55.04342500000001, 0.5669472775000002),
    ('stm32u575', 'x-cube-ai', 'tinycnn:f16k3-f16k5-swish-avg'): (24.84093, 0.255861579),
    ('rp2040', 'tinyengine', 'nb201:0'): (10019.206003007519, 791.5172742375939),
    ('rp2040', 'tinyengine', 'nb201:1'): (754.2963488721805, 59.589411560902256),
    ('rp2040', 'tinyengine', 'nb201:2'): (2145.0703037593985, 169.46055399699247),
    ('rp2040', 'tinyengine', 'mlperf:ic'): (566.5928421052631, 44.76083452631578),
    ('rp2040', 'tinyengine', 'mlperf:kws'): (115.3437954887218, 9.112159843609023),
    ('rp2040', 'tinyengine', 'mlperf:vww'): (324.91744962406017, 25.668478520300752),
    ('rp2040', 'tinyengine', 'mlperf:ad'): (16.041816541353384, 1.2673035067669174),
    ('rp2040', 'tinyengine', 'tinycnn:f16k3-relu-max'): (23.042646616541354, 1.820369082706767),
    ('rp2040', 'tinyengine', 'tinycnn:f32k5-f32k3-relu-max'):
        (220.04838496240603, 17.383822412030078),
    ('rp2040', 'tinyengine', 'tinycnn:f16k3-f16k5-swish-avg'):
        (97.7638015037594, 7.723340318796993),
    ('esp32-s3', 'cmsis-nn', 'nb201:0'): (942.9340991666667, 141.440114875),
    ('esp32-s3', 'cmsis-nn', 'nb201:1'): (81.48531583333332, 12.222797374999999),
    ('esp32-s3', 'cmsis-nn', 'nb201:2'): (203.58059916666664, 30.537089875),
    ('esp32-s3', 'cmsis-nn', 'mlperf:ic'): (52.97624583333333, 7.946436875),
    ('esp32-s3', 'cmsis-nn', 'mlperf:kws'): (11.8156875, 1.772353125),
    ('esp32-s3', 'cmsis-nn', 'mlperf:vww'): (33.35647916666667, 5.003471875),
    ('esp32-s3', 'cmsis-nn', 'mlperf:ad'): (2.4367466666666666, 0.365512),
    ('esp32-s3', 'cmsis-nn', 'tinycnn:f16k3-relu-max'): (2.400329166666667, 0.36004937500000006),
    ('esp32-s3', 'cmsis-nn', 'tinycnn:f32k5-f32k3-relu-max'): (20.688949166666667, 3.103342375),
    ('esp32-s3', 'cmsis-nn', 'tinycnn:f16k3-f16k5-swish-avg'):
        (9.723835833333334, 1.4585753750000001),
}

# (device, runtime) -> (latency_ms, energy_mj) of SOFT_MASK, nb201_graph.cost since adds take
# folded constant operands (ops on a node whose terms are all 'none'; graph.py): this mask's
# 'none' weights make fuzzy constant operands, +1.4% latency over commit 1f7df36's figures
# (216.243 / 2338.935 ms).  The concrete figures above are unchanged.
SOFT = {
    ('stm32f746', 'cmsis-nn'): (219.273681640625, 72.36032104492188),
    ('nucleo-l4r5zi', 'tflm'): (2353.023193359375, 102.5918197631836),
}


def _graph(name):
  kind, arch = name.split(':', 1)
  if kind == 'nb201':
    return nb201_graph.lower(ARCHS[int(arch)])
  return {'mlperf': mlperf_tiny.get_model, 'tinycnn': tinycnn.lower}[kind](arch)


def test_mcu_concrete_predictions_unchanged():
  graphs = {}
  for (device, runtime, name), (lat, energy) in HARD.items():
    g = graphs.setdefault(name, _graph(name))
    c = hardware.concrete_cost(g, device, runtime)
    assert float(c['latency_ms']) == pytest.approx(lat, rel=1e-9), (device, runtime, name)
    assert float(c['energy_mj']) == pytest.approx(energy, rel=1e-9), (device, runtime, name)


def test_mcu_soft_nb201_predictions_unchanged():
  for (device, runtime), (lat, energy) in SOFT.items():
    r = nb201_graph.cost(np.array(SOFT_MASK, np.float32), device=device, runtime=runtime)
    np.testing.assert_allclose(float(r['latency_ms']), lat, rtol=1e-5)
    np.testing.assert_allclose(float(r['energy_mj']), energy, rtol=1e-5)

"""Device catalog (datasheet numbers) and runtime profiles, selected by name from registries.

Latency coefficients are cycles per unit of each `graph.FEATURES` column and depend on the
(core, runtime) pair: `coefficients(device, runtime) = CORE_CYCLES[core] * runtime.cycle_scale`.
The core numbers are engineering estimates for CMSIS-NN-class int8 kernels (SIMD MACs on
Cortex-M4/M7/M33, none on M0+); the runtime scales say how far a kernel library is from that
(TFLM reference C loops are several times slower; code generators drop interpreter overhead).
They are priors: `latency.calibrate` fits them to measurements.

Power numbers are active run-mode supply current x supply voltage from the datasheet tables
(typical, CPU running from flash at max clock, peripherals off); sleep = a stop/dormant mode
with RAM retained.  They are typical values, not worst case.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np

from hardware import graph as graph_lib


@dataclasses.dataclass(frozen=True)
class Device:
  name: str
  core: str
  clock_mhz: float
  sram_kb: float
  flash_kb: float
  active_power_mw: float
  sleep_power_mw: float
  source: str


@dataclasses.dataclass(frozen=True)
class Runtime:
  name: str
  description: str
  cycle_scale: tuple[float, ...]     # multiplies the core's cycles per feature (graph.FEATURES)
  code_flash_bytes: int              # interpreter/kernels/generated code
  flash_bytes_per_kernel: int        # graph metadata per kernel call (flatbuffer op + tensors)
  quant_bytes_per_channel: int       # per-channel quantisation params stored in flash
  persistent_bytes_per_channel: int  # per-channel multipliers/shifts kept in RAM
  sram_overhead_bytes: int           # interpreter / tensor structs / stack headroom
  im2col: bool                       # kxk convs use an int16 im2col scratch buffer
  model_flash_bytes: int = 0         # fixed per-model metadata (e.g. a .tflite's header, op
                                     # codes, subgraph tables)
  # graph optimiser of the deployment toolchain (`graph.hard_activity`): fold ops whose input is
  # an all-absent (zero) sum, prune nodes that do not reach the output.  Every catalog runtime
  # does both; converters of desktop frameworks may not (see docs/hardware.md, NB201 latency).
  fold_constants: bool = True
  prune_dead: bool = True
  # common-subexpression elimination (`graph.duplicate_of`): equal parameter-free ops on the same
  # input run once.  Off for every catalog runtime (their predictions predate it); TorchScript
  # and ONNX Runtime have such a pass, and the Pi 5 TorchMobile/ONNX latencies show it
  # (docs/hardware.md, NB201 latency).  Latency/energy/MAC counts only: buffers and the arena are
  # planned as if every node ran.
  merge_duplicates: bool = False


def _devices(*items: Device) -> types.MappingProxyType:
  return types.MappingProxyType({d.name: d for d in items})


DEVICES = _devices(
    # ST DS10916 (STM32F745xx/F746xx) rev 8: 216 MHz, 320 KB SRAM (incl. 64 KB DTCM),
    # 1 MB flash; IDD run, all peripherals disabled, 216 MHz, ART+cache ~ 100 mA @ 3.3 V.
    Device('stm32f746', 'cortex-m7', 216, 320, 1024, 330.0, 1.0,
           'ST DS10916 STM32F746xx datasheet, run-mode IDD table'),
    # ST DS12110 (STM32H742/743/753/750) rev 8: 480 MHz, 1 MB RAM (864 KB user SRAM + TCM),
    # 2 MB flash; run mode ~ 263 uA/MHz typ at VOS0 -> ~ 125 mA @ 3.3 V.
    Device('stm32h743', 'cortex-m7', 480, 1024, 2048, 415.0, 2.0,
           'ST DS12110 STM32H743xI datasheet, run-mode IDD table'),
    # ST DS13195 (STM32H7A3xI/G) rev 6: 280 MHz, 1.4 MB SRAM, 2 MB flash; run mode
    # ~ 120 uA/MHz typ (SMPS) -> ~ 34 mA @ 3.3 V.
    Device('stm32h7a3', 'cortex-m7', 280, 1376, 2048, 111.0, 0.5,
           'ST DS13195 STM32H7A3xI/G datasheet, run-mode IDD table'),
    # ST DS12023 (STM32L4R5xx/L4S5xx) rev 6 and UM2179 (NUCLEO-L4R5ZI): 120 MHz, 640 KB SRAM,
    # 2 MB flash; run mode ~ 110 uA/MHz -> ~ 13 mA @ 3.3 V (MLPerf Tiny v0.5 reference energy
    # run measured ~ 41 mW average on this board).
    Device('nucleo-l4r5zi', 'cortex-m4', 120, 640, 2048, 43.6, 0.01,
           'ST DS12023 STM32L4R5xx datasheet, run-mode IDD table'),
    # ST DS13737 (STM32U575xx) rev 5: 160 MHz, 786 KB SRAM, 2 MB flash; run mode with SMPS
    # ~ 19.5 uA/MHz -> ~ 3.1 mA @ 3.3 V.
    Device('stm32u575', 'cortex-m33', 160, 786, 2048, 10.3, 0.01,
           'ST DS13737 STM32U575xx datasheet, run-mode IDD table (SMPS)'),
    # Nordic nRF52840 Product Specification v1.7: Cortex-M4F 64 MHz, 256 KB RAM, 1 MB flash;
    # CPU running CoreMark from flash, DC/DC, 3 V: 3.3 mA (52 uA/MHz); System ON idle ~ 3 uA.
    Device('nrf52840', 'cortex-m4', 64, 256, 1024, 9.9, 0.009,
           'Nordic nRF52840 Product Specification v1.7, CPU current section'),
    # Raspberry Pi RP2040 datasheet (build 2023): dual Cortex-M0+ 133 MHz, 264 KB SRAM, flash
    # external QSPI (2 MB on Raspberry Pi Pico); ~ 24 mA @ 3.3 V with one core busy; dormant
    # ~ 0.2 mA.
    Device('rp2040', 'cortex-m0plus', 133, 264, 2048, 79.0, 0.6,
           'Raspberry Pi RP2040 datasheet, power consumption section'),
    # Espressif ESP32-S3 Series Datasheet v1.8: dual Xtensa LX7 240 MHz, 512 KB SRAM, flash
    # external (8 MB on ESP32-S3-DevKitC-1 N8); CPU active, RF off ~ 40-50 mA @ 3.3 V;
    # light sleep ~ 0.24 mA.
    Device('esp32-s3', 'xtensa-lx7', 240, 512, 8192, 150.0, 0.8,
           'Espressif ESP32-S3 Series Datasheet v1.8, current consumption section'),
)

_F = graph_lib.FEATURES


def _per_feature(**kw) -> tuple[float, ...]:
  unknown = set(kw) - set(_F)
  if unknown:
    raise ValueError(f'unknown features {sorted(unknown)}')
  return tuple(float(kw[f]) for f in _F)


# Cycles per feature unit for CMSIS-NN-class int8 kernels on each core (engineering priors).
CORE_CYCLES = types.MappingProxyType({
    'cortex-m0plus': _per_feature(conv_macs=8.0, pointwise_macs=7.5, depthwise_macs=10.0,
                                  dense_macs=8.0, pool_reads=3.0, elementwise_ops=6.0,
                                  activation_bytes=1.0, weight_bytes=1.0, kernel_calls=3000,
                                  inference=20000),
    'cortex-m4': _per_feature(conv_macs=2.0, pointwise_macs=1.8, depthwise_macs=3.5,
                              dense_macs=2.5, pool_reads=1.5, elementwise_ops=3.0,
                              activation_bytes=0.25, weight_bytes=0.5, kernel_calls=1500,
                              inference=10000),
    'cortex-m33': _per_feature(conv_macs=2.0, pointwise_macs=1.8, depthwise_macs=3.5,
                               dense_macs=2.5, pool_reads=1.5, elementwise_ops=3.0,
                               activation_bytes=0.25, weight_bytes=0.5, kernel_calls=1500,
                               inference=10000),
    'cortex-m7': _per_feature(conv_macs=1.1, pointwise_macs=1.0, depthwise_macs=2.0,
                              dense_macs=1.6, pool_reads=1.0, elementwise_ops=2.0,
                              activation_bytes=0.2, weight_bytes=0.5, kernel_calls=1000,
                              inference=8000),
    'xtensa-lx7': _per_feature(conv_macs=1.0, pointwise_macs=0.9, depthwise_macs=2.0,
                               dense_macs=1.5, pool_reads=1.2, elementwise_ops=2.5,
                               activation_bytes=0.3, weight_bytes=0.6, kernel_calls=1500,
                               inference=10000),
})

# Cycle scales of a code generator without an interpreter (TinyEngine-like priors).
_CODE_GENERATOR_SCALE = _per_feature(conv_macs=0.75, pointwise_macs=0.75, depthwise_macs=0.6,
                                     dense_macs=0.9, pool_reads=0.8, elementwise_ops=0.8,
                                     activation_bytes=0.8, weight_bytes=0.8, kernel_calls=0.2,
                                     inference=0.3)

# A .tflite's bytes beyond int8 weights and int32 biases, least squares over 16 exported NB201
# models (C 4/8/16, N 1/2; residuals within 2.7% of the file): 28 bytes per quantized channel
# (the weight and the bias tensor each carry a float32 scale and an int64 zero point per
# channel, plus vector headers), 196 per kernel call (operator, output tensor with its name,
# shape and quantization), 3,700 per model. Held-out trained C=16 N=5 archs 9 and 6111: -1.4%
# and +0.1% of the file (docs/deploy.md, Flash).
_TFLITE_FLASH = dict(flash_bytes_per_kernel=196, quant_bytes_per_channel=28,
                     model_flash_bytes=3_700)

RUNTIMES = types.MappingProxyType({r.name: r for r in (
    Runtime('tflm', 'TensorFlow Lite Micro, portable reference kernels (plain C loops)',
            _per_feature(conv_macs=3.5, pointwise_macs=3.5, depthwise_macs=3.0, dense_macs=2.0,
                         pool_reads=1.5, elementwise_ops=2.0, activation_bytes=1.0,
                         weight_bytes=1.0, kernel_calls=1.5, inference=1.5),
            code_flash_bytes=60_000, **_TFLITE_FLASH,
            persistent_bytes_per_channel=8, sram_overhead_bytes=6_000, im2col=False),
    Runtime('cmsis-nn', 'TensorFlow Lite Micro with CMSIS-NN optimized int8 kernels',
            _per_feature(conv_macs=1, pointwise_macs=1, depthwise_macs=1, dense_macs=1,
                         pool_reads=1, elementwise_ops=1, activation_bytes=1, weight_bytes=1,
                         kernel_calls=1, inference=1),
            code_flash_bytes=80_000, **_TFLITE_FLASH,
            persistent_bytes_per_channel=8, sram_overhead_bytes=6_000, im2col=True),
    Runtime('x-cube-ai', 'ST X-CUBE-AI / STM32Cube.AI generated C code with its int8 library',
            _per_feature(conv_macs=0.9, pointwise_macs=0.9, depthwise_macs=0.8, dense_macs=0.9,
                         pool_reads=0.8, elementwise_ops=0.8, activation_bytes=0.8,
                         weight_bytes=0.8, kernel_calls=0.3, inference=0.5),
            code_flash_bytes=30_000, flash_bytes_per_kernel=120, quant_bytes_per_channel=8,
            persistent_bytes_per_channel=0, sram_overhead_bytes=2_000, im2col=True),
    Runtime('tinyengine', 'TinyEngine-like code generator (MCUNet): specialised kernels, '
            'in-place depthwise, no interpreter',
            _CODE_GENERATOR_SCALE,
            code_flash_bytes=20_000, flash_bytes_per_kernel=60, quant_bytes_per_channel=8,
            persistent_bytes_per_channel=0, sram_overhead_bytes=1_000, im2col=True),
    # This project's generated C (`deploy.c_source`, --experiment=export --c_source). Sizes are
    # read off one Cortex-M4 -O2 build's symbol table (arm-none-eabi-nm, a C=4 N=1 model of 52
    # layers, docs/deploy.md), not fitted to the archs they are checked on: kernels, startup,
    # semihosting and libc 4.1 kB of .text; per layer a 45 B call in zn_invoke and a 31 B const
    # descriptor; per output channel an int32 multiplier and shift. Latency scales are
    # TinyEngine's priors (a code generator), not calibrated.
    Runtime('zeronas-c', "this project's generated C99 (deploy/c): int8 kernels, static "
            'arena laid out by the TFLM planner, no interpreter',
            _CODE_GENERATOR_SCALE,
            code_flash_bytes=4_100, flash_bytes_per_kernel=76, quant_bytes_per_channel=8,
            persistent_bytes_per_channel=0, sram_overhead_bytes=400, im2col=True),
)})


def _lookup(registry, name: str, kind: str):
  key = str(name).strip().lower()
  if key not in registry:
    raise ValueError(f'unknown {kind} {name!r}; valid {kind}s: {", ".join(sorted(registry))}')
  return registry[key]


def get_device(name) -> Device:
  """Device by name (a Device passes through); ValueError lists the valid names."""
  return name if isinstance(name, Device) else _lookup(DEVICES, name, 'device')


def get_runtime(name) -> Runtime:
  """Runtime by name (a Runtime passes through); ValueError lists the valid names."""
  return name if isinstance(name, Runtime) else _lookup(RUNTIMES, name, 'runtime')


def list_devices() -> tuple[str, ...]:
  return tuple(DEVICES)


def list_runtimes() -> tuple[str, ...]:
  return tuple(RUNTIMES)


def coefficients(device, runtime) -> np.ndarray:
  """Prior cycles per unit of each latency feature for a (device, runtime) pair."""
  device, runtime = get_device(device), get_runtime(runtime)
  return np.asarray(CORE_CYCLES[device.core]) * np.asarray(runtime.cycle_scale)


def list_devices_table() -> str:
  """The catalog as a fixed-width text table (for --list_devices)."""
  header = (f'{"device":<15}{"core":<15}{"MHz":>6}{"SRAM KB":>9}{"flash KB":>10}'
            f'{"active mW":>11}{"sleep mW":>10}  source')
  rows = [header, '-' * len(header)]
  for d in DEVICES.values():
    rows.append(f'{d.name:<15}{d.core:<15}{d.clock_mhz:>6g}{d.sram_kb:>9g}{d.flash_kb:>10g}'
                f'{d.active_power_mw:>11g}{d.sleep_power_mw:>10g}  {d.source}')
  rows.append('')
  rows.append('runtimes: ' + ', '.join(f'{r.name} ({r.description})' for r in RUNTIMES.values()))
  return '\n'.join(rows)

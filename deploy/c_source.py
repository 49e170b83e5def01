"""A self-contained C99 project for an exported int8 model, for any Cortex-M (or a host).

`generate(model_bytes, out_dir)` reads the int8 `.tflite` that `deploy.graph_tflite` writes (the
graph TFLite Micro runs) and writes:

  * model.c / model.h: every int8 weight, int32 bias and requantization multiplier as `const`
    arrays (flash), one static activation arena (SRAM) laid out by the hardware model's TFLM
    planner (`hardware.memory.tflm_greedy_plan`: the same offsets TFLite Micro would use), and
    `zn_invoke`, one kernel call per TFLite operator with a counter reading around each;
  * the runtime, copied verbatim from `deploy/c/`: int8 kernels written for this project
    (zn_kernels.c: conv k x k, pointwise, depthwise k x k and its 1x1 per-channel affine,
    average and max pool, ADD with requantization, dense, ReLU, pad; fused ReLU / ReLU6 as
    TFLite Micro's int8 clamp), a `main` that reads inputs and writes logits, and two
    platforms: QEMU's mps2 boards over semihosting, and a host build;
  * a Makefile with the same compiler flags `deploy.mcu.build` uses, and layers.json (per layer:
    op, output tensor, MACs).

Why from the .tflite and not from the network: it is the graph already verified bit for bit in
TFLite Micro, so the C needs no other walk of the network, and any model with these builtins
works: every space's export (`deploy.graph_tflite`: SAME and VALID convs and depthwise convs at
stride 1 or 2, PyTorch's symmetric padding as PAD + VALID (NB201), per-channel affines, ReLU,
ADD chains with constant operands, max / average / global pools, fused ReLU and ReLU6).
The requantization multipliers are derived from the flatbuffer's float32 scales exactly as TFLite
Micro derives them (double precision, `quant.quantize_multiplier`), so outputs equal TFLM's and
the integer reference's bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil

import numpy as np

from engine.quant import quant
from hardware import memory

RUNTIME_DIR = pathlib.Path(__file__).parent / 'c'
RUNTIME_FILES = ('zn_kernels.h', 'zn_kernels.c', 'zn_platform.h', 'platform_qemu.c',
                 'platform_host.c', 'main.c', 'mps2.ld')
ADD_LEFT_SHIFT = 20


class UnsupportedModel(ValueError):
  """A .tflite this generator has no kernel for; one line naming what."""


@dataclasses.dataclass
class Layer:
  index: int
  op: str            # the TFLite builtin
  kernel: str        # the zn_ function
  output: str        # output tensor name
  macs: int          # multiply-accumulates (conv, dense, affine); window reads (pool); elements
  out_shape: tuple
  detail: dict


@dataclasses.dataclass
class Project:
  """What `generate` wrote."""
  out_dir: pathlib.Path
  layers: list[Layer]
  arena_bytes: int
  offsets: dict[str, int]           # activation tensor -> arena offset
  input_bytes: int
  output_bytes: int
  col_elements: int                 # the conv kernels' int16 im2col row (static scratch)
  const_bytes: dict[str, int]       # weights / biases / multipliers / constants, bytes


def _schema():
  from deploy import tflite
  return tflite.schema()


def _c_array(ctype, name, values, per_line=24) -> str:
  values = np.asarray(values).reshape(-1)
  body = ',\n'.join('  ' + ', '.join(str(int(v)) for v in values[i:i + per_line])
                    for i in range(0, len(values), per_line))
  return f'static const {ctype} {name}[{len(values)}] __attribute__((aligned(4))) = {{\n{body}\n}};\n'


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mult, shift = quant.quantize_multiplier(np.asarray(real, np.float64))
  return mult.astype(np.int64), shift.astype(np.int64)


def _tf_round(x: float) -> int:
  """TfLiteRound (std::round): half away from zero."""
  return int(math.copysign(math.floor(abs(x) + 0.5), x))


def activation_range(code: int, out_scale: float, out_zp: int) -> tuple[int, int] | None:
  """The int8 clamp of a fused activation, as TFLite Micro's CalculateActivationRangeQuantized
  computes it (float32 division, rounded half away from zero, within [-128, 127]); None if the
  activation is not a clamp (TANH, SIGN_BIT)."""
  s = np.float32(out_scale)
  q = lambda f: out_zp + _tf_round(float(np.float32(f) / s))
  if code == 0:    # NONE
    return -128, 127
  if code == 1:    # RELU
    return max(-128, q(0.0)), 127
  if code == 2:    # RELU_N1_TO_1
    return max(-128, q(-1.0)), min(127, q(1.0))
  if code == 3:    # RELU6
    return max(-128, q(0.0)), min(127, q(6.0))
  return None


def _padding(same: bool, size: int, out: int, k: int, stride: int) -> int | None:
  """Padding before the first row (column) as TFLite computes it: SAME pads
  max((out - 1) * stride + k - size, 0) in total, the smaller half before (the rest after is the
  kernels' bounds check); VALID pads nothing. None when `out` is not the size TFLite gives."""
  want = -(-size // stride) if same else (size - k) // stride + 1
  if out != want:
    return None
  return max((out - 1) * stride + k - size, 0) // 2 if same else 0


def generate(model: bytes, out_dir, description: str = '') -> Project:
  """Writes the C project for `model` (a .tflite from `deploy.graph_tflite`) into out_dir."""
  s = _schema()
  m = s.ModelT.InitFromPackedBuf(model, 0)
  if len(m.subgraphs) != 1:
    raise UnsupportedModel('the model has more than one subgraph; export a single-graph model')
  g = m.subgraphs[0]
  names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith('_')}
  opnames = [names[c.builtinCode] for c in m.operatorCodes]
  tensors = g.tensors

  def data(t):
    b = m.buffers[tensors[t].buffer].data
    if b is None or len(b) == 0:
      return None
    dtype = {s.TensorType.INT8: np.int8, s.TensorType.INT32: np.int32}[tensors[t].type]
    return np.frombuffer(bytes(bytearray(b)), dtype).reshape(tensors[t].shape)

  def qp(t):
    q = tensors[t].quantization
    return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)

  def scale(t):
    return float(qp(t)[0][0])

  def zp(t):
    return int(qp(t)[1][0])

  def name(t):
    n = tensors[t].name
    return n.decode() if isinstance(n, bytes) else str(n)

  def shape(t):
    return tuple(int(d) for d in tensors[t].shape)

  def act(opt, out_t):
    """`act_min, act_max` of the op's fused activation, for the parameter block."""
    code = getattr(opt, 'fusedActivationFunction', 0) or 0
    r = activation_range(code, scale(out_t), zp(out_t))
    if r is None:
      names = {v: k for k, v in vars(s.ActivationFunctionType).items() if not k.startswith('_')}
      raise UnsupportedModel(f'{name(out_t)}: fused activation {names.get(code, code)} is not '
                             f'generated (ReLU, ReLU6 and ReLU_N1_TO_1 are)')
    return f'{r[0]}, {r[1]}'

  def pads(opt, x_t, out_t, k, stride):
    """(pad_h, pad_w): the padding before the map, TFLite's SAME or VALID."""
    (_, ih, iw, _), (_, oh, ow, _) = shape(x_t), shape(out_t)
    same = opt.padding == s.Padding.SAME
    ph, pw = _padding(same, ih, oh, k, stride), _padding(same, iw, ow, k, stride)
    if ph is None or pw is None:
      raise UnsupportedModel(f'{name(out_t)}: output {oh}x{ow} is not what '
                             f'{"SAME" if same else "VALID"} padding gives for a {ih}x{iw} input, '
                             f'kernel {k}, stride {stride}')
    return ph, pw

  # ------------------------------------------------------------------ the arena, TFLM's plan
  live = [t for t in range(len(tensors)) if data(t) is None]
  first = {t: None for t in live}
  last = {t: None for t in live}
  for t in g.inputs:
    first[t] = 0
  for i, op in enumerate(g.operators):
    for t in op.inputs:
      if t in last:
        last[t] = i
    for t in op.outputs:
      first[t] = i if first[t] is None else first[t]
  for t in g.outputs:
    last[t] = len(g.operators) - 1
  for t in live:
    if first[t] is None or last[t] is None:
      raise UnsupportedModel(f'tensor {name(t)!r} is never written or never read')
  size_of = {t: int(np.prod(shape(t))) for t in live}
  buffers = memory.TflmBuffers(np.array([size_of[t] for t in live]),
                               np.array([first[t] for t in live]),
                               np.array([last[t] for t in live]), len(g.operators))
  offs, arena = memory.tflm_greedy_plan(buffers)
  offset = {t: int(o) for t, o in zip(live, offs)}

  def ptr(t):
    if t in offset:
      return f'zn_arena + {offset[t]}'
    return consts[t]

  consts: dict[int, str] = {}
  arrays: list[str] = []
  params: list[str] = []
  calls: list[str] = []
  layers: list[Layer] = []
  const_bytes = {'weights': 0, 'biases': 0, 'multipliers': 0, 'constants': 0}
  col = 1

  def const_tensor(t):
    if t not in consts:
      consts[t] = f'c{t}'
      v = data(t)
      arrays.append(_c_array('int8_t', consts[t], v))
      const_bytes['constants'] += v.size
    return consts[t]

  def weight_arrays(i, op, in_t, out_t):
    """Flash arrays of a layer: int8 weights, int32 bias, and per-channel multipliers derived as
    TFLite Micro does: double(input scale) * double(weight scale) / double(output scale)."""
    w, b = data(op.inputs[1]), data(op.inputs[2])
    w_scale = qp(op.inputs[1])[0].astype(np.float64)
    real = np.float64(np.float32(scale(in_t))) * w_scale / np.float64(np.float32(scale(out_t)))
    mult, sh = _multipliers(real)
    arrays.append(_c_array('int8_t', f'w{i}', w))
    arrays.append(_c_array('int32_t', f'b{i}', b))
    arrays.append(_c_array('int32_t', f'm{i}', mult))
    arrays.append(_c_array('int32_t', f's{i}', sh))
    const_bytes['weights'] += w.size
    const_bytes['biases'] += 4 * b.size
    const_bytes['multipliers'] += 8 * mult.size
    return f'w{i}, b{i}, m{i}, s{i}'

  for i, op in enumerate(g.operators):
    kind = opnames[op.opcodeIndex]
    ins, out = list(op.inputs), op.outputs[0]
    x = ins[0]
    osh = shape(out)
    opt = op.builtinOptions
    detail = {}
    if kind == 'CONV_2D':
      w, b = data(ins[1]), data(ins[2])
      oc, kh, kw, ic = w.shape
      if (kh != kw or opt.strideW != opt.strideH or opt.dilationWFactor != 1
          or opt.dilationHFactor != 1):
        raise UnsupportedModel(f'{name(out)}: only square, undilated convs are generated')
      _, ih, iw, _ = shape(x)
      ph, pw = pads(opt, x, out, kh, opt.strideW)
      params.append(f'static const zn_conv_t L{i} = {{{weight_arrays(i, op, x, out)}, '
                    f'{ih}, {iw}, {ic}, {osh[1]}, {osh[2]}, {oc}, {kh}, {opt.strideW}, {ph}, '
                    f'{pw}, {-zp(x)}, {zp(out)}, {act(opt, out)}}};')
      calls.append(f'zn_conv(&L{i}, {ptr(x)}, {ptr(out)}, zn_col);')
      col = max(col, kh * kw * ic)
      macs = osh[1] * osh[2] * oc * kh * kw * ic
      kname = 'conv' if kh > 1 else 'pointwise'
      detail = dict(kernel_size=kh, stride=opt.strideW, in_channels=ic, out_channels=oc)
    elif kind == 'DEPTHWISE_CONV_2D':
      w, b = data(ins[1]), data(ins[2])
      _, kh, kw, c = w.shape
      _, ih, iw, ic = shape(x)
      if (w.shape[0] != 1 or kh != kw or opt.strideW != opt.strideH or opt.dilationWFactor != 1
          or opt.dilationHFactor != 1 or ic != c or osh[3] != c):
        raise UnsupportedModel(f'{name(out)}: only square, undilated depthwise convs with depth '
                               f'multiplier 1 are generated')
      ph, pw = pads(opt, x, out, kh, opt.strideW)
      if kh == 1 and opt.strideW == 1:  # a per-channel affine (NB201's head BN)
        pixels = int(np.prod(osh[:-1]))
        params.append(f'static const zn_affine_t L{i} = {{{weight_arrays(i, op, x, out)}, '
                      f'{pixels}, {c}, {-zp(x)}, {zp(out)}, {act(opt, out)}}};')
        calls.append(f'zn_affine(&L{i}, {ptr(x)}, {ptr(out)});')
        macs, kname = pixels * c, 'affine'
      else:
        params.append(f'static const zn_depthwise_t L{i} = {{{weight_arrays(i, op, x, out)}, '
                      f'{ih}, {iw}, {c}, {osh[1]}, {osh[2]}, {kh}, {opt.strideW}, {ph}, {pw}, '
                      f'{-zp(x)}, {zp(out)}, {act(opt, out)}}};')
        calls.append(f'zn_depthwise(&L{i}, {ptr(x)}, {ptr(out)});')
        macs, kname = osh[1] * osh[2] * c * kh * kw, 'depthwise'
        detail = dict(kernel_size=kh, stride=opt.strideW, channels=c)
    elif kind == 'FULLY_CONNECTED':
      w, b = data(ins[1]), data(ins[2])
      params.append(f'static const zn_dense_t L{i} = {{{weight_arrays(i, op, x, out)}, '
                    f'{w.shape[1]}, {w.shape[0]}, {-zp(x)}, {zp(out)}, {act(opt, out)}}};')
      calls.append(f'zn_dense(&L{i}, {ptr(x)}, {ptr(out)});')
      macs, kname = int(w.size), 'dense'
    elif kind == 'ADD':
      a, b = ins
      for t in (a, b):
        if t not in offset:
          const_tensor(t)
      n = int(np.prod(osh))
      channels = osh[-1]
      counts = []
      for t in (a, b):
        cnt = int(np.prod(shape(t)))
        if cnt not in (n, channels):
          raise UnsupportedModel(f'{name(out)}: ADD broadcasts only per channel')
        counts.append(cnt)
      sa, sb, so = (np.float64(np.float32(scale(t))) for t in (a, b, out))
      twice_max = 2 * max(sa, sb)
      (ma,), (sha,) = _multipliers([sa / twice_max])
      (mb,), (shb,) = _multipliers([sb / twice_max])
      (mo,), (sho,) = _multipliers([twice_max / ((1 << ADD_LEFT_SHIFT) * so)])
      params.append(f'static const zn_add_t L{i} = {{{n}, {channels}, {counts[0]}, {counts[1]}, '
                    f'{-zp(a)}, {-zp(b)}, {zp(out)}, {ADD_LEFT_SHIFT}, {ma}, {sha}, {mb}, {shb}, '
                    f'{mo}, {sho}, {act(opt, out)}}};')
      calls.append(f'zn_add(&L{i}, {ptr(a)}, {ptr(b)}, {ptr(out)});')
      macs, kname = n, 'add'
    elif kind in ('AVERAGE_POOL_2D', 'MAX_POOL_2D'):
      if (scale(x), zp(x)) != (scale(out), zp(out)):
        raise UnsupportedModel(f'{name(out)}: pooling must keep its quantization')
      _, ih, iw, c = shape(x)
      k = opt.filterHeight
      if k != opt.filterWidth or opt.strideW != opt.strideH:
        raise UnsupportedModel(f'{name(out)}: only square pooling windows and strides')
      ph, pw = pads(opt, x, out, k, opt.strideW)
      params.append(f'static const zn_pool_t L{i} = {{{ih}, {iw}, {c}, {osh[1]}, {osh[2]}, {k}, '
                    f'{opt.strideW}, {ph}, {pw}, {act(opt, out)}}};')
      average = kind == 'AVERAGE_POOL_2D'
      calls.append(f'zn_{"avg" if average else "max"}_pool(&L{i}, {ptr(x)}, {ptr(out)});')
      macs = int(np.prod(osh)) * k * k
      if average:
        kname = 'global_pool' if osh[1] == 1 and ih > 1 else 'pool'
      else:
        kname = 'max_pool'
      detail = dict(kernel_size=k, stride=opt.strideW)
    elif kind == 'RELU':
      if (scale(x), zp(x)) != (scale(out), zp(out)):
        raise UnsupportedModel(f'{name(out)}: ReLU must keep its quantization')
      n = int(np.prod(osh))
      calls.append(f'zn_relu({n}, {zp(x)}, {ptr(x)}, {ptr(out)});')
      macs, kname = n, 'relu'
    elif kind == 'PAD':
      p = data(ins[1])
      _, ih, iw, c = shape(x)
      pp = int(p[1, 0])
      if not (np.all(p[0] == 0) and np.all(p[3] == 0) and np.all(p[1:3] == pp)):
        raise UnsupportedModel(f'{name(out)}: only symmetric spatial PAD is generated')
      params.append(f'static const zn_pad_t L{i} = {{{ih}, {iw}, {c}, {pp}, {zp(out)}}};')
      calls.append(f'zn_pad(&L{i}, {ptr(x)}, {ptr(out)});')
      macs, kname = int(np.prod(osh)), 'pad'
    elif kind == 'RESHAPE':
      n = int(np.prod(osh))
      calls.append(f'zn_copy({n}, {ptr(x)}, {ptr(out)});')
      macs, kname = n, 'copy'
    else:
      raise UnsupportedModel(f'no C kernel for TFLite builtin {kind}')
    layers.append(Layer(i, kind, kname, name(out), int(macs), osh, detail))

  (x_in,), (y_out,) = g.inputs, g.outputs
  in_bytes, out_bytes = size_of[x_in], size_of[y_out]
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for f in RUNTIME_FILES:
    shutil.copyfile(RUNTIME_DIR / f, out_dir / f)
  header = f"""/* Generated by zeronas-mcu (deploy/c_source.py) from model.tflite. {description} */
#ifndef ZN_MODEL_H
#define ZN_MODEL_H
#include <stdint.h>
#define ZN_NUM_LAYERS {len(layers)}
#define ZN_ARENA_BYTES {arena}
#define ZN_INPUT_BYTES {in_bytes}   /* int8 {list(shape(x_in))}, scale {scale(x_in):.9g}, zero point {zp(x_in)} */
#define ZN_OUTPUT_BYTES {out_bytes}  /* int8 {list(shape(y_out))}, scale {scale(y_out):.9g}, zero point {zp(y_out)} */
int8_t *zn_input(void);
const int8_t *zn_output(void);
/* Runs every layer; marks[i] = zn_counter() before layer i, marks[ZN_NUM_LAYERS] after the last
 * (marks may be 0 when not wanted). */
void zn_invoke(uint32_t *marks);
#endif
"""
  lines = [f'/* Generated by zeronas-mcu (deploy/c_source.py) from model.tflite. {description}',
           f' * {len(layers)} layers; arena {arena} bytes (TFLite Micro\'s greedy plan). */',
           '#include "model.h"', '#include "zn_kernels.h"', '',
           '/* activations: one arena, offsets from hardware.memory.tflm_greedy_plan */',
           'static int8_t zn_arena[ZN_ARENA_BYTES] __attribute__((aligned(16)));',
           f'static int16_t zn_col[{col + 3 & ~3}] __attribute__((aligned(4)));  /* im2col row */',
           '', *arrays, *params, '',
           f'int8_t *zn_input(void) {{ return zn_arena + {offset[x_in]}; }}',
           f'const int8_t *zn_output(void) {{ return zn_arena + {offset[y_out]}; }}', '',
           '#define MARK(i) do { if (marks) marks[i] = zn_counter(); } while (0)',
           'void zn_invoke(uint32_t *marks) {']
  for i, (c, layer) in enumerate(zip(calls, layers)):
    lines.append(f'  MARK({i}); {c}  /* {layer.op} -> {layer.output} */')
  lines += [f'  MARK({len(layers)});', '}', '']
  (out_dir / 'model.h').write_text(header)
  (out_dir / 'model.c').write_text('\n'.join(lines))
  from deploy import mcu
  (out_dir / 'Makefile').write_text(mcu.makefile())
  project = Project(out_dir, layers, arena, {name(t): offset[t] for t in live},
                    in_bytes, out_bytes, col + 3 & ~3, const_bytes)
  (out_dir / 'layers.json').write_text(json.dumps(
      {'arena_bytes': arena, 'input_bytes': in_bytes, 'output_bytes': out_bytes,
       'const_bytes': const_bytes, 'offsets': project.offsets,
       'layers': [dataclasses.asdict(layer) for layer in layers]}, indent=1))
  return project

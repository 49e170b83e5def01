"""An int8 TFLite flatbuffer, written op by op: the writer of the exporter of every space's
lowered graph (`deploy.graph_tflite`).

Why written out, not converted: the TFLite converter re-derives every scale from a float model
(and its own calibration), so its int8 model would not be the one QAT trained, and the outputs
would not equal the integer reference bit for bit. An exporter hands `ModelBuilder` every scale,
zero point, int8 weight and int32 bias its integer reference computes with; TFLite derives the
same requantization multipliers from the same float32 scales. The schema is TFLite's own
generated object API (`schema_py_generated`, shipped with `tflite-micro`), packed with
`flatbuffers`.
"""
from __future__ import annotations

import dataclasses

import numpy as np



def schema():
  try:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
  except ImportError as err:  # pragma: no cover - the [deploy] extra installs it
    raise ImportError('export needs the tflite-micro package: pip install -e ".[deploy]"') from err
  return schema


@dataclasses.dataclass
class _Tensor:
  shape: tuple
  dtype: str                     # 'int8' | 'int32'
  scale: np.ndarray
  zero_point: np.ndarray
  name: str
  data: np.ndarray | None = None
  quantized_dimension: int = 0


class ModelBuilder:
  """Tensors, constant buffers and operators of one subgraph."""

  def __init__(self):
    self.tensors: list[_Tensor] = []
    self.ops: list[tuple[str, list[int], list[int], dict]] = []

  def tensor(self, shape, scale, zero_point, name, data=None, dtype='int8', axis=0) -> int:
    self.tensors.append(_Tensor(tuple(int(d) for d in shape), dtype,
                                np.atleast_1d(np.asarray(scale, np.float32)),
                                np.atleast_1d(np.asarray(zero_point, np.int64)), name, data, axis))
    return len(self.tensors) - 1

  def op(self, kind, inputs, outputs, **options):
    self.ops.append((kind, list(inputs), list(outputs), options))

  def prune(self, inputs, outputs):
    """Drops ops whose results never reach an output (an NB201 node whose outgoing edges are
    all `none` is computed by the walk, but nothing reads it; the hardware lowering drops it
    too) and the tensors no kept op uses; returns the remapped (inputs, outputs)."""
    needed = set(outputs)
    kept = []
    for op in reversed(self.ops):
      if any(t in needed for t in op[2]):
        kept.append(op)
        needed.update(t for t in op[1] if t >= 0)
    kept.reverse()
    used = sorted(set(inputs) | set(outputs) | {t for _, ins, outs, _ in kept
                                                 for t in ins + outs if t >= 0})
    remap = {old: new for new, old in enumerate(used)}
    self.tensors = [self.tensors[t] for t in used]
    self.ops = [(k, [remap.get(t, -1) for t in ins], [remap[t] for t in outs], o)
                for k, ins, outs, o in kept]
    return [remap[t] for t in inputs], [remap[t] for t in outputs]

  def pack(self, inputs, outputs, description) -> bytes:
    import flatbuffers
    s = schema()
    inputs, outputs = self.prune(inputs, outputs)
    kinds = sorted({k for k, *_ in self.ops})
    codes = []
    for k in kinds:
      code = getattr(s.BuiltinOperator, k)
      codes.append(s.OperatorCodeT())
      codes[-1].builtinCode = code
      codes[-1].deprecatedBuiltinCode = min(code, 127)
      codes[-1].version = _OP_VERSIONS.get(k, 1)
    buffers = [s.BufferT()]  # buffer 0: the empty buffer of every non-constant tensor
    tensors = []
    for t in self.tensors:
      tt = s.TensorT()
      tt.shape = list(t.shape)
      tt.type = s.TensorType.INT8 if t.dtype == 'int8' else s.TensorType.INT32
      tt.name = t.name
      tt.buffer = 0
      if t.data is not None:
        b = s.BufferT()
        b.data = np.frombuffer(np.ascontiguousarray(t.data).tobytes(), np.uint8)
        buffers.append(b)
        tt.buffer = len(buffers) - 1
      q = s.QuantizationParametersT()
      q.scale = [float(v) for v in t.scale]
      q.zeroPoint = [int(v) for v in t.zero_point]
      q.quantizedDimension = t.quantized_dimension
      tt.quantization = q
      tensors.append(tt)
    operators = []
    for kind, ins, outs, opts in self.ops:
      o = s.OperatorT()
      o.opcodeIndex = kinds.index(kind)
      o.inputs, o.outputs = ins, outs
      o.builtinOptionsType, o.builtinOptions = _options(s, kind, opts)
      operators.append(o)
    sub = s.SubGraphT()
    sub.tensors, sub.operators = tensors, operators
    sub.inputs, sub.outputs = list(inputs), list(outputs)
    sub.name = 'main'
    model = s.ModelT()
    model.version = 3
    model.operatorCodes, model.subgraphs, model.buffers = codes, [sub], buffers
    model.description = description
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
    return bytes(builder.Output())


# Op versions as TFLite's converter sets them for int8 (per-channel weights where used).
_OP_VERSIONS = {'CONV_2D': 3, 'DEPTHWISE_CONV_2D': 3, 'FULLY_CONNECTED': 4, 'ADD': 2,
                'AVERAGE_POOL_2D': 2, 'MAX_POOL_2D': 2, 'RELU': 2, 'PAD': 2, 'RESHAPE': 1}
# fused activation option -> TFLite ActivationFunctionType
_FUSED = {None: 0, 'relu': 1, 'relu6': 3}


def _options(s, kind, opts):
  same = s.Padding.SAME if opts.get('padding', 'same') == 'same' else s.Padding.VALID
  if kind == 'CONV_2D':
    o = s.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH = same, opts['stride'], opts['stride']
    o.dilationWFactor = o.dilationHFactor = 1
    o.fusedActivationFunction = _FUSED[opts.get('activation')]
    return s.BuiltinOptions.Conv2DOptions, o
  if kind == 'DEPTHWISE_CONV_2D':
    # NB201's head BN is a 1x1 depthwise conv: VALID, stride 1 unless told otherwise
    o = s.DepthwiseConv2DOptionsT()
    o.padding = same if 'padding' in opts else s.Padding.VALID
    o.strideW = o.strideH = opts.get('stride', 1)
    o.depthMultiplier = 1
    o.dilationWFactor = o.dilationHFactor = 1
    o.fusedActivationFunction = _FUSED[opts.get('activation')]
    return s.BuiltinOptions.DepthwiseConv2DOptions, o
  if kind in ('AVERAGE_POOL_2D', 'MAX_POOL_2D'):
    o = s.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH = same, opts['stride'], opts['stride']
    o.filterWidth = o.filterHeight = opts['size']
    return s.BuiltinOptions.Pool2DOptions, o
  if kind == 'ADD':
    o = s.AddOptionsT()
    o.fusedActivationFunction = _FUSED[opts.get('activation')]
    return s.BuiltinOptions.AddOptions, o
  if kind == 'FULLY_CONNECTED':
    o = s.FullyConnectedOptionsT()
    o.keepNumDims = False
    o.fusedActivationFunction = _FUSED[opts.get('activation')]
    return s.BuiltinOptions.FullyConnectedOptions, o
  if kind == 'PAD':
    return s.BuiltinOptions.PadOptions, s.PadOptionsT()
  if kind == 'RESHAPE':
    o = s.ReshapeOptionsT()
    o.newShape = list(opts['shape'])
    return s.BuiltinOptions.ReshapeOptions, o
  return s.BuiltinOptions.NONE, None

"""Run an exported .tflite in TensorFlow Lite Micro's own interpreter and in LiteRT, on host.

* TFLM: `tflite_micro.runtime.Interpreter` (the TFLM C++ interpreter and reference kernels,
  built for the host) with allocation recording: `tflm_arena` reads what its allocator used.
* LiteRT: `ai_edge_litert.interpreter.Interpreter` with its default XNNPACK kernels or its
  reference kernels, the desktop runtime a user would try second.
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np


class RuntimeMissing(ValueError):
  """The [deploy] extra is not installed; one line naming the fix."""


def _tflm():
  try:
    from tflite_micro import runtime
  except ImportError:
    raise RuntimeMissing('TFLite Micro is not installed; pip install -e ".[deploy]"') from None
  return runtime


def _capture_stderr(fn):
  """fn() with the process's stderr (C++ prints there) captured; returns (result, text)."""
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      result = fn()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    tmp.seek(0)
    return result, tmp.read().decode(errors='replace')


def tflm_interpreter(model: bytes, arena_size: int = 8 << 20):
  return _tflm().Interpreter.from_bytes(model, arena_size=arena_size)


def _tflm_invoke_all(model: bytes, inputs: np.ndarray, progress=None) -> np.ndarray:
  interp = tflm_interpreter(model)
  out = []
  it = range(len(inputs)) if progress is None else progress(range(len(inputs)))
  for i in it:
    interp.set_input(inputs[i:i + 1], 0)
    interp.invoke()
    out.append(np.array(interp.get_output(0)))
  return np.concatenate(out)


def tflm_run(model: bytes, inputs: np.ndarray, progress=None, workers: int = 1) -> np.ndarray:
  """int8 outputs of every input (batch-1 model, one invoke per input, as on the MCU). TFLM's
  interpreter runs on one core; `workers` > 1 splits the inputs over that many processes."""
  if workers <= 1 or len(inputs) < 2 * workers:
    return _tflm_invoke_all(model, inputs, progress)
  import concurrent.futures
  import multiprocessing
  parts = np.array_split(inputs, workers)
  ctx = multiprocessing.get_context('spawn')  # the parent holds JAX's threads: do not fork
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    futures = [pool.submit(_tflm_invoke_all, model, part) for part in parts]
    return np.concatenate([f.result() for f in futures])


_ALLOC = {'total': r'Arena allocation total (\d+) bytes',
          'head': r'Arena allocation head (\d+) bytes',
          'tail': r'Arena allocation tail (\d+) bytes'}


def tflm_arena(model: bytes, sample: np.ndarray) -> dict:
  """TFLM's recorded arena use after one invoke: total, head (the planned activation buffers)
  and tail (persistent: tensor structs, per-op data such as per-channel multipliers), bytes,
  plus the recorder's per-kind lines."""
  interp = tflm_interpreter(model)
  interp.set_input(sample[:1], 0)
  interp.invoke()
  _, text = _capture_stderr(interp.print_allocations)
  out = {}
  for key, pattern in _ALLOC.items():
    m = re.search(pattern, text)
    if not m:
      raise RuntimeError(f'could not read TFLM\'s allocation record ({key}); got: {text[:200]}')
    out[key] = int(m.group(1))
  out['record'] = [line.split('] ', 1)[-1] for line in text.splitlines() if "' used" in line]
  return out


LITERT_KERNELS = ('xnnpack', 'reference')


def litert_run(model: bytes, inputs: np.ndarray, kernels: str = 'xnnpack',
               batch: int = 1000) -> np.ndarray:
  """int8 outputs from LiteRT, the batch dimension resized to `batch` inputs per invoke.

  kernels='xnnpack' is LiteRT's default (the XNNPACK delegate); 'reference' its reference
  kernels (`OpResolverType.BUILTIN_REF`), whose arithmetic the integer references reproduce
  ('litert_reference' rounding)."""
  try:
    from ai_edge_litert import interpreter as litert
  except ImportError:
    raise RuntimeMissing('LiteRT is not installed; pip install -e ".[deploy]"') from None
  if kernels not in LITERT_KERNELS:
    raise ValueError(f'unknown LiteRT kernels {kernels!r}; use one of {", ".join(LITERT_KERNELS)}')
  resolver = {'xnnpack': litert.OpResolverType.AUTO,
              'reference': litert.OpResolverType.BUILTIN_REF}[kernels]
  interp = litert.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
  inp = interp.get_input_details()[0]
  out = []
  size = None
  for i in range(0, len(inputs), batch):
    part = np.ascontiguousarray(inputs[i:i + batch])
    if len(part) != size:
      size = len(part)
      interp.resize_tensor_input(inp['index'], (size,) + tuple(inp['shape'][1:]))
      interp.allocate_tensors()
    interp.set_tensor(inp['index'], part)
    interp.invoke()
    out.append(np.array(interp.get_tensor(interp.get_output_details()[0]['index'])))
  return np.concatenate(out)

"""Run an exported .tflite in TensorFlow Lite Micro's own interpreter and in LiteRT, on host.

* TFLM: `tflite_micro.runtime.Interpreter` (the TFLM C++ interpreter and reference kernels,
  built for the host) with allocation recording: `tflm_arena` reads what its allocator used.
* LiteRT: `ai_edge_litert.interpreter.Interpreter` with its default XNNPACK kernels, the
  desktop runtime a user would try second.
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


def litert_run(model: bytes, inputs: np.ndarray) -> np.ndarray:
  """int8 outputs from LiteRT (XNNPACK), the batch dimension resized to all inputs at once."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    raise RuntimeMissing('LiteRT is not installed; pip install -e ".[deploy]"') from None
  interp = Interpreter(model_content=model)
  inp = interp.get_input_details()[0]
  interp.resize_tensor_input(inp['index'], (len(inputs),) + tuple(inp['shape'][1:]))
  interp.allocate_tensors()
  interp.set_tensor(inp['index'], np.ascontiguousarray(inputs))
  interp.invoke()
  return np.array(interp.get_tensor(interp.get_output_details()[0]['index']))

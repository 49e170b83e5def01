"""`--experiment=export`: a trained int8 run -> model.tflite, verified in TFLite Micro and LiteRT.

  python -m experiments.run --experiment=export --workdir=runs/6111_qat \
      --data_dir=../shared/data/cifar10

Writes model.tflite, io_check.npz, export.json and export.txt into the workdir (deploy/export.py)
and prints the summary. With --c_source it also writes c_project/ (deploy/c_source.py), builds it
for --c_target (m4: Cortex-M4 on QEMU's mps2-an386, m7: Cortex-M7 on mps2-an500) and checks
--c_images test images in the emulator against the integer reference.
"""
from __future__ import annotations

from deploy import export as export_lib
from search_spaces import nb201


def run(f, workdir):
  if f.export_images == 0 or f.export_images < -1:
    raise export_lib.ExportError(f'--export_images must be a positive count or -1 (all test '
                                 f'images), got {f.export_images}')
  data_dir = f.data_dir or str(nb201.data_dir() / 'cifar10')
  export_lib.export(workdir, data_dir, f.export_images, litert=f.litert, device=f.device,
                    runtime=f.runtime, progress=f.progress, c_source=f.c_source,
                    c_target=f.c_target, c_images=f.c_images, space=f.search_space)

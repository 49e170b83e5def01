"""engine/files.py: the check that an orbax checkpoint's index can be read (`check_ocdbt`), and
the command line that uses it before restoring a run (experiments.common.check_checkpoint)."""
import dataclasses
import json
import subprocess
import sys

import jax
import optax
import pytest

import cli
from engine import files
from engine.train import train

ARCH = 'f8k3-relu-max'  # tinycnn: a small checkpoint


def _run_with_checkpoint(workdir, epoch=1):
  """A training run's folder as --experiment=train leaves it: config.json and a checkpoint."""
  cfg = train.TrainConfig(arch=ARCH, search_space='tinycnn', quant='fp32', epochs=epoch)
  v = cfg.network().init(jax.random.key(0))
  train.save_checkpoint(workdir, epoch, v, optax.sgd(0.1).init(v['params']))
  (workdir / 'config.json').write_text(json.dumps(dataclasses.asdict(cfg)))
  return workdir / 'ckpt' / str(epoch)


def _truncate_manifest(checkpoint):
  manifest = checkpoint / 'variables' / 'manifest.ocdbt'
  manifest.write_bytes(manifest.read_bytes()[:20])
  return manifest


def test_a_readable_checkpoint_passes_and_a_truncated_manifest_is_named(tmp_path):
  checkpoint = _run_with_checkpoint(tmp_path)
  files.check_ocdbt(checkpoint)  # both items, variables and opt_state, read back
  _truncate_manifest(checkpoint)
  with pytest.raises(ValueError, match='manifest.ocdbt'):
    files.check_ocdbt(checkpoint)


def test_a_truncated_manifest_is_one_line_without_exit_tracebacks(tmp_path):
  """Orbax's restore gave the right line, then tensorstore printed an 'Event loop is closed'
  traceback for each read still in flight, up to process exit."""
  checkpoint = _run_with_checkpoint(tmp_path / 'run')
  _truncate_manifest(checkpoint)
  result = subprocess.run([sys.executable, '-m', 'experiments.run', '--experiment=export',
                           f'--workdir={tmp_path / "run"}', '--noprogress'], cwd=cli.REPO,
                          env=cli.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  cli.assert_one_line_error(result, f'checkpoint {checkpoint} is damaged', 'manifest.ocdbt',
                            'delete that folder')

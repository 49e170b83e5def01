"""experiments/configs: the presets run the experiments they are for."""
import json

import pytest

from engine.train import train as train_lib
from experiments import run


@pytest.mark.parametrize('experiment', ['pipeline', 'train'])
def test_smokes_training_has_the_float_steps_qat_from_scratch_needs(experiment):
  """--config=smoke on the pipeline (QAT) once stopped with 'too few float steps' on CIFAR-10:
  512 images in batches of 128 are 4 steps. The preset's own sizes must leave QAT its float
  steps, checked as the trainer checks them."""
  cfg = run.make_config(experiment, 'smoke', quant='qat')
  steps_per_epoch = max(cfg.train_images // cfg.train_batch, 1)
  train_cfg = train_lib.TrainConfig(arch='x', epochs=cfg.epochs, quant='qat')
  assert train_cfg.quant_delay(steps_per_epoch) >= train_lib.MIN_FP32_STEPS
  train_cfg.check_schedule(steps_per_epoch)  # raises as the trainer would


# slow (48 s cold, the default suite's longest): the pipeline's search -> QAT -> export path on
# an image folder stays in the default suite (tests/pipeline_test.py), and the smoke schedule's
# float steps through the test above
@pytest.mark.slow
def test_the_smoke_pipeline_runs_end_to_end_on_cifar10(data_dir, tmp_path, capsys):
  """First contact: `--experiment=pipeline --config=smoke` on the CIFAR-10 batches learns
  enough to pass the at-chance guard and ends verified (it once stopped there, then at chance)."""
  workdir = tmp_path / 'out'
  argv = ['prog', '--experiment=pipeline', '--config=smoke', '--nolitert', '--noprogress',
          f'--data_dir={data_dir / "cifar10"}', f'--workdir={workdir}']
  assert run.cli(argv) == 0, capsys.readouterr()
  report = json.loads((workdir / 'report.json').read_text())
  assert report['export']['verified'] and report['export']['tflm_bitexact_fraction'] == 1.0


def test_fast_rerank_is_the_previous_default_that_the_docs_measured():
  """--config=fast_rerank is the configuration whose held-out figures its docstring quotes (the
  rerank default before jacob_cov joined it): the same bundle as the default but its proxies,
  and the search's own settings otherwise."""
  fast, default = run.make_config('search', 'fast_rerank'), run.make_config('search')
  assert fast.proxies == 'synflow,az_trainability'
  assert default.proxies == run.RERANK_DEFAULTS['proxies'] == fast.proxies + ',jacob_cov'
  for name in ('rerank_band', 'zc_width', 'zc_cells', 'zc_batch', 'searcher', 'stand_in_inputs'):
    assert getattr(fast, name) == getattr(default, name), name
  # a flag on the command line still wins over the preset
  assert run.make_config('search', 'fast_rerank', zc_cells=2).zc_cells == 2

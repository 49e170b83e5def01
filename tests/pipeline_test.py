"""`--experiment=pipeline` (experiments/pipeline.py): search, train (QAT) and export with the
TFLite Micro check, end to end on a generated PNG image folder with --config=smoke; a kill
inside training resumes at that stage, without redoing the search."""
import json
import pathlib

import pytest

from data_test import CLASSES, _write_folder
from deploy import export as export_lib
from engine.train import train as train_lib
from experiments import run
from search_spaces import registry

# 72 train / 18 test images of 3 colour classes; QAT needs >= 25 steps (5 epochs of 6)
ARGS = ['--experiment=pipeline', '--config=smoke', '--epochs=5', '--train_batch=12',
        '--warmup_epochs=0.5', '--nolitert', '--noprogress']


class Killed(Exception):
  pass


# tinycnn trains through its lowered graph (engine/quant/graph_qat.py), at its own rate (its convs
# have no BN: --lr defaults to 0.01 there, 0.1 for NB201; 0.1 diverges on tinycnn)
SPACES = {'nb201': [], 'tinycnn': ['--search_space=tinycnn']}


# NB201's case is slow (61-75 s cold, the longest test since NB201 trains through the graph
# path): the pipeline's code is the same for every space, tinycnn's case runs it by default, and
# NB201's training and export from the command line run in train_test and deploy_test
@pytest.mark.parametrize('space', [pytest.param('nb201', marks=pytest.mark.slow), 'tinycnn'])
def test_pipeline_on_an_image_folder_resumes_inside_training(space, tmp_path, monkeypatch, capsys):
  folder = _write_folder(tmp_path / 'imgs', per_class=30)
  workdir = tmp_path / 'out'
  argv = ['prog', *ARGS, *SPACES[space], f'--data_dir={folder}', f'--workdir={workdir}']
  real_save = train_lib.save_checkpoint

  def save_then_die(path, epoch, *args):  # killed right after epoch 2's checkpoint
    real_save(path, epoch, *args)
    if epoch == 2:
      raise Killed()

  monkeypatch.setattr(train_lib, 'save_checkpoint', save_then_die)
  with pytest.raises(Killed):
    run.cli(argv)
  assert (workdir / 'search' / 'results.json').is_file()
  assert not (workdir / 'train' / 'results.json').exists()
  monkeypatch.setattr(train_lib, 'save_checkpoint', real_save)
  capsys.readouterr()

  assert run.cli(argv) == 0
  out = capsys.readouterr().out
  assert 'pipeline: search already done' in out
  assert f'resuming {workdir / "train"} after epoch 2' in out
  report = json.loads((workdir / 'report.json').read_text())
  pick = json.loads((workdir / 'search' / 'results.json').read_text())['results'][0]
  assert report['arch'] == pick['arch_str'] and report['export']['verified']
  assert report['export']['tflm_bitexact_fraction'] == 1.0 and report['export']['images'] == 18
  trained = json.loads((workdir / 'train' / 'results.json').read_text())
  assert trained['data']['class_names'] == list(CLASSES) and trained['quant'] == 'qat'
  if space == 'nb201':
    assert report['deployed']['C'] == 4 and report['deployed']['N'] == 1  # smoke's size
    assert report['deployed']['flash_bytes'] < pick['flash_bytes']
  else:  # its own size: the pick's costs, but for a 3-class head (the search costs 10)
    assert 'C' not in report['deployed'] and pick['arch_str'].split('-')[-2] == 'relu'
    own, config = registry.get(space), run.make_config('pipeline', 'smoke')
    head3 = own.lower(own.decode(pick['arch_str']), own.shape_for()[0], len(CLASSES))
    want = export_lib.predicted_costs(head3, config.device, config.runtime)['flash_bytes']
    assert report['deployed']['flash_bytes'] == want < pick['flash_bytes']
  assert 'TFLite Micro == integer reference | 100.00% of images' in (
      workdir / 'report.md').read_text()
  # the report's plot exists for every space (tinycnn: predicted costs, no accuracy known)
  assert (workdir / 'search' / 'pareto.png').stat().st_size > 10_000

  # a third run has nothing left to do; other settings into the workdir are refused
  assert run.cli(argv) == 0
  assert 'pipeline: export already done' in capsys.readouterr().out
  assert run.cli(argv + ['--epochs=6']) == 2
  assert 'holds a pipeline with other settings (differs in epochs)' in capsys.readouterr().err


def test_the_report_says_when_the_finalist_stage_chose_the_winner():
  import types
  from experiments import pipeline
  f = types.SimpleNamespace(search_space='tinycnn', device='stm32f746', runtime='cmsis-nn',
                            data_dir='d', epochs=1)
  found = dict(arch_str='f8k3-relu-max', finalists=[
      dict(arch_str='f16k3-relu-max', objective_rank=1, val_acc=float('nan'), train_s=1.0),
      dict(arch_str='f8k3-relu-max', objective_rank=2, val_acc=0.36, train_s=1.0)])
  exported = dict(tflm=dict(bitexact_fraction=1.0, test_acc=0.3), model_bytes=1, images=2,
                  verified=True)
  deployed = dict(sram_bytes=1024, flash_bytes=1024, latency_ms=1.0)
  report = pipeline._report(f, found, {}, exported, pathlib.Path('w'), deployed)
  assert [x['objective_rank'] for x in report['finalists']] == [1, 2]
  assert ("among the search's 2 best by the objective (validation accuracy after brief "
          "training: #1 failed, #2 36.0%)") in pipeline._markdown(report)
  del found['finalists']
  assert 'finalist' not in pipeline._markdown(pipeline._report(f, found, {}, exported,
                                                               pathlib.Path('w'), deployed))


@pytest.mark.parametrize('flag, message', [
    ('--device=stm32f74', 'stm32f74'),
    ('--train_images=64', 'QAT from scratch'),  # 2 steps an epoch at the smoke batch of 32
    # all of the shared CIFAR-10 batch, counted from its file (it was refused after the search,
    # and the corrected command then as another pipeline): 19 steps at 512, 15 in float
    ('--train_images=0 --train_batch=512', '15 float steps are too few'),
])
def test_what_training_or_export_would_refuse_is_refused_before_the_search(flag, message,
                                                                            tmp_path, capsys,
                                                                            request):
  """One line, exit 2, before the search runs and before pipeline.json is written, so the
  corrected command is not refused as another pipeline."""
  if '--train_images=0' in flag:
    request.getfixturevalue('data_dir')  # the shared CIFAR-10 batch (skips without it)
  workdir = tmp_path / 'out'
  code = run.cli(['prog', '--experiment=pipeline', '--config=smoke', *flag.split(),
                  f'--workdir={workdir}'])
  err = capsys.readouterr()
  assert code == 2 and message in err.err and len(err.err.strip().splitlines()) == 1, err
  assert 'pipeline: search' not in err.out and not (workdir / 'pipeline.json').exists()

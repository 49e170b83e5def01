"""Tests of the training loop: steps reduce the loss, checkpoints resume, losses, augmentation."""
import csv
import dataclasses
import gc
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import chance
from engine.train import data as data_lib
from engine.train import train
from experiments import common
from engine.quant import graph_int
from engine.quant import graph_qat
from search_spaces import nb201
from search_spaces.nb201 import graph as nb201_graph
from search_spaces.nb201 import space as nb201_space

# few ops, so that compiling the train step stays cheap; the int8 path is tested in quant_test
ARCH = '|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|'
TINY = nb201.NB201Config(C=4, N=1, input_size=8)


def _model(config, mode='fp32'):
  """ARCH's network at `config` as the trainer runs it: NB201's graph, its constants kept."""
  graph = nb201_graph.train_graph(nb201.parse_arch_str(ARCH), config)
  return graph_qat.GraphNetwork(graph, mode, nb201_space.TRAIN_INITS)


def _init(key, config=TINY):
  return graph_qat.init_variables(key, _model(config).graph, nb201_space.TRAIN_INITS)


def _batch(n=32, seed=0):
  """uint8 images whose label is the brightest colour channel: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  labels = np.argmax(images.astype(np.float32).mean((1, 2)), -1)
  return images, labels


@pytest.mark.parametrize('mode', ['quant', pytest.param('fp32', marks=pytest.mark.slow)])
def test_a_few_training_steps_reduce_the_loss(mode):  # fp32 steps also run in the resume test
  config = dataclasses.replace(TINY, num_classes=3)
  v = _init(jax.random.key(0), config)
  images, labels = _batch()
  if mode == 'quant':  # QAT starts from a float model: BN statistics, then calibrated ranges
    stats = jax.jit(lambda v, x: _model(config).apply(
        v, x, train=True, mutable=['batch_stats'])[1]['batch_stats'])
    for _ in range(5):
      v = {**v, 'batch_stats': stats(v, train._normalize(images))}
    v = graph_qat.calibrate(v, _model(config).graph, [train._normalize(images)])
  tx = optax.sgd(0.02, 0.9)
  opt_state = tx.init(v['params'])
  step = train.make_train_step(lambda m: _model(config, m), tx)
  model = _model(config, mode)
  loss_of = jax.jit(lambda v: train.cross_entropy(
      model.apply(v, train._normalize(images)), labels))
  before = float(loss_of(v))
  for s in range(12):
    v, opt_state, _ = step(mode, v, opt_state, jax.random.key(s), images, labels)
  assert float(loss_of(v)) < 0.8 * before
  if mode == 'quant':  # QAT tracked its ranges; BN statistics stayed frozen
    assert float(v['quant']['input_q']['count']) > 1


def test_distillation_loss():
  s = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  assert float(train.distillation_loss(s, s, 4.0)) == pytest.approx(0.0, abs=1e-6)
  t = s[:, ::-1]
  assert float(train.distillation_loss(s, t, 4.0)) > 0.01
  g = jax.grad(lambda x: train.distillation_loss(x, t, 2.0))(s)
  assert float(jnp.abs(g).sum()) > 0


def test_augment_crops_and_flips_the_padded_image():
  images, _ = _batch(16)
  out = np.asarray(train.augment(jax.random.key(1), jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == images.dtype
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for img, src in zip(out, padded):
    crops = [src[dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
    assert any(np.array_equal(img, c) or np.array_equal(img, c[:, ::-1]) for c in crops)
  assert not np.array_equal(out, images)


def test_checkpoint_roundtrip(tmp_path):
  v = _init(jax.random.key(3))
  tx = optax.sgd(0.1, 0.9)
  opt_state = tx.init(v['params'])
  opt_state = jax.tree.map(lambda a: a + 1.5 if hasattr(a, 'dtype') else a, opt_state)
  train.save_checkpoint(tmp_path, 7, v, opt_state)
  epoch, v2, o2 = train.restore_checkpoint(tmp_path, v, tx.init(v['params']))
  assert epoch == 7
  jax.tree.map(np.testing.assert_array_equal, v, v2)
  jax.tree.map(np.testing.assert_array_equal, opt_state, o2)


# orbax leaves the aborted read's coroutines behind; collected here, not in a later test
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path):
  v = _init(jax.random.key(3))
  train.save_checkpoint(tmp_path, 2, v, optax.sgd(0.1).init(v['params']))
  # cut short the largest array data file (orbax raises a bare Exception reading it)
  data = max((p for p in (tmp_path / 'ckpt' / '2' / 'variables').rglob('d/*') if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  with pytest.raises(common.USER_ERRORS, match=r'ckpt/2 cannot be restored .* delete that folder'):
    train.restore_checkpoint(tmp_path, v)
  gc.collect()


def test_a_damaged_checkpoint_index_is_found_before_orbax_reads_it(tmp_path, capfd):
  """Every restore (a resumed run, --init_from, the finalist stage's runs) reads the index
  first: a truncated manifest is one CheckpointError, and tensorstore prints nothing (orbax's
  own read of it printed an 'Event loop is closed' traceback per array in flight)."""
  v = _init(jax.random.key(3))
  train.save_checkpoint(tmp_path, 2, v, optax.sgd(0.1).init(v['params']))
  manifest = tmp_path / 'ckpt' / '2' / 'variables' / 'manifest.ocdbt'
  manifest.write_bytes(manifest.read_bytes()[:20])
  with pytest.raises(train.CheckpointError, match=r'ckpt/2 is damaged .*manifest.ocdbt.* delete'):
    train.restore_checkpoint(tmp_path, v)
  gc.collect()
  assert 'Traceback' not in capfd.readouterr().err


def test_missing_checkpoint_is_a_user_error(tmp_path):
  with pytest.raises(common.USER_ERRORS, match='config.json not found'):
    train.load_run(tmp_path / 'nope')
  with pytest.raises(common.USER_ERRORS, match='no checkpoint'):
    train.restore_checkpoint(tmp_path, {})
  with pytest.raises(common.USER_ERRORS, match='--init_from'):
    train.TrainConfig(arch=ARCH, quant='ptq', epochs=0).validate()


class _Stop(Exception):
  pass


def _tiny_run(**kw):
  return train.TrainConfig(arch=ARCH, C=2, N=1, epochs=2, batch_size=64, lr=0.05,
                           train_images=128, test_images=64, int_eval_images=64, **kw)


def test_training_resumes_from_the_latest_checkpoint(data_dir, tmp_path, monkeypatch):
  cfg = _tiny_run()
  cifar = data_dir / 'cifar10'
  real_save = train.save_checkpoint

  def save_then_crash(workdir, epoch, *args):
    real_save(workdir, epoch, *args)
    raise _Stop  # killed right after the first epoch's checkpoint

  monkeypatch.setattr(train, 'save_checkpoint', save_then_crash)
  with pytest.raises(_Stop):
    train.train(cfg, cifar, tmp_path, progress=False, log=lambda *_: None)
  monkeypatch.setattr(train, 'save_checkpoint', real_save)
  logs = []
  # 2 steps per epoch on 128 images learn nothing measurable on 64 test images: the final
  # accuracy is at chance, so the resumed run ends in AtChance (the guard fires at any run
  # length, far below CHECK_CHANCE_STEPS) and writes no results.json
  with pytest.raises(train.AtChance, match='float test acc .* not above chance') as info:
    train.train(cfg, cifar, tmp_path, progress=False, log=logs.append)
  assert logs[0] == f'resuming {tmp_path} after epoch 1'
  assert info.value.results['epochs_run_now'] == 1
  assert info.value.results['flag'] == 'at_chance'
  assert not (tmp_path / 'results.json').exists()
  with (tmp_path / 'metrics.csv').open() as f:
    resumed_rows = list(csv.DictReader(f))
  assert [int(r['epoch']) for r in resumed_rows] == [1, 2]
  assert train.latest_epoch(tmp_path) == 2

  # the resumed run equals an uninterrupted one: the same weights and statistics bit for bit,
  # and the same losses and accuracies per epoch (epoch 2's batches and augmentation come from
  # the seed and the epoch, and the optimizer state was restored)
  whole = tmp_path / 'whole'
  with pytest.raises(train.AtChance):
    train.train(cfg, cifar, whole, progress=False, log=lambda *_: None)
  like = cfg.network().init(jax.random.key(0))
  _, resumed, _ = train.restore_checkpoint(tmp_path, like)
  _, uninterrupted, _ = train.restore_checkpoint(whole, like)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  with (whole / 'metrics.csv').open() as f:
    whole_rows = list(csv.DictReader(f))
  same = lambda rows: [{k: r[k] for k in ('epoch', 'mode', 'train_loss', 'train_acc', 'test_acc')}
                       for r in rows]
  assert same(resumed_rows) == same(whole_rows)


@pytest.mark.slow
def test_tiny_pipeline_fp32_then_qat_and_ptq(data_dir, tmp_path):
  cifar = data_dir / 'cifar10'
  # enough steps (3 epochs x 31) and test images (500) that a real model is measurably above
  # chance, which every accuracy the run reports must be (else AtChance)
  cfg = dataclasses.replace(_tiny_run(), C=4, epochs=3, train_images=2000, test_images=500,
                            int_eval_images=500)
  full = train.train(cfg, cifar, tmp_path / 'fp32', progress=False)
  assert full['float_test_acc'] > full['chance']['float_test_acc']['ceiling']
  assert (tmp_path / 'fp32' / 'curve.png').is_file()
  for quant, epochs in (('qat', 1), ('ptq', 0)):
    res = train.train(dataclasses.replace(cfg, quant=quant, epochs=epochs,
                                          init_from=str(tmp_path / 'fp32')),
                      cifar, tmp_path / quant, progress=False)
    assert res['int_fake_quant_agreement'] >= 0.95
    assert res['int8_weight_bytes'] == res['hardware_model']['weights']
    assert res['int32_bias_count'] == res['hardware_model']['biases']
    assert (tmp_path / quant / 'results.json').is_file()


def test_a_diverging_run_stops_with_a_clear_message(data_dir, tmp_path):
  cfg = dataclasses.replace(_tiny_run(), lr=1e8, epochs=4, warmup_epochs=0.0)
  with pytest.raises(train.TrainingDiverged, match='training diverged: .* lower --lr'):
    train.train(cfg, data_dir / 'cifar10', tmp_path, progress=False)
  assert not (tmp_path / 'results.json').exists()  # nothing reported as a result


def test_qat_from_scratch_with_too_few_float_steps_is_refused(data_dir, tmp_path):
  cfg = dataclasses.replace(_tiny_run(), quant='qat', epochs=1)  # 2 steps: 1 float step cannot learn BN statistics
  with pytest.raises(common.USER_ERRORS, match='QAT from scratch'):
    train.train(cfg, data_dir / 'cifar10', tmp_path, progress=False)


# ----------------------------------------------------------------------------- garbage guards

_LABELS = np.arange(300) % 10  # a balanced stand-in test set


def _labelled_images():
  """uint8 images that carry their label in one pixel, so a stand-in model can be right."""
  images = np.zeros((len(_LABELS), 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = _LABELS
  return data_lib.ImageSet(images, _LABELS.copy(), 'stand-in')


def _right(variables, images):  # a stand-in model that reads the label
  return np.eye(10, dtype=np.float32)[np.asarray(images)[:, 0, 0, 0] % 10]


def _constant(variables, images):  # a stand-in model that always answers class 3
  return np.tile(np.eye(10, dtype=np.float32)[3], (len(images), 1))


def _nan(variables, images):
  return np.full((len(images), 10), np.nan, np.float32)


class _IntNet:
  """Stands in for graph_int.IntGraph: right, or a constant answer."""
  right = True

  def __init__(self, variables, graph, rounding='tflm'):
    pass

  def act(self, i):
    return 1.0, 0

  def quantize_input(self, x):
    return np.zeros(np.shape(x), np.int32)

  def logits(self, x):
    n = len(x)
    return np.eye(10, dtype=np.int8)[_LABELS[:n] if _IntNet.right else np.full(n, 3)]

  reference_logits = logits

  def weight_counts(self):
    return dict(weights=1, biases=1)


@pytest.fixture
def stand_in_int(monkeypatch):
  monkeypatch.setattr(graph_int, 'IntGraph', _IntNet)
  monkeypatch.setattr(train, 'hardware_weight_counts', lambda graph: {})
  monkeypatch.setattr(_IntNet, 'right', True)
  return _IntNet


@pytest.mark.parametrize('quant, fp32, quant_fn, int_right, what', [
    ('fp32', _constant, None, True, 'float test acc'),
    ('ptq', _constant, _right, True, 'float test acc'),
    ('qat', _right, _constant, True, 'fake-quant int8 test acc'),    # QAT: no float accuracy
    ('ptq', _right, _constant, True, 'fake-quant int8 test acc .* quantization broke it'),
    ('qat', _right, _right, False, 'integer-only int8 test acc .* integer kernels broke it'),
])
def test_a_final_accuracy_at_chance_is_not_a_result(stand_in_int, quant, fp32, quant_fn,
                                                    int_right, what):
  stand_in_int.right = int_right
  cfg = train.TrainConfig(arch=ARCH, quant=quant, epochs=1)
  with pytest.raises(train.AtChance, match=what):
    train.evaluate(cfg, {}, _labelled_images(), {'fp32': fp32, 'quant': quant_fn},
                   log=lambda *_: None)


def test_accuracies_above_chance_are_results(stand_in_int):
  res = train.evaluate(train.TrainConfig(arch=ARCH, quant='ptq', epochs=1), {},
                       _labelled_images(), {'fp32': _right, 'quant': _right}, log=lambda *_: None)
  assert res['float_test_acc'] == res['fake_quant_test_acc'] == res['int_test_acc'] == 1.0
  assert 'flag' not in res and not res['chance']['int_test_acc']['at_chance']


@pytest.mark.parametrize('quant', ['fp32', 'qat'])
def test_non_finite_logits_are_divergence(stand_in_int, quant):
  cfg = train.TrainConfig(arch=ARCH, quant=quant, epochs=1)
  with pytest.raises(train.TrainingDiverged, match='non-finite logits'):
    train.evaluate(cfg, {}, _labelled_images(), {'fp32': _nan, 'quant': _nan},
                   log=lambda *_: None)


def test_the_chance_ceiling():
  balanced = np.arange(10000) % 10
  # CIFAR-10's test set: 1094 of 10000 right is what a guess reaches with probability 1e-3
  assert chance.judge(0.1094, balanced, 10).at_chance
  assert not chance.judge(0.1095, balanced, 10).at_chance
  # a skewed subset: always answering the majority label (40%) is chance, not a 4x result
  skewed = np.r_[np.zeros(40, int), np.arange(60) % 10]
  assert chance.judge(0.46, skewed, 10).guess == 0.46
  assert chance.judge(0.46, skewed, 10).at_chance
  assert not chance.judge(0.75, skewed, 10).at_chance
  assert chance.judge(float('nan'), balanced, 10).at_chance


def test_a_workdir_of_another_run_names_the_settings_that_differ(data_dir, tmp_path):
  cfg = train.TrainConfig(arch=ARCH, C=2, N=1, epochs=1, batch_size=64, train_images=64,
                          test_images=32)
  (tmp_path / 'config.json').write_text(
      json.dumps(dataclasses.asdict(dataclasses.replace(cfg, epochs=3, lr=0.05))))
  v = _init(jax.random.key(3))
  train.save_checkpoint(tmp_path, 1, v, optax.sgd(0.1).init(v['params']))  # it trained there
  with pytest.raises(train.CheckpointError, match=r'config.json differs in epochs, lr\)'):
    train.train(cfg, data_dir / 'cifar10', tmp_path, progress=False)


def test_a_start_that_stopped_before_its_first_checkpoint_is_started_over(data_dir, tmp_path,
                                                                          monkeypatch):
  """A refused or diverged start leaves config.json (and maybe a metrics row) but nothing
  trained: the corrected command replaces them instead of being refused as another run."""
  cfg = train.TrainConfig(arch=ARCH, C=2, N=1, epochs=1, batch_size=64, train_images=64,
                          test_images=32)
  (tmp_path / 'config.json').write_text(
      json.dumps(dataclasses.asdict(dataclasses.replace(cfg, lr=1000.0))))
  (tmp_path / 'metrics.csv').write_text('epoch,train_loss\n1,nan\n')

  def stop(*_):
    raise _Stop
  monkeypatch.setattr(train, 'make_optimizer', stop)  # just after config.json is written
  with pytest.raises(_Stop):
    train.train(cfg, data_dir / 'cifar10', tmp_path, progress=False)
  assert json.loads((tmp_path / 'config.json').read_text()) == dataclasses.asdict(cfg)
  assert not (tmp_path / 'metrics.csv').exists()


def test_a_search_workdir_or_a_batch_larger_than_the_data_is_refused(data_dir, tmp_path):
  cfg = train.TrainConfig(arch=ARCH, C=2, N=1, epochs=1, batch_size=64, train_images=64,
                          test_images=32)
  (tmp_path / 'results.json').write_text('{"results": []}')
  with pytest.raises(train.CheckpointError, match="another job's results.json"):
    train.train(cfg, data_dir / 'cifar10', tmp_path, progress=False)
  with pytest.raises(common.USER_ERRORS, match='larger than the 64 training images'):
    train.train(dataclasses.replace(cfg, batch_size=128), data_dir / 'cifar10',
                tmp_path / 'new', progress=False)
  assert not (tmp_path / 'new').exists()

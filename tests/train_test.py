"""Tests of the training loop: steps reduce the loss, checkpoints resume, losses, augmentation."""
import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import qat_net
from engine import train
from experiments import common
from search_spaces import nb201

# few ops, so that compiling the train step stays cheap; the int8 path is tested in quant_test
ARCH = '|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|'
TINY = nb201.NB201Config(C=4, N=1, input_size=8)


def _batch(n=32, seed=0):
  """uint8 images whose label is the brightest colour channel: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  labels = np.argmax(images.astype(np.float32).mean((1, 2)), -1)
  return images, labels


@pytest.mark.parametrize('mode', ['quant', pytest.param('fp32', marks=pytest.mark.slow)])
def test_a_few_training_steps_reduce_the_loss(mode):  # fp32 steps also run in the resume test
  ops = nb201.parse_arch_str(ARCH)
  config = dataclasses.replace(TINY, num_classes=3)
  v = qat_net.init_variables(jax.random.key(0), ops, config)
  images, labels = _batch()
  if mode == 'quant':  # QAT starts from a float model: BN statistics, then calibrated ranges
    stats = jax.jit(lambda v, x: qat_net.QATNetwork(tuple(ops), config, 'fp32').apply(
        v, x, train=True, mutable=['batch_stats'])[1]['batch_stats'])
    for _ in range(5):
      v = {**v, 'batch_stats': stats(v, train._normalize(images))}
    v = qat_net.calibrate(v, ops, config, [train._normalize(images)])
  tx = optax.sgd(0.02, 0.9)
  opt_state = tx.init(v['params'])
  step = train.make_train_step(lambda m: qat_net.QATNetwork(tuple(ops), config, m), tx)
  model = qat_net.QATNetwork(tuple(ops), config, mode)
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
  ops = nb201.parse_arch_str(ARCH)
  v = qat_net.init_variables(jax.random.key(3), ops, TINY)
  tx = optax.sgd(0.1, 0.9)
  opt_state = tx.init(v['params'])
  opt_state = jax.tree.map(lambda a: a + 1.5 if hasattr(a, 'dtype') else a, opt_state)
  train.save_checkpoint(tmp_path, 7, v, opt_state)
  epoch, v2, o2 = train.restore_checkpoint(tmp_path, v, tx.init(v['params']))
  assert epoch == 7
  jax.tree.map(np.testing.assert_array_equal, v, v2)
  jax.tree.map(np.testing.assert_array_equal, opt_state, o2)


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
  results = train.train(cfg, cifar, tmp_path, progress=False, log=logs.append)
  assert logs[0] == f'resuming {tmp_path} after epoch 1'
  assert results['epochs_run_now'] == 1
  with (tmp_path / 'metrics.csv').open() as f:
    assert [int(r['epoch']) for r in csv.DictReader(f)] == [1, 2]
  assert train.latest_epoch(tmp_path) == 2


@pytest.mark.slow
def test_tiny_pipeline_fp32_then_qat_and_ptq(data_dir, tmp_path):
  cifar = data_dir / 'cifar10'
  cfg = _tiny_run()
  full = train.train(cfg, cifar, tmp_path / 'fp32', progress=False)
  assert 0 <= full['float_test_acc'] <= 1
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

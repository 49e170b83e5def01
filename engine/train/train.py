"""Training of one architecture of any space (`engine.train.trainable`): fp32, post-training
quantization and QAT, with distillation.

One run = optional init from another run's checkpoint, then a list of phases:
  * fp32: `epochs` of float training;
  * ptq:  `epochs` of float training (0 when starting from a trained fp32 run), then
          calibration of the activation ranges on `calib_batches` training batches, no training;
  * qat:  from a trained run: calibrate, then `epochs` of QAT (fake-quant, frozen BN statistics);
          from scratch: the first 80% of the *steps* in fp32 (a "quant delay", as in TF's QAT),
          so that BatchNorm statistics and activation ranges come from a model that has learnt
          something, then calibrate and QAT for the rest, one cosine schedule across both. The
          delay is counted in steps, not epochs, so `--epochs=1` works too.
A run that diverges (non-finite or exploding loss, non-finite logits, accuracy at chance after
an epoch of at least CHECK_CHANCE_STEPS steps) stops with `TrainingDiverged`. Whatever its length,
a run whose final accuracy is at chance (`engine.chance`: not above what a label-blind guess
reaches with probability 1e-3 on that test set) stops with `AtChance`, checked for every accuracy
it would report: float (fp32, ptq), fake-quant (ptq, qat) and integer-only (ptq, qat). Neither
writes results.json: it is never reported as a result (the checkpoints stay, so a tiny test run
can still be exported).
The optimizer is optax SGD with Nesterov momentum (or AdamW), a cosine schedule with linear
warmup, weight decay on conv/dense kernels only, optional label smoothing. Augmentation (random
crop from a 4-pixel zero pad, horizontal flip) runs inside the jitted step.

A workdir holds: config.json (what was trained, so a teacher or an init can be rebuilt),
ckpt/ (orbax, one per epoch, the last two kept; a rerun resumes from the latest),
metrics.csv (one row per epoch), curve.png and results.json (final test accuracies, integer
agreement, int8 weight bytes against the hardware model, throughput).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine import chance as chance_lib
from engine.train import data as data_lib
from search_spaces import registry

QUANT_MODES = ('fp32', 'ptq', 'qat')
OPTIMIZERS = ('sgd', 'adamw')


class CheckpointError(FileNotFoundError):
  """A missing or incompatible checkpoint; the message is one line naming the fix."""


class TrainingDiverged(ValueError):
  """The run diverged or learnt nothing; the message is one line saying what to change."""


class AtChance(TrainingDiverged):
  """A final accuracy is at chance (`engine.chance`). `results` holds what was measured, for the
  caller to inspect or count; it is not written as the run's results."""

  def __init__(self, message: str, results: dict):
    super().__init__(message)
    self.results = results


QAT_LR_CAP = 0.1     # QAT steps run at most at this fraction of the peak rate (make_optimizer)
QAT_DELAY = 0.8      # QAT from scratch: the fraction of the steps trained in float first
MIN_FP32_STEPS = 20   # QAT from scratch: fewest float steps before BN statistics are frozen
# An epoch this long must leave the model above chance, or the run stops early (the final
# results are checked at any length, in `evaluate`); shorter epochs may legitimately not have
# learnt anything yet.
CHECK_CHANCE_STEPS = 50


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  arch: str                      # the space's arch string (NB201: |op~0|+...)
  C: int = 16
  N: int = 5
  dataset: str = 'cifar10'
  epochs: int = 10
  quant: str = 'fp32'
  batch_size: int = 128
  optimizer: str = 'sgd'
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 1.0
  label_smoothing: float = 0.0
  calib_batches: int = 8
  init_from: Optional[str] = None
  distill_from: Optional[str] = None
  distill_alpha: float = 0.7     # weight of the soft (teacher) loss
  distill_temperature: float = 4.0
  train_images: int = 0          # 0 = all training images found
  test_images: int = 0           # 0 = the whole test split
  int_eval_images: int = -1      # integer-only inference on this many test images (-1 = all)
  seed: int = 0
  # classes of the network's head; 0: the dataset's (the space's `datasets`). A run on the
  # user's own data (an image folder or .npz, engine/train/data.py) records its data's class count.
  num_classes: int = 0
  # C and N size the network of a space with size settings (`SearchSpace.sized_lower`: NB201's);
  # the others train at their own size
  search_space: str = registry.DEFAULT

  def network(self):
    """The arch's `engine.train.trainable.Trainable` (one-line ValueError for a bad arch)."""
    from engine.train import trainable
    return trainable.trainable(self.search_space, self.arch, C=self.C, N=self.N,
                               dataset=self.dataset, num_classes=self.num_classes)

  def validate(self):
    if self.quant not in QUANT_MODES:
      raise ValueError(f'unknown --quant={self.quant!r}; choose one of {", ".join(QUANT_MODES)}')
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'unknown optimizer {self.optimizer!r}; choose one of '
                       f'{", ".join(OPTIMIZERS)}')
    for name in ('epochs', 'calib_batches'):
      if getattr(self, name) < 0:
        raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
    if self.batch_size < 1 or self.C < 1 or self.N < 1:
      raise ValueError('batch size, C and N must be positive')
    if self.quant == 'fp32' and self.epochs == 0:
      raise ValueError('--quant=fp32 with --epochs=0 trains nothing; give --epochs >= 1')
    if self.quant == 'ptq' and self.epochs == 0 and not self.init_from:
      raise ValueError('--quant=ptq with --epochs=0 needs a trained model: pass '
                       '--init_from=<fp32 workdir>')
    self.network()  # raises a one-line error for a bad arch

  def quant_delay(self, steps_per_epoch: int) -> int:
    """Global step at which QAT starts (the float steps before it are the quant delay); the
    total number of steps (no QAT) for fp32 and ptq."""
    total = self.epochs * steps_per_epoch
    if self.quant != 'qat':
      return total
    return 0 if self.init_from else int(QAT_DELAY * total)

  def check_schedule(self, steps_per_epoch: int):
    """QAT from scratch needs float steps first: BN statistics frozen at their initial values
    (mean 0, var 1) do not normalise anything, and the quantized network blows up."""
    delay = self.quant_delay(steps_per_epoch)
    if self.quant == 'qat' and not self.init_from and delay < MIN_FP32_STEPS:
      raise ValueError(
          f'QAT from scratch trains in float for the first {QAT_DELAY:.0%} of its steps to '
          f'learn BatchNorm statistics, and {delay} float steps are too few (>= '
          f'{MIN_FP32_STEPS}); give more --epochs or --train_images, or --init_from=<a trained '
          f'fp32 workdir>')


# ----------------------------------------------------------------------------- data

def load_data(data_dir, cfg: TrainConfig):
  """uint8 train/test images of whatever `data_dir` holds (CIFAR batches of `cfg.dataset`, an
  image folder or an .npz: `data_lib.load_train_test`; the user's images at the dataset's input
  size); the test set is fixed, the train set optionally truncated. A config with its own
  `num_classes` (a run on the user's data) must get data of that many classes."""
  if data_dir is None:
    raise data_lib.DataError(f'data dir {data_dir} not found; pass --data_dir=<CIFAR batches, '
                             f'an image folder or an .npz file> or set ZERONAS_DATA_DIR')
  size = cfg.network().image_size
  train, test = data_lib.load_train_test(data_dir, cfg.dataset, size)
  for part in (train, test):  # CIFAR batches at another space's resolution
    part.images = data_lib.resize_uint8(part.images, size)
  if cfg.num_classes and train.num_classes != cfg.num_classes:
    raise data_lib.DataError(f'{data_dir} has {train.num_classes} classes but this run\'s network '
                             f'has {cfg.num_classes} outputs (config.json: num_classes); pass the '
                             f'--data_dir the run was trained on')
  for part, count in ((train, cfg.train_images), (test, cfg.test_images)):
    if count:  # 0: all
      part.images, part.labels = part.images[:count], part.labels[:count]
  return train, test


def _normalize(images_uint8):
  mean = jnp.asarray(data_lib.CIFAR_MEAN)
  std = jnp.asarray(data_lib.CIFAR_STD)
  return (images_uint8.astype(jnp.float32) / 255 - mean) / std


def augment(key, images, pad: int = 4):
  """Per image: a random crop from the image zero-padded by `pad` pixels and a random horizontal
  flip (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, as NB201 trains).
  Runs on raw uint8 images, before normalisation, so the padding is black as there."""
  n, h, w, _ = images.shape
  k1, k2 = jax.random.split(key)
  offsets = jax.random.randint(k1, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k2, 0.5, (n,))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)


# ----------------------------------------------------------------------------- losses

def cross_entropy(logits, labels, smoothing=0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def distillation_loss(student_logits, teacher_logits, temperature):
  """Hinton et al. 2015: T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the batch."""
  t = jax.nn.log_softmax(teacher_logits / temperature)
  s = jax.nn.log_softmax(student_logits / temperature)
  return temperature ** 2 * jnp.mean(jnp.sum(jnp.exp(t) * (t - s), -1))


# ----------------------------------------------------------------------------- optimizer

def _kernel_mask(params):
  """Weight decay on conv/dense kernels only (not BN scales and biases)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == 'kernel', params)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  total = max(cfg.epochs * steps_per_epoch, 1)
  warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
  cosine = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total, 0.0)
  delay = cfg.quant_delay(steps_per_epoch)
  # QAT steps run at most at a tenth of the peak rate: BN statistics are frozen once
  # quantization starts, so nothing renormalises the weights, and 0.05 (half way through a
  # cosine from 0.1) took a 49%-accurate NB201 net to chance within 10 steps, while 0.01
  # recovered it to 48% in 40 (measured 2026-12-02, docs/training.md)
  cap = QAT_LR_CAP * cfg.lr
  schedule = lambda count: jnp.where(count >= delay, jnp.minimum(cosine(count), cap),
                                     cosine(count))
  if cfg.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_kernel_mask)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay, _kernel_mask),
                     optax.sgd(schedule, cfg.momentum, nesterov=True))


def make_train_step(model_fn, tx, smoothing=0.0, teacher=None, alpha=0.0, temperature=1.0):
  """Jitted (variables, opt_state, key, images uint8, labels) -> (variables, opt_state, metrics).

  `model_fn(mode)` gives the Flax network for a mode (`engine.quant.graph_qat.GraphNetwork`); the
  mode is static, one compile per phase.
  `teacher`: the teacher model, whose eval logits on the same augmented batch the student is
  distilled towards; its variables come as the step's last argument (not baked into the jit).
  """

  @functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
  def step(mode, variables, opt_state, key, images, labels, teacher_vars=None):
    x = _normalize(augment(key, images))
    model = model_fn(mode)
    mutable = ['batch_stats'] if mode == 'fp32' else ['quant']
    soft = None
    if teacher is not None:
      soft = jax.lax.stop_gradient(teacher.apply(teacher_vars, x, train=False))

    def loss_fn(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                    update_ranges=mode == 'quant', mutable=mutable)
      loss = cross_entropy(logits, labels, smoothing)
      if soft is not None:
        loss = (1 - alpha) * loss + alpha * distillation_loss(logits, soft, temperature)
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'])
    upd, opt_state = tx.update(grads, opt_state, variables['params'])
    new = {**variables, **updates, 'params': optax.apply_updates(variables['params'], upd)}
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return new, opt_state, {'loss': loss, 'acc': acc}

  return step


def make_eval_fn(model):
  @jax.jit
  def logits_fn(variables, images):
    return model.apply(variables, _normalize(images), train=False)
  return logits_fn


def predict(logits_fn, variables, images, batch_size=500) -> np.ndarray:
  """Logits for uint8 images, in fixed-size batches (the last one padded: one compile)."""
  out = []
  batch_size = min(batch_size, len(images))
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(logits_fn(variables, chunk))[:n])
  return np.concatenate(out)


# ----------------------------------------------------------------------------- checkpoints

def _manager(workdir, create=True):
  import orbax.checkpoint as ocp  # heavy import, only when checkpointing
  path = pathlib.Path(workdir).absolute() / 'ckpt'
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=create)
  return ocp.CheckpointManager(path, options=options)


def save_checkpoint(workdir, epoch: int, variables, opt_state):
  import orbax.checkpoint as ocp
  mgr = _manager(workdir)
  if epoch in mgr.all_steps():  # PTQ re-saves its last epoch with calibrated ranges
    mgr.delete(epoch)
  mgr.save(epoch, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                          opt_state=ocp.args.StandardSave(opt_state)))
  mgr.wait_until_finished()
  mgr.close()


def latest_epoch(workdir) -> Optional[int]:
  if not (pathlib.Path(workdir) / 'ckpt').is_dir():
    return None
  mgr = _manager(workdir, create=False)
  step = mgr.latest_step()
  mgr.close()
  return step


def _first_line(err: BaseException) -> str:
  return (str(err).strip().splitlines() or [''])[0][:200]


def check_checkpoint_index(workdir, fix: str = 'delete that folder to resume from the '
                           'checkpoint before it, or train in a new --workdir'):
  """CheckpointError ('checkpoint <path> is damaged (...); `fix`') when the index of the latest
  checkpoint in `workdir` cannot be read (`files.check_ocdbt`: read before orbax's asyncio
  restore, whose failure on a damaged index trails tracebacks); nothing without checkpoints."""
  from engine import files
  epoch = latest_epoch(workdir)
  if epoch is None:
    return
  path = pathlib.Path(workdir) / 'ckpt' / str(epoch)
  try:
    files.check_ocdbt(path)
  except ValueError as err:
    raise CheckpointError(f'checkpoint {path} is damaged ({_first_line(err)}); {fix}') from None


def restore_checkpoint(workdir, like_variables, like_opt_state=None):
  """(epoch, variables, opt_state or None) of the latest checkpoint in `workdir`, restored into
  the structure of the given templates (a mismatch is a CheckpointError naming both)."""
  import orbax.checkpoint as ocp
  epoch = latest_epoch(workdir)
  if epoch is None:
    raise CheckpointError(f'no checkpoint in {workdir}/ckpt; train there first (or fix the path)')
  check_checkpoint_index(workdir)
  mgr = _manager(workdir, create=False)
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  items = {'variables': ocp.args.StandardRestore(abstract(like_variables))}
  if like_opt_state is not None:
    items['opt_state'] = ocp.args.StandardRestore(abstract(like_opt_state))
  try:
    restored = mgr.restore(epoch, args=ocp.args.Composite(**items))
  except Exception as err:  # pylint: disable=broad-except (orbax raises bare Exception on bad data)
    # the run's config.json was already held against the flags (load_run, `train`'s "holds a
    # different run"), so a structure that does not fit is as likely a damaged file as another
    # arch; both are named
    raise CheckpointError(f'checkpoint {workdir}/ckpt/{epoch} cannot be restored '
                          f'({type(err).__name__}: {_first_line(err)}): it is damaged, of '
                          f'another arch/config, or an NB201 run saved before 2026-12-08 (its '
                          f'layers have graph node names since; retrain it); delete that folder '
                          f'to resume from the checkpoint before it, or train in a new '
                          f'--workdir') from None
  finally:
    mgr.close()
  return epoch, restored['variables'], restored.get('opt_state') if like_opt_state else None


def _stored_config(path) -> dict:
  """A workdir's config.json with the defaults of fields added since it was written (a run
  from before `num_classes` existed resumes)."""
  stored = json.loads(pathlib.Path(path).read_text())
  try:
    return dataclasses.asdict(TrainConfig(**stored))
  except TypeError:
    return stored


def load_run(workdir):
  """(TrainConfig, variables) of a finished run: for --init_from and --distill_from."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise CheckpointError(f'{path} not found; point the flag at a workdir written by '
                          f'--experiment=train')
  cfg = TrainConfig(**json.loads(path.read_text()))
  like = cfg.network().init(jax.random.key(0))
  return cfg, restore_checkpoint(workdir, like)[1]


# ----------------------------------------------------------------------------- outputs

METRIC_FIELDS = ('epoch', 'mode', 'train_loss', 'train_acc', 'test_acc', 'images_per_s',
                 'seconds')


def append_metrics(workdir, row: dict):
  path = pathlib.Path(workdir) / 'metrics.csv'
  new = not path.is_file()
  with path.open('a', newline='') as f:
    writer = csv.DictWriter(f, METRIC_FIELDS)
    if new:
      writer.writeheader()
    writer.writerow(row)


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / 'metrics.csv'
  if not path.is_file():
    return []
  with path.open() as f:
    return list(csv.DictReader(f))


def plot_curves(workdir) -> Optional[pathlib.Path]:
  """curve.png: train loss and train/test accuracy per epoch (None without matplotlib)."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    print('matplotlib not installed: no curve.png', file=sys.stderr)
    return None
  rows = read_metrics(workdir)
  if not rows:
    return None
  ep = [int(r['epoch']) for r in rows]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
  a1.plot(ep, [float(r['train_loss']) for r in rows], 'o-')
  a1.set(xlabel='epoch', ylabel='train loss')
  a2.plot(ep, [float(r['train_acc']) for r in rows], 'o-', label='train')
  a2.plot(ep, [float(r['test_acc']) for r in rows], 's-', label='test')
  a2.set(xlabel='epoch', ylabel='accuracy')
  a2.legend()
  fig.suptitle(pathlib.Path(workdir).name)
  fig.tight_layout()
  path = pathlib.Path(workdir) / 'curve.png'
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def hardware_weight_counts(graph) -> dict:
  """int8 weight and int32 bias element counts the hardware model charges to flash."""
  from hardware import graph as graph_lib
  st = graph_lib.node_stats(graph)
  return {'weights': int(st.weights.sum()), 'biases': int(st.biases.sum())}


# ----------------------------------------------------------------------------- the run

def train(cfg: TrainConfig, data_dir, workdir, progress=True, log=print, data=None) -> dict:
  """Runs (or resumes) a training run in `workdir`; returns the results dict. `data`: (train,
  test) ImageSets already loaded (a finalist stage's train/validation split) in place of
  `data_dir`'s."""
  cfg.validate()
  workdir = pathlib.Path(workdir)
  train_set, test_set = data if data is not None else load_data(data_dir, cfg)
  if len(train_set.images) < cfg.batch_size:
    raise data_lib.DataError(f'the batch ({cfg.batch_size}, --train_batch) is larger than the '
                             f'{len(train_set.images)} training images used; lower --train_batch '
                             f'or use more images (--train_images)')
  if not cfg.num_classes and train_set.format in ('folder', 'npz'):
    cfg = dataclasses.replace(cfg, num_classes=train_set.num_classes)  # a C-way head
  net = cfg.network()

  model_fn = net.model_fn
  variables = net.init(jax.random.key(cfg.seed))
  if cfg.init_from:
    src_cfg, variables = load_run(cfg.init_from)
    src = src_cfg.network()
    if (src.space, src.arch, src.size) != (net.space, net.arch, net.size):
      size = ''.join(f' {k}={v}' for k, v in src.size.items())
      raise CheckpointError(f'--init_from={cfg.init_from} trained {src.space} {src.arch}{size}; '
                            f'pass the same --search_space, --arch and width')
    if src.num_classes != net.num_classes:
      raise CheckpointError(f'--init_from={cfg.init_from} has {src.num_classes} '
                            f'classes, this data {net.num_classes}; start from a run trained '
                            f'on the same classes')
  teacher = teacher_vars = None
  if cfg.distill_from:
    t_cfg, teacher_vars = load_run(cfg.distill_from)
    if t_cfg.dataset != cfg.dataset:
      raise CheckpointError(f'--distill_from={cfg.distill_from} was trained on {t_cfg.dataset}, '
                            f'not {cfg.dataset}; distil from a teacher of the same dataset')
    t_net = t_cfg.network()
    if t_net.num_classes != net.num_classes:
      raise CheckpointError(f'--distill_from={cfg.distill_from} has '
                            f'{t_net.num_classes} classes, this data '
                            f'{net.num_classes}; distil from a teacher of the same classes')
    if t_net.image_size != net.image_size:
      raise CheckpointError(f'--distill_from={cfg.distill_from} takes {t_net.image_size}px '
                            f'images, this arch {net.image_size}px; distil from a teacher of '
                            f'the same input size')
    teacher = t_net.model_fn('fp32')
  workdir.mkdir(parents=True, exist_ok=True)
  cfg_path = workdir / 'config.json'
  if not cfg_path.is_file() and (workdir / 'results.json').is_file():
    raise CheckpointError(f'{workdir} holds another job\'s results.json (no training config.json: '
                          f'a search?); train in a new --workdir')
  ours = dataclasses.asdict(cfg)
  stored = _stored_config(cfg_path) if cfg_path.is_file() else ours
  if stored != ours:
    if latest_epoch(workdir) is not None:
      keys = sorted(k for k in set(stored) | set(ours) if stored.get(k) != ours.get(k))
      raise CheckpointError(f'{workdir} holds a different run (config.json differs in '
                            f'{", ".join(keys)}); use a new --workdir or the same flags to resume')
    # a start that stopped before its first checkpoint (refused, diverged in epoch 1): nothing
    # trained is lost, so the corrected command starts over there
    (workdir / 'metrics.csv').unlink(missing_ok=True)
  cfg_path.write_text(json.dumps(ours, indent=1))

  n_train = len(train_set.images)
  steps_per_epoch = max(n_train // cfg.batch_size, 1)
  tx = make_optimizer(cfg, steps_per_epoch)
  opt_state = tx.init(variables['params'])
  start = 0
  if latest_epoch(workdir) is not None:
    start, variables, opt_state = restore_checkpoint(workdir, variables, opt_state)
    log(f'resuming {workdir} after epoch {start}')
  log(f'data: {net.num_classes} classes, {n_train} train / {len(test_set.labels)} test '
      f'images used; ' + ' / '.join(dict.fromkeys((train_set.source, test_set.source))))
  # Commit everything the step takes to one device: its outputs are committed, and a first
  # call with uncommitted (freshly initialised or restored) inputs would compile it twice.
  variables, opt_state, teacher_vars = jax.device_put((variables, opt_state, teacher_vars),
                                                      jax.devices()[0])
  step = make_train_step(model_fn, tx, cfg.label_smoothing, teacher, cfg.distill_alpha,
                         cfg.distill_temperature)
  eval_fns = {m: make_eval_fn(model_fn(m)) for m in ('fp32', 'quant')}
  train_images = jnp.asarray(train_set.images)
  train_labels = jnp.asarray(train_set.labels, jnp.int32)

  def calib_batches(v):
    rng = np.random.default_rng(cfg.seed + 1)
    idx = rng.permutation(n_train)[:cfg.calib_batches * cfg.batch_size]
    norm = lambda i: _normalize(train_images[idx[i:i + cfg.batch_size]])
    return net.calibrate(v, (norm(i) for i in range(0, len(idx), cfg.batch_size)))

  cfg.check_schedule(steps_per_epoch)
  delay = cfg.quant_delay(steps_per_epoch)
  explode = 10.0 * np.log(net.num_classes)  # cross entropy this far above chance: diverged
  throughput = []
  for ep in range(start, cfg.epochs):
    key = jax.random.fold_in(jax.random.key(cfg.seed), ep)
    perm = np.asarray(jax.random.permutation(key, n_train))
    losses, accs, modes = [], [], []
    t_steps, n_imgs = {}, {}  # per mode, leaving out each mode's first step (it may compile)
    bar = _progress(range(steps_per_epoch), progress, f'epoch {ep + 1}/{cfg.epochs}')
    for s in bar:
      g = ep * steps_per_epoch + s
      mode = 'quant' if g >= delay else 'fp32'
      if g == delay and cfg.quant == 'qat':
        variables = calib_batches(variables)  # ranges from the float model before QAT starts
      if not modes or modes[-1] != mode:
        modes.append(mode)
      idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
      t0 = time.perf_counter()
      variables, opt_state, m = step(mode, variables, opt_state,
                                     jax.random.fold_in(key, s + 1), train_images[idx],
                                     train_labels[idx], teacher_vars)
      m = jax.device_get(m)
      if s > 0 and g != delay:
        t_steps[mode] = t_steps.get(mode, 0.0) + time.perf_counter() - t0
        n_imgs[mode] = n_imgs.get(mode, 0) + len(idx)
      loss = float(m['loss'])
      if not np.isfinite(loss) or loss > explode:
        raise TrainingDiverged(
            f'training diverged: {mode} loss {loss:.4g} at epoch {ep + 1} step {s + 1} (chance '
            f'is {np.log(net.num_classes):.2f}); lower --lr (now {cfg.lr:g}) or raise '
            f'--warmup_epochs (now {cfg.warmup_epochs:g})')
      losses.append(loss)
      accs.append(float(m['acc']))
      if hasattr(bar, 'set_postfix'):
        bar.set_postfix(loss=f'{loss:.3f}', mode=mode)
    mode = modes[-1]
    for m_, t_ in t_steps.items():
      throughput.append((m_, n_imgs[m_] / t_))
    ips = sum(n_imgs.values()) / sum(t_steps.values()) if t_steps else float('nan')
    t0 = time.perf_counter()
    logits = predict(eval_fns[mode], variables, test_set.images)
    _check_finite(logits, f'{mode} model after epoch {ep + 1}', cfg)
    test_acc = float(np.mean(logits.argmax(-1) == test_set.labels))
    append_metrics(workdir, dict(epoch=ep + 1, mode='+'.join(modes),
                                 train_loss=f'{np.mean(losses):.4f}',
                                 train_acc=f'{np.mean(accs):.4f}', test_acc=f'{test_acc:.4f}',
                                 images_per_s=f'{ips:.1f}',
                                 seconds=f'{sum(t_steps.values()) + time.perf_counter() - t0:.1f}'))
    log(f'epoch {ep + 1} [{"+".join(modes)}] loss {np.mean(losses):.4f} train acc '
        f'{np.mean(accs):.4f} test acc {test_acc:.4f} ({ips:.0f} img/s)')
    verdict = chance_lib.judge(test_acc, test_set.labels, net.num_classes)
    if steps_per_epoch >= CHECK_CHANCE_STEPS and verdict.at_chance:
      raise TrainingDiverged(
          f'the model is at chance after epoch {ep + 1} in {mode} mode (test acc '
          f'{verdict.describe()}): it is not learning; lower --lr (now {cfg.lr:g}) or check the '
          f'data')
    save_checkpoint(workdir, ep + 1, variables, opt_state)

  if cfg.quant == 'ptq':
    variables = calib_batches(variables)
    save_checkpoint(workdir, cfg.epochs, variables, opt_state)  # what export reads
  try:
    results = evaluate(cfg, variables, test_set, eval_fns, log)
  except AtChance as err:
    err.results['epochs_run_now'] = cfg.epochs - start
    raise
  results['train_images_per_s'] = {m: float(np.nanmean([r for mm, r in throughput if mm == m]))
                                   for m in {m for m, _ in throughput}} if throughput else {}
  results['epochs_run_now'] = cfg.epochs - start
  results['data'] = {'source': train_set.source, 'num_classes': net.num_classes,
                     'class_names': list(train_set.class_names)}  # logit i is class_names[i]
  (workdir / 'results.json').write_text(json.dumps(results, indent=1))
  plot_curves(workdir)
  return results


def evaluate(cfg: TrainConfig, variables, test_set, eval_fns, log=print) -> dict:
  """Test accuracy in float and, when quantized, fake-quant and integer-only with agreement."""
  labels = test_set.labels
  net_ = cfg.network()
  res: dict[str, Any] = {'search_space': cfg.search_space, 'arch': cfg.arch, 'quant': cfg.quant,
                         'test_images': int(len(labels))}
  res.update(net_.size)
  if cfg.quant == 'qat':
    # A QAT model is its fake-quant graph: it trained with activations clipped to their int8
    # ranges (no gradient beyond them), so its float graph, unclipped, is not the same model
    # (15% where the fake-quant graph had 59%, arch 9). Not reported as an accuracy.
    res['float_test_acc'] = None
  else:
    float_logits = predict(eval_fns['fp32'], variables, test_set.images)
    _check_finite(float_logits, 'float model', cfg)
    res['float_test_acc'] = float(np.mean(float_logits.argmax(-1) == labels))
    log(f'float test acc {res["float_test_acc"]:.4f}')
    _check_above_chance(res, 'float_test_acc', labels, cfg)
  if cfg.quant == 'fp32':
    return res
  fq_logits = predict(eval_fns['quant'], variables, test_set.images)
  _check_finite(fq_logits, 'fake-quant int8 model', cfg)
  fq_pred = fq_logits.argmax(-1)
  res['fake_quant_test_acc'] = float(np.mean(fq_pred == labels))
  log(f'fake-quant int8 test acc {res["fake_quant_test_acc"]:.4f}')
  _check_above_chance(res, 'fake_quant_test_acc', labels, cfg)
  net = net_.integer(variables)
  n = len(labels) if cfg.int_eval_images < 0 else min(cfg.int_eval_images, len(labels))
  if n:
    t0 = time.perf_counter()
    x = np.asarray(_normalize(test_set.images[:n]))
    int_pred = net.predict(x)
    res['int_eval_images'] = n
    res['int_test_acc'] = float(np.mean(int_pred == labels[:n]))
    res['int_fake_quant_agreement'] = float(np.mean(int_pred == fq_pred[:n]))
    res['int_images_per_s'] = n / (time.perf_counter() - t0)
    log(f'integer-only test acc {res["int_test_acc"]:.4f}, agreement with fake-quant '
        f'{res["int_fake_quant_agreement"]:.4%} on {n} images')
    _check_above_chance(res, 'int_test_acc', labels[:n], cfg)
  counts = net.weight_counts()
  res['int8_weight_bytes'] = counts['weights']
  res['int32_bias_count'] = counts['biases']
  if 'batchnorm_affine' in counts:  # BNs on their own (NB201's head): the hardware model does
    res['batchnorm_affine'] = counts['batchnorm_affine']  # not count them
  res['hardware_model'] = hardware_weight_counts(net_.graph)
  return res


_WHAT = {'float_test_acc': 'float', 'fake_quant_test_acc': 'fake-quant int8',
         'int_test_acc': 'integer-only int8'}


def _check_above_chance(res: dict, key: str, labels, cfg: TrainConfig):
  """AtChance when res[key] is at chance on `labels` (every accuracy a run reports passes here,
  whatever the run's length). The message says which model and, for a quantized one whose float
  or fake-quant model is above chance, that quantization (or the integer kernels) broke it."""
  num_classes = cfg.network().num_classes
  verdict = chance_lib.judge(res[key], labels, num_classes)
  res.setdefault('chance', {})[key] = dataclasses.asdict(verdict)
  if not verdict.at_chance:
    return
  better = [k for k in ('float_test_acc', 'fake_quant_test_acc') if k != key
            and res.get(k) is not None and not res['chance'].get(k, {}).get('at_chance', True)]
  if better:
    fix = (f'the {_WHAT[better[-1]]} model reaches {res[better[-1]]:.3f}, so quantization broke '
           f'it; raise --calib_batches or train with --quant=qat' if key != 'int_test_acc' else
           f'the fake-quant model reaches {res[better[-1]]:.3f}, so the integer kernels broke it '
           f'(a bug: please report it)')
  else:
    fix = (f'the run learnt nothing; train longer (--epochs, --train_images), lower --lr (now '
           f'{cfg.lr:g}), or test on more images (--test_images, --int_eval_images) if the test '
           f'set is too small to tell')
  res['flag'] = 'at_chance'
  raise AtChance(f'{_WHAT[key]} test acc {verdict.describe()}: {fix}; not reported as a result',
                 res)


def _check_finite(logits, what: str, cfg: TrainConfig):
  """Non-finite logits are a diverged model, whatever its argmax happens to score."""
  bad = int(np.size(logits) - np.isfinite(logits).sum())
  if bad:
    raise TrainingDiverged(
        f'training diverged: the {what} gives {bad} non-finite logits on the test set; lower '
        f'--lr (now {cfg.lr:g}) or raise --warmup_epochs (now {cfg.warmup_epochs:g})')


def _progress(iterable, enabled, desc):
  if not enabled:
    return iterable
  from tqdm import tqdm
  return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

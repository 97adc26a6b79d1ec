"""The one training loop: any objective, any tf.distribute strategy, exact resume, export.

Per step, `strategy.run` executes the objective on each replica inside one `tf.function` traced
once; losses are divided by the global batch size. The per-example eps memory is a mirrored
variable, read by gather in the replicas and rewritten in cross-replica context from the
all-gathered (index, eps) pairs, so every replica and worker holds the same table.

Everything a resumed run needs is in the checkpoint (model, optimizer, step, eps memory, best
validation margin); data order and attack randomness are functions of (seed, step), so a resumed
run repeats an uninterrupted one exactly (with op determinism, see `configure_process`).

Building a `Trainer` leaves process-wide state alone: the model is initialised from per-layer
initializer seeds derived from `config.seed`, and op determinism / global seeds are set only by
`configure_process`, which the CLI's main calls.

Multi-worker checkpoints follow TF's MultiWorkerMirroredStrategy custom-loop pattern: every worker
saves (saving may involve collectives), only the chief's copy in model_dir is kept and read; a
non-chief worker writes to a scratch directory that is deleted right after each save. Every worker
restores from the chief's checkpoint, so a crash between the chief's save and a worker's cannot
leave the workers on different steps. The model_dir must be on storage all workers can read.
"""
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import export as export_lib
from mma_tf import models
from mma_tf import objectives
from mma_tf.attacks import example_seeds
from mma_tf.evaluation.validation import validation_sums

CONFIG_FILE = 'config.json'


class TorchSGD(keras.optimizers.Optimizer):
  """PyTorch's SGD with momentum (dampening 0, no Nesterov): v = mu v + g; w -= lr v.

  Keras' SGD keeps lr inside v instead (v = mu v - lr g), which differs from the released code
  just after each learning-rate drop. Weight decay is not applied here: the trainer adds
  0.5 * wd * ||w||^2 to the loss, so g already holds PyTorch's `g + wd * w`.
  """

  def __init__(self, learning_rate, momentum=0.9, name='torch_sgd', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self._velocities = [self.add_variable_from_reference(v, 'velocity') for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    velocity = self._velocities[self._get_variable_index(variable)]
    gradient = tf.cast(gradient, variable.dtype)
    self.assign(velocity, self.momentum * velocity + gradient)
    self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * velocity)

  def get_config(self):
    return dict(super().get_config(), momentum=self.momentum)


def learning_rate(config):
  """A constant, or PyTorch's MultiStepLR stepped per iteration: the step numbered k (1-based)
  uses lr_values[i] where i counts the boundaries b < k. Keras calls the schedule with the number
  of steps already taken (k - 1)."""
  if not config.lr_values:
    return config.learning_rate
  # PyTorch sets the new rate after `boundary` steps; Keras' schedule switches when
  # iterations > boundary, i.e. one step later unless the boundary is shifted by one.
  return keras.optimizers.schedules.PiecewiseConstantDecay(
      [b - 1 for b in config.lr_boundaries], list(config.lr_values))


def build_optimizer(config):
  if config.optimizer == 'adam':
    return keras.optimizers.Adam(learning_rate(config), epsilon=1e-8)  # PyTorch's eps
  return TorchSGD(learning_rate(config), momentum=config.momentum)


def configure_process(config):
  """Process-wide set-up for a training run (the CLI's main calls it, before building anything).

  Enables TF op determinism when config.deterministic (it cannot be undone in this process) and
  seeds Python, NumPy and TF's global generators with config.seed. The trainer itself needs
  neither for its own randomness (seeded initializers, stateless attack and data seeds); op
  determinism makes the float reductions reproducible, which exact resume relies on.
  """
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)


def _op_determinism_enabled():
  try:
    from tensorflow.python.framework import config as tf_config  # no public getter in TF 2.21
    return bool(tf_config.is_op_determinism_enabled())
  except (ImportError, AttributeError):
    return True  # cannot tell: do not block the run


def make_strategy(name):
  """'default' (one device), 'mirrored' (all local GPUs) or 'multi_worker' (TF_CONFIG hosts)."""
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if name == 'multi_worker':
    if 'TF_CONFIG' not in os.environ:
      raise ValueError('--strategy=multi_worker needs the TF_CONFIG environment variable '
                       '(cluster addresses and this task); see BUILD.md.')
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"Unknown strategy {name!r}; choose 'default', 'mirrored' or 'multi_worker'.")


def is_chief(strategy):
  """True on the worker that writes checkpoints, summaries and exports (or with one worker)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  return resolver.task_type in ('chief', None) or (
      resolver.task_type == 'worker' and resolver.task_id == 0
      and 'chief' not in resolver.cluster_spec().as_dict())


class NonFiniteLossError(FloatingPointError):
  pass


class Trainer:
  """Builds model, optimizer, data and state for `config` in `model_dir`; `train()` runs it."""

  def __init__(self, config, model_dir, strategy=None, data=None, tfds_data_dir=None,
               log=print):
    self.config = config
    self.model_dir = model_dir
    self.strategy = strategy or tf.distribute.get_strategy()
    self.log = log
    config.validate(self.strategy.num_replicas_in_sync)
    self.is_chief = is_chief(self.strategy)
    if config.deterministic and not _op_determinism_enabled():
      raise ValueError('config.deterministic is set but TF op determinism is off in this process; '
                       'call mma_tf.trainer.configure_process(config) first (the CLI does).')
    self.data = data or data_lib.load(config.dataset, tfds_data_dir)
    self._check_model_dir()
    spec = self.data.spec
    self.steps_per_epoch = self.data.steps_per_epoch(config.batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f'--batch_size={config.batch_size} exceeds the '
                       f'{len(self.data.train_indices)} training images of {spec.name}.')
    self.objective = objectives.build_objective(config)
    with self.strategy.scope():
      self.model = self._build_model()
      self.optimizer = build_optimizer(config)
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
      self.eps_memory = tf.Variable(tf.zeros([self.data.num_train_total]), trainable=False,
                                    name='eps_memory')
      self.best_margin = tf.Variable(-1.0, trainable=False, name='best_val_margin')
      self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='best_step')
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step, eps_memory=self.eps_memory,
        best_margin=self.best_margin, best_step=self.best_step)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self._write_dir('ckpt'), max_to_keep=3)
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model), self._write_dir('best'), max_to_keep=1)
    # Neither step is compiled around strategy.run: XLA compiles for one device, so with
    # --jit_compile only what runs inside a replica is compiled (the attacks in the training step,
    # objectives._compiled; the whole replica function in validation).
    self._train_step = tf.function(self._train_step_fn, jit_compile=False)
    self._eval_step = tf.function(self._eval_step_fn, jit_compile=False)

  def _build_model(self):
    spec = self.data.spec
    return models.build_model(self.config.model, spec.image_shape, spec.num_classes,
                              seed=self.config.seed, sync_batchnorm=self.config.sync_batchnorm)

  # ------------------------------------------------------------------------------ model dir
  def _check_model_dir(self):
    try:
      os.makedirs(self.model_dir, exist_ok=True)
      probe = tempfile.NamedTemporaryFile(dir=self.model_dir, delete=True)
      probe.close()
    except OSError as e:
      raise ValueError(f'--model_dir={self.model_dir} is not writable ({e}).') from e
    path = os.path.join(self.model_dir, CONFIG_FILE)
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      # Resuming with other settings would mix two runs in one directory; fields marked
      # resumable (loop length, cadence) may change, and fields added by a later version resume
      # at their default (configs.resume_conflicts).
      conflicts = configs.resume_conflicts(saved, self.config)
      if conflicts:
        raise ValueError(
            f'{self.model_dir} holds a run with another configuration ({"; ".join(conflicts)}). '
            'Use a new --model_dir, or the same flags to resume.')
    if self.is_chief:
      _atomic_write(path, self.config.to_json())

  def _write_dir(self, name):
    """Chief writes to the model dir; other workers to a scratch dir (all must save)."""
    if self.is_chief:
      return os.path.join(self.model_dir, name)
    resolver = self.strategy.cluster_resolver
    return os.path.join(self.model_dir, f'.worker_{resolver.task_type}_{resolver.task_id}', name)

  def _save(self, manager, step):
    """Saves on every worker; a non-chief's scratch copy is deleted at once (never read)."""
    manager.save(checkpoint_number=step)
    if not self.is_chief:
      tf.io.gfile.rmtree(manager.directory)

  def _latest_chief_checkpoint(self):
    return tf.train.latest_checkpoint(os.path.join(self.model_dir, 'ckpt'))

  # ------------------------------------------------------------------------------ steps
  def _train_step_fn(self, iterator):
    config = self.config
    global_batch = config.batch_size
    batch = next(iterator)

    def replica_step(batch):
      x, y, index = batch['image'], batch['label'], batch['index']
      eps0 = tf.gather(self.eps_memory, index)
      seeds = example_seeds(tf.stack([tf.cast(config.seed, tf.int64), self.step]), index)
      with tf.GradientTape() as tape:
        loss, eps_out, stats = self.objective(self.model, x, y, eps0, seeds, tape, global_batch)
        total = loss
        if config.weight_decay:
          l2 = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.model.trainable_variables])
          total += 0.5 * config.weight_decay * l2 / self.strategy.num_replicas_in_sync
      grads = tape.gradient(total, self.model.trainable_variables)
      self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
      sums = {k: tf.reduce_sum(v) for k, v in stats.items()}
      return loss, index, eps_out, sums

    loss, index, eps_out, sums = self.strategy.run(replica_step, args=(batch,))
    reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    out = {k: reduce(v) for k, v in sums.items()}
    out['total_loss'] = reduce(loss)
    index = self.strategy.gather(index, axis=0)
    eps_out = self.strategy.gather(eps_out, axis=0)
    if self.objective.uses_eps_memory:
      self.eps_memory.assign(
          tf.tensor_scatter_nd_update(self.eps_memory, index[:, None], eps_out))
    self.step.assign_add(1)
    out['eps'] = eps_out
    return out

  def _eval_step_fn(self, batch):
    config = self.config

    def replica_sums(batch):
      predict = lambda images: self.model(images, training=False)
      return validation_sums(predict, batch['image'], batch['label'], batch['index'],
                             batch['weight'], config)

    def replica_eval(batch):
      # No cross-replica op inside, so the replica's whole work compiles. A new tf.function per
      # replica (as objectives._compiled): one shared trace would capture replica 0's variables.
      if config.jit_compile:
        return tf.function(replica_sums, jit_compile=True)(batch)
      return replica_sums(batch)

    sums = self.strategy.run(replica_eval, args=(batch,))
    return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in sums.items()}

  # ------------------------------------------------------------------------------ loops
  def evaluate(self, split='validation'):
    """Clean and PGD (test_eps) accuracy and the average AN-PGD margin on a split."""
    images, labels, indices = self.data.eval_split(split)
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.eval_dataset(images, labels, indices, self.config.eval_batch_size,
                                          ctx))
    totals = {}
    for batch in dataset:
      for k, v in self._eval_step(batch).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    n = max(totals.get('count', 0.0), 1.0)
    return {'clean_acc': totals['clean_correct'] / n, 'pgd_acc': totals['pgd_correct'] / n,
            'avg_margin': totals['margin'] / n}

  def restore(self):
    """Restores the chief's latest checkpoint, if any; returns the step restored (0 for a new run).

    Every worker reads the chief's directory, so all replicas start from the same weights, step
    and eps table (a non-chief keeps no checkpoint of its own).
    """
    latest = self._latest_chief_checkpoint()
    if latest is None:
      return 0
    try:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise ValueError(f'Checkpoint {latest} cannot be restored ({type(e).__name__}: '
                       f'{str(e).splitlines()[0][:300]}). It is corrupt or from another model; '
                       'move it away to start over, or point --model_dir elsewhere.') from e
    return int(self.step.numpy())

  def train(self):
    """Trains to `train_steps`, validating and checkpointing every epoch; exports the best model.

    Returns a summary dict (final step, best margin and its step, last validation metrics).
    """
    config = self.config
    start = self.restore()
    if start:
      self.log(f'Resumed from step {start} in {self.model_dir}.')
    summary_writer = tf.summary.create_file_writer(
        os.path.join(self.model_dir, 'train') if self.is_chief else self._write_dir('train'))
    val_writer = tf.summary.create_file_writer(
        os.path.join(self.model_dir, 'validation') if self.is_chief else self._write_dir('val'))
    step = start
    t0 = time.time()
    last_val = {}
    window = {}
    while step < config.train_steps:
      epoch, start_batch = divmod(step, self.steps_per_epoch)
      dataset = self.strategy.distribute_datasets_from_function(
          lambda ctx, e=epoch, b=start_batch: data_lib.train_dataset(
              self.data, config.batch_size, config.seed, e, b, ctx))
      iterator = iter(dataset)
      epoch_end = min((epoch + 1) * self.steps_per_epoch, config.train_steps)
      while step < epoch_end:
        out = self._train_step(iterator)
        step += 1
        loss = float(out['total_loss'])
        if not np.isfinite(loss):
          latest = self._latest_chief_checkpoint()
          raise NonFiniteLossError(
              f'Non-finite loss ({loss}) at step {step}. Nothing was saved after it; the last '
              f'good checkpoint is {latest or "none (no checkpoint yet)"}. Lower the learning '
              'rate or check the data; re-running resumes from that checkpoint.')
        for k, v in out.items():
          if k != 'eps':
            window[k] = window.get(k, 0.0) + float(v)
        window['examples'] = window.get('examples', 0) + config.batch_size
        if step % config.log_every == 0 or step == epoch_end:
          self._log_train(summary_writer, step, window, out['eps'], t0, start)
          window = {}
        if step % config.checkpoint_every == 0 and step != epoch_end:
          self._save(self.manager, step)
      last_val = self.evaluate('validation')
      improved = last_val['avg_margin'] > float(self.best_margin.numpy())
      if improved:
        self.best_margin.assign(last_val['avg_margin'])
        self.best_step.assign(step)
        self._save(self.best_manager, step)
      with val_writer.as_default(step=step):
        for k, v in last_val.items():
          tf.summary.scalar(k, v)
      self.log(f'epoch {epoch + 1} step {step}: validation clean_acc {last_val["clean_acc"]:.4f} '
               f'pgd_acc@{config.test_eps:g} {last_val["pgd_acc"]:.4f} avg_margin '
               f'{last_val["avg_margin"]:.4f}{" (best)" if improved else ""}')
      self._save(self.manager, step)
    export_dir = os.path.join(self.model_dir, 'export')
    if self.is_chief and (start < config.train_steps or not os.path.exists(export_dir)):
      self.export_best(export_dir)
    self._cleanup_worker_dirs()
    summary = {'step': step, 'best_val_margin': float(self.best_margin.numpy()),
               'best_step': int(self.best_step.numpy()), 'validation': last_val,
               'export': export_dir, 'seconds': round(time.time() - t0, 1)}
    if self.is_chief:
      _atomic_write(os.path.join(self.model_dir, 'summary.json'), json.dumps(summary, indent=2))
    return summary

  def _log_train(self, writer, step, window, eps, t0, start):
    n = window['examples']
    metrics = {k: window[k] / n for k in window if k not in ('examples', 'total_loss')}
    if 'slm_correct' in window and window['slm_correct'] > 0:
      metrics['avg_eps'] = window['eps_hat'] / window['slm_correct']
      metrics['frac_at_dmax'] = window['at_dmax'] / window['slm_correct']
    metrics.pop('eps_hat', None), metrics.pop('at_dmax', None)
    schedule = learning_rate(self.config)  # the rate the next step uses
    lr = float(schedule(step)) if callable(schedule) else schedule
    with writer.as_default(step=step):
      for k, v in metrics.items():
        tf.summary.scalar(k, v)
      tf.summary.scalar('learning_rate', lr)
      if self.objective.uses_eps_memory:
        tf.summary.histogram('eps_memory', self.eps_memory)
        tf.summary.histogram('eps_batch', eps)
    rate = (step - start) / max(time.time() - t0, 1e-9)
    eta = (self.config.train_steps - step) / max(rate, 1e-9)
    text = ' '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
    self.log(f'step {step}/{self.config.train_steps} {text} lr {lr:.2g} '
             f'{rate:.2f} steps/s eta {eta / 60:.1f} min')

  def export_best(self, export_dir):
    """Exports the best checkpoint (latest weights if none) as a SavedModel, atomically.

    Raises ValueError, writing nothing, unless every weight of the model came from the checkpoint
    and every model weight in the checkpoint found its place.
    """
    model = self._build_model()
    best = self.best_manager.latest_checkpoint or self.manager.latest_checkpoint
    if best:
      restore_model_weights(model, best)
    else:
      model.set_weights(self.model.get_weights())
    export_lib.export_saved_model(model, export_dir)
    self.log(f'Exported {"best checkpoint " + best if best else "final weights"} to {export_dir}')

  def _cleanup_worker_dirs(self):
    if not self.is_chief:
      shutil.rmtree(os.path.dirname(self._write_dir('ckpt')), ignore_errors=True)


def _saved_model_weight_count(path):
  """Number of distinct variables reachable from the checkpoint's `model` entry.

  Read from the object graph, not the tensor names: a variable is stored once, under whichever
  path reached it first (often optimizer/...), so names under model/ undercount.
  """
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  roots = [c.node_id for c in graph.nodes[0].children if c.local_name == 'model']
  seen, stack = set(), list(roots)
  while stack:
    node = stack.pop()
    if node not in seen:
      seen.add(node)
      stack.extend(c.node_id for c in graph.nodes[node].children)
  return sum(1 for n in seen
             if any(a.name == 'VARIABLE_VALUE' for a in graph.nodes[n].attributes))


def restore_model_weights(model, path):
  """Restores `model` from the `model` entry of checkpoint `path`, requiring an exact match.

  expect_partial() would silently leave unmatched weights at their initial values; here every
  weight of `model` must be restored and the checkpoint must hold no other model weights.
  """
  status = None
  try:
    status = tf.train.Checkpoint(model=model).restore(path)
    status.assert_existing_objects_matched()
    saved = _saved_model_weight_count(path)
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise ValueError(f'Checkpoint {path} does not match model {model.name!r} '
                     f'({type(e).__name__}: {str(e).splitlines()[0][:300]}); it is from another '
                     'model or configuration. Nothing was exported.') from e
  finally:
    if status is not None:  # checked here; the optimizer's, step's... values are not wanted
      status.expect_partial()
  if saved != len(model.weights):
    raise ValueError(f'Checkpoint {path} holds {saved} model weights but {model.name!r} has '
                     f'{len(model.weights)}; it is from another model. Nothing was exported.')


def _atomic_write(path, text):
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)

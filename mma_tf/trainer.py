"""How the loop runs: cadence, checkpoints, summaries, the non-finite policy, export as an action.

What is trained (model, data, objective, validation) is a `task.Task`; this module knows no
objective by name. Everything a resumed run needs is in the checkpoint (model, optimizer, step,
eps memory, best validation value), so a resumed run repeats an uninterrupted one exactly.

Building a `Trainer` leaves process-wide random and determinism state alone (it sets Keras' dtype
policy only while building a model, and `--model=package.module:factory` makes the working
directory importable): built-in models are initialised from
per-layer initializer seeds derived from `config.seed`, and op determinism / global seeds are set
only by `configure_process`, which the CLI's main calls (call it too before building your own
model if its initial weights should follow config.seed).

Multi-worker checkpoints follow TF's MultiWorkerMirroredStrategy custom-loop pattern: every worker
saves (saving may involve collectives), only the chief's copy in model_dir is kept and read; a
non-chief worker writes to a scratch directory that is deleted right after each save. Every worker
restores from the chief's checkpoint, so a crash between the chief's save and a worker's cannot
leave the workers on different steps. The model_dir must be on storage all workers can read.
"""
import dataclasses
import json
import os
import re
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
from mma_tf import objectives as objectives_lib
from mma_tf import perturbation_memory
from mma_tf import precision
from mma_tf.models import user as user_models
from mma_tf.task import TorchSGD, Task, build_optimizer, learning_rate  # noqa: F401 (public)

CONFIG_FILE = 'config.json'


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
  """Runs a `Task` for `config` in `model_dir`: `train()` trains, validates, checkpoints, exports.

  model, data and objective are passed to `Task` (see there): None builds them from the config.
  The task is `trainer.task`; its model, data, objective, step and eps memory are reachable there.
  """

  def __init__(self, config, model_dir, strategy=None, data=None, model=None, objective=None,
               tfds_data_dir=None, log=print):
    self.strategy = strategy or tf.distribute.get_strategy()
    # config.json names what is really trained: your data source, Python model and objective.
    if data is not None:
      config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=data.name))
    if model is not None:
      config = dataclasses.replace(config, network=dataclasses.replace(
          config.network, model=f'python:{_python_name(model)}'))
    if objective is not None:  # with the settings it reads
      config = dataclasses.replace(config, objective=objective.name,
                                   settings=objective.config.settings)
    known = tuple(objectives_lib.OBJECTIVES) + ((objective.name,) if objective else ())
    config.validate(self.strategy.num_replicas_in_sync, objectives=known)
    self.config = config
    self.model_dir = model_dir
    self.log = log
    self.is_chief = is_chief(self.strategy)
    if config.deterministic and not _op_determinism_enabled():
      raise ValueError('config.deterministic is set but TF op determinism is off in this process; '
                       'call mma_tf.trainer.configure_process(config) first (the CLI does).')
    if config.mixed_precision == 'mixed_bfloat16' and precision.bfloat16_warning():
      log(f'warning: {precision.bfloat16_warning()}')
    self.task = Task(config, self.strategy, data, model, objective, tfds_data_dir)
    data = self.task.data
    if config.perturbation_memory:
      log(perturbation_memory.describe(data.num_train_total, data.image_shape,
                                       config.perturbation_memory_bits))
    self.steps_per_epoch = data.steps_per_epoch(config.batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f'--batch_size={config.batch_size} exceeds the '
                       f'{data.num_train_total - data.num_validation} training images of '
                       f'{data.name}.')
    self.selection_metric = self.task.objective.selection_metric
    self._check_model_dir()
    with self.strategy.scope():
      # The best value of the selection metric (checkpoint key from when it was always the margin).
      self.best_value = tf.Variable(-np.inf, trainable=False, name='best_val_metric')
      self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='best_step')
    self.checkpoint = tf.train.Checkpoint(best_margin=self.best_value, best_step=self.best_step,
                                          **self.task.checkpoint_items())
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self._write_dir('ckpt'), max_to_keep=3)
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.task.model), self._write_dir('best'), max_to_keep=1)

  # ------------------------------------------------------------------------------ model dir
  def _run_record(self):
    """config.json: the configuration (nested, key 'config'; runs of earlier versions wrote it
    flat, configs.flat_record) plus what identifies the data and the model's source."""
    return {'config': self.config.to_dict(), 'data': self.task.data.identity(),
            'model_source': user_models.model_identity(self.config.model)}

  def _check_model_dir(self):
    try:
      os.makedirs(self.model_dir, exist_ok=True)
      probe = tempfile.NamedTemporaryFile(dir=self.model_dir, delete=True)
      probe.close()
    except OSError as e:
      raise ValueError(f'--model_dir={self.model_dir} is not writable ({e}).') from e
    path = os.path.join(self.model_dir, CONFIG_FILE)
    saved = None
    if os.path.exists(path):
      try:
        with open(path) as f:
          saved = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f'{path} is unreadable ({e}); restore it, or use a new '
                         '--model_dir.') from e
      self._resume_validation_split(saved)
    record = self._run_record()
    if saved is not None:
      # Resuming with other settings would mix two runs in one directory; fields marked
      # resumable (loop length, cadence) may change, and fields added by a later version resume
      # at their default (configs.resume_conflicts). Runs written before config.json recorded the
      # data and model source are compared on their configuration only.
      conflicts = configs.resume_conflicts(saved, self.config)
      if 'data' in saved:
        conflicts += data_lib.identity_conflicts(saved['data'], record['data'])
      if 'model_source' in saved and saved['model_source'] != record['model_source']:
        conflicts.append(f'model_source: saved {saved["model_source"]}, now '
                         f'{record["model_source"]}')
      if conflicts:
        raise ValueError(
            f'{self.model_dir} holds a run with another configuration ({"; ".join(conflicts)}). '
            'Use a new --model_dir, or the same flags and data to resume.')
    try:
      for warning in self.task.data.check_label_mix():
        self.log(f'warning: {warning}')
    except ValueError as e:
      if saved is None:
        raise  # a new run: nothing written yet
      self.log(f'warning: {e}')  # a run started before the check: it resumes as it began
    if self.is_chief:
      _atomic_write(path, json.dumps(record, indent=2, sort_keys=True))

  def _resume_validation_split(self, saved):
    """An array source left at its default validation split resumes on the split the run
    recorded; runs from before it was recorded validated on the first images."""
    data = self.task.data
    recorded = saved.get('data', {}).get('validation_split', 'first')
    if getattr(data, 'validation_split_given', True) or data.validation_split == recorded:
      return
    self.task.data = data.with_validation_split(recorded)
    self.log(f'Resuming with the validation split {self.model_dir} began with ({recorded}).')

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

  # ------------------------------------------------------------------------------ loop
  def evaluate(self, split='validation'):
    """Clean and PGD (test_eps) accuracy and the average AN-PGD margin on a split."""
    return self.task.validate(split)

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
    return int(self.task.step.numpy())

  def train(self):
    """Trains to `train_steps`, validating and checkpointing every epoch; exports the best model.

    Returns a summary dict (final step, best validation value and its step, last validation,
    seconds of this call and the part of them spent in training steps). The best model is chosen
    among epoch ends and, if train_steps ends no epoch, that final step: its validation competes
    only at the end, so a run stopped there and resumed for longer chooses as a run of the final
    length would.
    """
    config = self.config
    start = step = self.restore()
    if start:
      self.log(f'Resumed from step {start} in {self.model_dir}.')
    writers = {name: tf.summary.create_file_writer(
        os.path.join(self.model_dir, name) if self.is_chief else self._write_dir(name))
               for name in ('train', 'validation')}
    t0, last_val = time.time(), {}
    self._step_seconds = 0.0  # in training steps only (no validation, checkpoints or export)
    while step < config.train_steps:
      epoch, start_batch = divmod(step, self.steps_per_epoch)
      epoch_end = min((epoch + 1) * self.steps_per_epoch, config.train_steps)
      step = self._train_epoch(epoch, start_batch, step, epoch_end, writers['train'], t0, start)
      last_val = self._validate(step, writers['validation'])
      self._save(self.manager, step)
    best_value, best_step = float(self.best_value.numpy()), int(self.best_step.numpy())
    final_checkpoint = None
    if step % self.steps_per_epoch:
      if not last_val:  # a finished run started again: its final step is validated again
        last_val = self.evaluate('validation')
      if last_val[self.selection_metric] > best_value:
        best_value, best_step = last_val[self.selection_metric], step
        final_checkpoint = self._latest_chief_checkpoint()
    export_dir = os.path.join(self.model_dir, 'export')
    if self.is_chief and (start < config.train_steps or not os.path.exists(export_dir)):
      self.export_best(export_dir, final_checkpoint)
    self._cleanup_worker_dirs()
    summary = {'step': step, 'selection_metric': self.selection_metric,
               'best_val_value': best_value, 'best_step': best_step, 'validation': last_val,
               'export': export_dir, 'seconds': round(time.time() - t0, 1),
               'step_seconds': round(self._step_seconds, 1)}
    if self.selection_metric == 'avg_margin':
      summary['best_val_margin'] = summary['best_val_value']
    if self.is_chief:
      _atomic_write(os.path.join(self.model_dir, 'summary.json'), json.dumps(summary, indent=2))
    return summary

  def _train_epoch(self, epoch, start_batch, step, epoch_end, writer, t0, start):
    """Steps from `step` to `epoch_end` of `epoch` in loops of up to steps_per_loop steps (one
    host sync each), ending at every log, checkpoint and epoch boundary."""
    c = self.config
    until = lambda every: every - step % every  # steps to the next multiple of `every`
    iterator = iter(self.task.train_batches(epoch, start_batch))
    window = {}
    while step < epoch_end:
      n = min(c.steps_per_loop, epoch_end - step, until(c.log_every), until(c.checkpoint_every))
      started = time.perf_counter()
      try:
        out = self.task.train_loop(iterator, tf.constant(n, tf.int64))
      except tf.errors.InvalidArgumentError as e:
        failed = re.search(r'assertion failed: \[(.*?)\]', e.message)
        if not failed:
          raise
        # The data pipeline's checks (data.py train_dataset).
        raise ValueError(f'Bad training data in steps {step + 1}-{step + n}: {failed.group(1)}. '
                         'Nothing was saved after the last checkpoint.') from e
      except tf.errors.OutOfRangeError as e:
        raise ValueError(f'The training data ran out in steps {step + 1}-{step + n} of epoch '
                         f'{epoch + 1}: the dataset is shorter than its declared size '
                         f'({self.task.data.num_train_total}, num_examples).') from e
      first, step = step + 1, step + n
      bad = int(out.pop('first_non_finite_step'))  # waits for the loop's last step
      self._step_seconds += time.perf_counter() - started
      if bad >= 0:
        latest = self._latest_chief_checkpoint()
        loop = f' (in the loop of steps {first}-{step})' if n > 1 else ''
        raise NonFiniteLossError(
            f'Non-finite loss at step {bad}{loop}. Nothing was saved after it; the last good '
            f'checkpoint is {latest or "none (no checkpoint yet)"}. Lower the learning rate or '
            'check the data; re-running resumes from that checkpoint.')
      eps = out.pop('eps', None)
      for k, v in out.items():
        window[k] = window.get(k, 0.0) + float(v)
      window['examples'] = window.get('examples', 0) + c.batch_size * n
      if step % c.log_every == 0 or step == epoch_end:
        self._log_train(writer, step, window, eps, t0, start)
        window = {}
      if step % c.checkpoint_every == 0 and step != epoch_end:
        self._save(self.manager, step)
    return step

  def _validate(self, step, writer):
    """Validation after an epoch, or at a final step that ends none. At an epoch end a new best
    of the selection metric saves the best model; a final step's validation never replaces it
    (a longer run would not validate there): `train` weighs it against the best at the end."""
    val = self.evaluate('validation')
    at_epoch_end = step % self.steps_per_epoch == 0
    improved = val[self.selection_metric] > float(self.best_value.numpy())
    if improved and at_epoch_end:
      self.best_value.assign(val[self.selection_metric])
      self.best_step.assign(step)
      self._save(self.best_manager, step)
    with writer.as_default(step=step):
      for k, v in val.items():
        tf.summary.scalar(k, v)
    epoch = step // self.steps_per_epoch + (not at_epoch_end)
    note = ''
    if improved:
      note = ' (best)' if at_epoch_end else ' (final step; above the best epoch end)'
    self.log(f'epoch {epoch} step {step}: validation clean_acc {val["clean_acc"]:.4f} '
             f'pgd_acc@{self.config.test_eps:g} {val["pgd_acc"]:.4f} avg_margin '
             f'{val["avg_margin"]:.4f}{note}')
    return val

  def _log_train(self, writer, step, window, eps, t0, start):
    n = window.pop('examples')
    window.pop('total_loss', None)
    metrics = self.task.objective.summarize(window, n)
    # The optimizer's own rate (on the trainer's step: the one the next step uses).
    lr = float(tf.convert_to_tensor(self.task.optimizer.learning_rate))
    with writer.as_default(step=step):
      for k, v in metrics.items():
        tf.summary.scalar(k, v)
      tf.summary.scalar('learning_rate', lr)
      if self.task.objective.uses_eps_memory:
        tf.summary.histogram('eps_memory', self.task.eps_memory)
        tf.summary.histogram('eps_batch', eps)
    rate = (step - start) / max(time.time() - t0, 1e-9)
    eta = (self.config.train_steps - step) / max(rate, 1e-9)
    text = ' '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
    self.log(f'step {step}/{self.config.train_steps} {text} lr {lr:.2g} '
             f'{rate:.2f} steps/s eta {eta / 60:.1f} min')

  def export_best(self, export_dir, checkpoint=None):
    """Exports `checkpoint` (default: the best one, else the latest) as a SavedModel, atomically.

    The exported model is a new one from the task's factory (outside the strategy's scope), or,
    for a model given as an instance, the live model, which then keeps the best weights. Raises
    ValueError, writing nothing, unless every weight of the model came from the checkpoint and
    every model weight in the checkpoint found its place.
    """
    best = checkpoint or self.best_manager.latest_checkpoint or self.manager.latest_checkpoint
    if self.task.model_fn is not None:
      model = self.task.new_model()
      if not best:
        model.set_weights(self.task.model.get_weights())
    else:
      model = self.task.model
    if best:
      restore_model_weights(model, best)
    export_lib.export_saved_model(model, export_dir, self.task.data.image_shape)
    self.log(f'Exported {"best checkpoint " + best if best else "final weights"} to {export_dir}')

  def _cleanup_worker_dirs(self):
    if not self.is_chief:
      shutil.rmtree(os.path.dirname(self._write_dir('ckpt')), ignore_errors=True)


def _python_name(model):
  """How config.json names a model passed in Python, stably across runs: the factory's
  module:qualname (a partial's function's), or the class of an instance or callable object."""
  target = getattr(model, 'func', model)  # functools.partial
  if not hasattr(target, '__qualname__') or isinstance(model, keras.Model):
    target = type(target)
  return f'{target.__module__}:{target.__qualname__}'


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

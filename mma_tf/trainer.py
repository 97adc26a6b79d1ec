"""The training controller: the loop of compiled step loops, and when its actions run.

What is trained (model, data, objective, validation) is a `task.Task`; this module knows no
objective by name. Around the steps, the loop runs the actions of `mma_tf.actions`, each in one
place: the run's record (`run_record`, config.json), checkpoints (`checkpoints`), validation and
the best model's choice (`selection`), summaries and progress lines (`summaries`) and the export
(`export`). Everything a resumed run needs is in the checkpoint (model, optimizer, step, eps
memory, best validation value), so a resumed run repeats an uninterrupted one exactly.

Building a `Trainer` leaves process-wide random and determinism state alone (it sets Keras' dtype
policy only while building a model, and `--model=package.module:factory` makes the working
directory importable): built-in models are initialised from
per-layer initializer seeds derived from `config.seed`, and op determinism / global seeds are set
only by `configure_process`, which the CLI's main calls (call it too before building your own
model if its initial weights should follow config.seed).
"""
import dataclasses
import json
import os
import re
import time

import keras
import tensorflow as tf

from mma_tf import objectives as objectives_lib
from mma_tf import perturbation_memory
from mma_tf import precision
from mma_tf.actions import run_record
from mma_tf.actions.checkpoints import Checkpoints, restore_model_weights  # noqa: F401 (public)
from mma_tf.actions.export import export_checkpoint
from mma_tf.actions.run_record import CONFIG_FILE  # noqa: F401 (public)
from mma_tf.actions.selection import BestModelSelection
from mma_tf.actions.summaries import Summaries
from mma_tf.optimizers import TorchSGD, build_optimizer, learning_rate  # noqa: F401 (public)
from mma_tf.task import Task


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


class PeerWorkerLostError(RuntimeError):
  """A worker of a multi-worker run is gone (killed, crashed, unreachable): a collective across
  the workers failed, and this worker stopped too. The message says from which step a re-run of
  every worker resumes."""


# How TF's collectives fail when a peer worker goes away (gRPC unavailable, aborted collective).
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                  tf.errors.DeadlineExceededError)


def _num_workers(strategy):
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None:
    return 1
  return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) or 1


class Trainer:
  """Runs a `Task` for `config` in `model_dir`: `train()` trains, validates, checkpoints, exports.

  model, data and objective are passed to `Task` (see there): None builds them from the config.
  The task is `trainer.task`; its model, data, objective, step and eps memory are reachable there.
  The actions are `trainer.checkpoints` and `trainer.selection`.
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
    run_record.open_run(self.task, model_dir, self.is_chief, log)
    self.checkpoints = Checkpoints(self.task, model_dir, self.strategy, self.is_chief)
    self.selection = BestModelSelection(self.task, self.checkpoints, self.steps_per_epoch)
    self.selection_metric = self.selection.metric

  def evaluate(self, split='validation'):
    """Clean and PGD (test_eps) accuracy and the average AN-PGD margin on a split."""
    return self.task.validate(split)

  def restore(self):
    """Restores the chief's latest checkpoint, if any; returns the step restored (0: a new run)."""
    return int(self.task.step.numpy()) if self.checkpoints.restore() else 0

  def train(self):
    """Trains to `train_steps`, validating and checkpointing every epoch; exports the best model
    (actions.selection says which). Returns a summary dict (final step, best validation value and
    its step, last validation, seconds of this call and the part of them in training steps, wall
    and process CPU). Raises PeerWorkerLostError when another worker of the run is gone."""
    try:
      return self._train()
    except _PEER_FAILURES as e:
      workers = _num_workers(self.strategy)
      if workers < 2:
        raise
      raise PeerWorkerLostError(self._peer_lost_message(e, workers)) from e

  def _peer_lost_message(self, error, workers):
    latest = self.checkpoints.latest()
    resume = (f'step {latest.rsplit("-", 1)[-1]}, its last checkpoint ({latest})' if latest
              else 'step 0 (no checkpoint was saved yet)')
    # TF's message starts with 'Graph execution error:'; the line naming the cause is further in.
    lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
    cause = next((line for line in lines if 'aborted by' in line or 'peer' in line.lower()),
                 lines[0] if lines else 'no message')
    return (f'A peer worker is gone: a collective operation across the {workers} workers failed '
            f'({type(error).__name__}: {cause[:200]}), so this worker stopped too. Re-run every '
            'worker with the same command (the same flags and TF_CONFIG on each host); training '
            f'resumes from {resume}.')

  def _train(self):
    config = self.config
    start = step = self.restore()
    if start:
      self.log(f'Resumed from step {start} in {self.model_dir}.')
    summaries = Summaries(self.task, self.checkpoints, config.train_steps, start, self.log)
    t0, last_val = time.time(), {}
    # In training steps only (no validation, checkpoints or export): wall and process CPU seconds.
    self._step_seconds = self._step_cpu_seconds = 0.0
    while step < config.train_steps:
      epoch, start_batch = divmod(step, self.steps_per_epoch)
      epoch_end = min((epoch + 1) * self.steps_per_epoch, config.train_steps)
      step = self._train_epoch(epoch, start_batch, step, epoch_end, summaries)
      last_val, note = self.selection.validate(step)
      # The epoch that `step` ends or is in.
      epoch = (step + self.steps_per_epoch - 1) // self.steps_per_epoch
      summaries.validation(step, epoch, last_val, note)
      self.checkpoints.save(step)
    best_value, best_step, final_checkpoint, last_val = self.selection.final_choice(step,
                                                                                     last_val)
    export_dir = os.path.join(self.model_dir, 'export')
    if self.is_chief and (start < config.train_steps or not os.path.exists(export_dir)):
      self.export_best(export_dir, final_checkpoint)
    self.checkpoints.remove_scratch()
    summary = {'step': step, 'selection_metric': self.selection_metric,
               'best_val_value': best_value, 'best_step': best_step, 'validation': last_val,
               'export': export_dir, 'seconds': round(time.time() - t0, 1),
               'step_seconds': round(self._step_seconds, 1),
               'step_cpu_seconds': round(self._step_cpu_seconds, 1)}
    if self.selection_metric == 'avg_margin':
      summary['best_val_margin'] = summary['best_val_value']
    if self.is_chief:
      run_record.atomic_write(os.path.join(self.model_dir, 'summary.json'),
                              json.dumps(summary, indent=2))
    return summary

  def _train_epoch(self, epoch, start_batch, step, epoch_end, summaries):
    """Steps from `step` to `epoch_end` of `epoch` in loops of up to steps_per_loop steps (one
    host sync each), ending at every log, checkpoint and epoch boundary."""
    c = self.config
    until = lambda every: every - step % every  # steps to the next multiple of `every`
    iterator = iter(self.task.train_batches(epoch, start_batch))
    window = {}
    while step < epoch_end:
      n = min(c.steps_per_loop, epoch_end - step, until(c.log_every), until(c.checkpoint_every))
      started, cpu_started = time.perf_counter(), time.process_time()
      out = self._train_loop(iterator, n, step, epoch)
      first, step = step + 1, step + n
      bad = int(out.pop('first_non_finite_step'))  # waits for the loop's last step
      self._step_seconds += time.perf_counter() - started
      self._step_cpu_seconds += time.process_time() - cpu_started
      if bad >= 0:
        latest = self.checkpoints.latest()
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
        summaries.train(step, window, eps)
        window = {}
      if step % c.checkpoint_every == 0 and step != epoch_end:
        self.checkpoints.save(step)
    return step

  def _train_loop(self, iterator, n, step, epoch):
    """The task's compiled loop of n steps, with the input pipeline's failures in plain words."""
    try:
      return self.task.train_loop(iterator, tf.constant(n, tf.int64))
    except tf.errors.InvalidArgumentError as e:
      failed = re.search(r'assertion failed: \[(.*?)\]', e.message)
      if not failed:
        raise
      # The data pipeline's checks (data/pipelines.py, train_dataset).
      raise ValueError(f'Bad training data in steps {step + 1}-{step + n}: {failed.group(1)}. '
                       'Nothing was saved after the last checkpoint.') from e
    except tf.errors.OutOfRangeError as e:
      raise ValueError(f'The training data ran out in steps {step + 1}-{step + n} of epoch '
                       f'{epoch + 1}: the dataset is shorter than its declared size '
                       f'({self.task.data.num_train_total}, num_examples).') from e

  def export_best(self, export_dir, checkpoint=None):
    """Exports `checkpoint` (default: the best one, else the latest) as a SavedModel, atomically
    (actions.export.export_checkpoint)."""
    export_checkpoint(self.task, checkpoint or self.checkpoints.best_or_latest(), export_dir,
                      self.log)


def _python_name(model):
  """How config.json names a model passed in Python, stably across runs: the factory's
  module:qualname (a partial's function's), or the class of an instance or callable object."""
  target = getattr(model, 'func', model)  # functools.partial
  if not hasattr(target, '__qualname__') or isinstance(model, keras.Model):
    target = type(target)
  return f'{target.__module__}:{target.__qualname__}'

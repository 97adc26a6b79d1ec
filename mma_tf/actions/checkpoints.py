"""Checkpoints: everything a resumed run needs (model, optimizer, step, eps and perturbation
memories, the best validation value and its step), and a separate copy of the best model.

Multi-worker checkpoints follow TF's MultiWorkerMirroredStrategy custom-loop pattern: every worker
saves (saving may involve collectives), only the chief's copy in model_dir is kept and read; a
non-chief worker writes to a scratch directory that is deleted right after each save. Every worker
restores from the chief's checkpoint, so a crash between the chief's save and a worker's cannot
leave the workers on different steps. The model_dir must be on storage all workers can read.
"""
import os
import shutil

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

# The best value of the selection metric. Runs of earlier versions stored it as 'best_margin',
# from when the metric was always the margin; their checkpoints restore under that key.
BEST_VALUE_KEY = 'best_value'
OLD_BEST_VALUE_KEY = 'best_margin'


class Checkpoints:
  """The run's checkpoints in model_dir/ckpt (the last 3) and its best model in model_dir/best."""

  def __init__(self, task, model_dir, strategy, is_chief):
    self.model_dir, self.strategy, self.is_chief = model_dir, strategy, is_chief
    with strategy.scope():
      self.best_value = tf.Variable(-np.inf, trainable=False, name='best_value')
      self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='best_step')
    self._items = dict(best_step=self.best_step, **task.checkpoint_items())
    self.checkpoint = tf.train.Checkpoint(**{BEST_VALUE_KEY: self.best_value}, **self._items)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir('ckpt'),
                                              max_to_keep=3)
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=task.model), self.write_dir('best'), max_to_keep=1)

  def write_dir(self, name):
    """Chief writes to the model dir; other workers to a scratch dir (all must save)."""
    if self.is_chief:
      return os.path.join(self.model_dir, name)
    resolver = self.strategy.cluster_resolver
    return os.path.join(self.model_dir, f'.worker_{resolver.task_type}_{resolver.task_id}', name)

  def latest(self):
    """The chief's latest checkpoint (what every worker restores), or None."""
    return tf.train.latest_checkpoint(os.path.join(self.model_dir, 'ckpt'))

  def best_or_latest(self):
    return self.best_manager.latest_checkpoint or self.manager.latest_checkpoint

  def save(self, step):
    _save(self.manager, step, self.is_chief)

  def save_best(self, step, value):
    """Records `value` at `step` as the best and saves the model as the best one."""
    self.best_value.assign(value)
    self.best_step.assign(step)
    _save(self.best_manager, step, self.is_chief)

  def restore(self):
    """Restores the chief's latest checkpoint, if any; returns its path (None: no checkpoint).

    Every worker reads the chief's directory, so all replicas start from the same weights, step
    and eps table (a non-chief keeps no checkpoint of its own).
    """
    latest = self.latest()
    if latest is None:
      return None
    try:
      self._checkpoint_for(latest).restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise ValueError(f'Checkpoint {latest} cannot be restored ({type(e).__name__}: '
                       f'{str(e).splitlines()[0][:300]}). It is corrupt or from another model; '
                       'move it away to start over, or point --model_dir elsewhere.') from e
    return latest

  def _checkpoint_for(self, path):
    """The checkpoint object that reads `path`: the current keys, or the old key of the best
    value (the same variables, so saving afterwards writes the current keys)."""
    try:
      names = {name.split('/')[0] for name, _ in tf.train.list_variables(path)}
    except (tf.errors.OpError, ValueError):
      return self.checkpoint  # unreadable: restore() reports it
    if OLD_BEST_VALUE_KEY in names and BEST_VALUE_KEY not in names:
      return tf.train.Checkpoint(**{OLD_BEST_VALUE_KEY: self.best_value}, **self._items)
    return self.checkpoint

  def remove_scratch(self):
    """Deletes a non-chief worker's scratch directory (the chief keeps everything)."""
    if not self.is_chief:
      shutil.rmtree(os.path.dirname(self.write_dir('ckpt')), ignore_errors=True)


def _save(manager, step, is_chief):
  """Saves on every worker; a non-chief's scratch copy is deleted at once (never read)."""
  manager.save(checkpoint_number=step)
  if not is_chief:
    tf.io.gfile.rmtree(manager.directory)


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

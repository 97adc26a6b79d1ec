"""What is trained: a model (built by a factory inside the strategy's scope), its data, an
objective and the validation metrics. `trainer.Trainer` decides how the loop runs.

Per step, `strategy.run` executes the replica step (`step.ReplicaStep`, shared with Keras' fit in
`mma_tf.keras`) on each replica inside one `tf.function` traced once; the summed per-example loss
is divided by the global batch size. The per-example eps memory
is a mirrored variable, read by gather in the replicas and rewritten in cross-replica context from
the all-gathered (index, eps) pairs, so every replica and worker holds the same table. Data order
and attack randomness are functions of (seed, step), so a run restored from a checkpoint repeats an
uninterrupted one exactly (with op determinism, see `trainer.configure_process`).
"""
import keras
import tensorflow as tf

from mma_tf import data as data_lib
from mma_tf import objectives as objectives_lib
from mma_tf import perturbation_memory as memory_lib
from mma_tf import precision
from mma_tf.evaluation.validation import validation_metrics
from mma_tf.models import user as user_models
from mma_tf.optimizers import build_optimizer
from mma_tf.step import ReplicaStep

VALIDATION_METRICS = ('clean_acc', 'pgd_acc', 'avg_margin')


class Task:
  """Model, data, objective and validation for `config`, built under `strategy`.

  model: None (config.model: a built-in name, package.module:factory or a .keras file), a
    factory (input_shape, num_classes) -> keras.Model, or a keras.Model built inside
    `strategy.scope()`. A factory is preferred: it is called inside the scope, and again to
    build the float32 copy that is exported.
  data: a `data.Source` (None: `data.load(config.dataset)`).
  objective: an `objectives.Objective` (None: the registered `config.objective`).
  """

  def __init__(self, config, strategy, data=None, model=None, objective=None, tfds_data_dir=None):
    self.config, self.strategy = config, strategy
    # The default (no-op) strategy: the optimizer update then has no cross-replica op. (Inside a
    # strategy's scope get_strategy() is that strategy: has_strategy() rules that case out.)
    self._default_strategy = (not tf.distribute.has_strategy()
                              and strategy is tf.distribute.get_strategy())
    self.data = data or data_lib.load(config.dataset, tfds_data_dir,
                                      num_validation=config.num_validation)
    if config.num_validation is not None and config.num_validation != self.data.num_validation:
      raise ValueError(f'config.num_validation is {config.num_validation} but the data source '
                       f'holds out {self.data.num_validation}; build the source with the same.')
    objective = objective or objectives_lib.build_objective(config)
    if config.perturbation_memory:
      if not objective.has_training_attack:
        raise ValueError(f'--perturbation_memory stores the training attack\'s perturbation, '
                         f'and the objective {objective.name!r} has no training attack that '
                         'can start from one; drop the flag.')
      # Before allocating: a table that cannot fit is refused with its size, not an OOM.
      memory_lib.check_size(self.data.num_train_total, self.data.image_shape,
                            config.perturbation_memory_bits,
                            config.perturbation_memory_limit_mb)
    if isinstance(model, keras.Model):
      if config.mixed_precision != 'float32' or tuple(config.input_range) != (0.0, 1.0):
        raise ValueError('mixed_precision and input_range act while the model is built; pass a '
                         'factory instead of a built model.')
      self.model_fn, instance = None, model
    else:
      self.model_fn = model or user_models.model_factory(config.model, config.seed,
                                                         config.sync_batchnorm)
      instance = None
    shape, classes = self.data.image_shape, self.data.num_classes
    with strategy.scope():
      if instance is None:
        with precision.dtype_policy(config.mixed_precision):
          instance = self.new_model()
      self.model = instance
      user_models.check_classifier(self.model, shape, classes, strategy)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
      self.optimizer = build_optimizer(config, self.step)
      self.optimizer.build(self.model.trainable_variables)
      self.eps_memory = tf.Variable(tf.zeros([self.data.num_train_total]), trainable=False,
                                    name='eps_memory')
      self.perturbation_memory = None
      if config.perturbation_memory:
        self.perturbation_memory = memory_lib.PerturbationMemory(
            self.data.num_train_total, self.data.image_shape, config.perturbation_memory_bits,
            self.data.augment)
    self.replica_step = ReplicaStep(
        config, objective, self.model, self.optimizer, self.eps_memory,
        self.perturbation_memory, strategy.num_replicas_in_sync,
        whole_step_xla=self._default_strategy, batch_size=config.batch_size)
    # Nothing is compiled around strategy.run: XLA compiles for one device, so with
    # --jit_compile only what runs inside a replica is compiled (see step.ReplicaStep.run).
    self.train_step = tf.function(self._train_step_fn, jit_compile=False)
    self.train_loop = tf.function(self._train_loop_fn, jit_compile=False)
    self.eval_step = tf.function(self._eval_step_fn, jit_compile=False)

  @property
  def objective(self):
    return self.replica_step.objective

  @objective.setter
  def objective(self, objective):
    self.replica_step.objective = objective

  def new_model(self):
    """A new model from the factory, behind the declared input range."""
    if self.model_fn is None:
      raise ValueError('This task was given a model instance, not a factory; it cannot build '
                       'another.')
    model = self.model_fn(tuple(self.data.image_shape), self.data.num_classes)
    model = user_models.with_input_range(model, self.data.image_shape, self.config.input_range)
    model(tf.zeros([1, *self.data.image_shape]), training=False)  # a subclassed model builds
    return model

  def checkpoint_items(self):
    items = {'model': self.model, 'optimizer': self.optimizer, 'step': self.step,
             'eps_memory': self.eps_memory}
    if self.perturbation_memory is not None:
      items.update(self.perturbation_memory.checkpoint_items())
    return items

  def train_batches(self, epoch, start_batch=0):
    """The distributed training batches of `epoch` from batch `start_batch` on."""
    c = self.config
    # The perturbation memory moves stored perturbations with each image's augmentation.
    with_seed = self.perturbation_memory is not None and self.data.augment is not None
    return self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.train_dataset(self.data, c.batch_size, c.seed, epoch, start_batch,
                                           ctx, with_augment_seed=with_seed))

  # ------------------------------------------------------------------------------ steps
  def _one_step(self, iterator):
    """One training step in cross-replica context: {stat sums, total_loss, eps}."""
    batch = next(iterator)
    loss, sums, index, eps, remember = self.strategy.run(
        lambda batch: self.replica_step.run(batch, self.step, self.config.batch_size),
        args=(batch,))
    reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    out = {k: reduce(v) for k, v in sums.items()}
    out['total_loss'] = reduce(loss)
    gathered = {k: self.strategy.gather(v, axis=0)
                for k, v in self.replica_step.to_write(index, eps, remember).items()}
    self.replica_step.write_memories(gathered)
    if 'eps' in gathered:
      out['eps'] = gathered['eps']
    self.step.assign_add(1)
    return out

  def _train_step_fn(self, iterator):
    return self._one_step(iterator)

  def _train_loop_fn(self, iterator, num_steps):
    """num_steps (>= 1) steps in one call: statistics summed on the device, and the first
    non-finite loss's step number (-1 if none), so the host syncs once per loop."""
    # Objectives without an eps memory return no 'eps': a zero placeholder keeps the loop's
    # variables tensors (autograph refuses a None carried through tf.range).
    no_eps = tf.zeros([self.config.batch_size])
    first = self._one_step(iterator)
    last_eps = first.pop('eps', no_eps)
    sums = first
    bad = tf.where(tf.math.is_finite(first['total_loss']), tf.constant(-1, tf.int64), self.step)
    for _ in tf.range(1, num_steps):
      out = self._one_step(iterator)
      last_eps = out.pop('eps', no_eps)
      sums = {k: sums[k] + out[k] for k in sums}
      bad = tf.where((bad < 0) & ~tf.math.is_finite(out['total_loss']), self.step, bad)
    result = dict(sums, first_non_finite_step=bad)
    if self.objective.uses_eps_memory:
      result['eps'] = last_eps
    return result

  def _eval_step_fn(self, batch):
    sums = self.strategy.run(self.replica_step.validation_sums, args=(batch,))
    return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in sums.items()}

  def validate(self, split='validation'):
    """Clean and PGD (test_eps) accuracy and the average AN-PGD margin on a split."""
    images, labels, indices = self.data.eval_split(split)
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.eval_dataset(images, labels, indices, self.config.eval_batch_size,
                                          ctx))
    totals = {}
    for batch in dataset:
      for k, v in self.eval_step(batch).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return validation_metrics(totals)

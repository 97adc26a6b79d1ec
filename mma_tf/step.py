"""The training step on one replica, and the memory writes after it: one implementation for the
Trainer's loop (`task.Task`) and Keras' fit (`keras.AdversarialModel.train_step`).

`ReplicaStep.run` reads each example's eps (and, with the perturbation memory, its stored
perturbation) by index, calls the objective under a GradientTape, divides the summed per-example
loss by the global batch size, adds weight decay, scales the loss under float16 and applies the
gradients. The memories are rewritten afterwards from the all-gathered batch in cross-replica
context (`write_memories`), so every replica holds the same tables: the Task gathers after
`strategy.run`, the Keras wrapper inside its replica step (`gather_and_write`: all-gather, then
merge_call). Attack randomness is keyed by (seed, step, example index).
"""
import keras
import tensorflow as tf

from mma_tf.attacks import example_seeds
from mma_tf.evaluation.validation import validation_sums


def _non_finite_everywhere(grads):
  """Gradients made non-finite on every replica when they are on any one. Keras'
  LossScaleOptimizer skips a step (and lowers the scale) when the gradients it sees are
  non-finite, but under a strategy it may judge the replica's own gradients before the
  all-reduce; this makes every replica agree, so the step is skipped everywhere."""
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
  bad = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
  poison = tf.where(bad > 0, float('nan'), 0.0)
  return [g + tf.cast(poison, g.dtype) for g in grads]


class ReplicaStep:
  """The step of `objective` training `model` with `optimizer` (see the module docstring).

  eps_memory: a [N] float32 variable (a Keras variable or its tf.Variable); perturbation_memory:
  a `perturbation_memory.PerturbationMemory` or None. num_replicas: replicas in sync.
  whole_step_xla: with config.jit_compile on one device, XLA compiles the whole step (attack,
  both weight passes, optimizer update); under a strategy it compiles everything before the
  gradient all-reduce, per replica.
  """

  def __init__(self, config, objective, model, optimizer, eps_memory, perturbation_memory,
               num_replicas, whole_step_xla, batch_size=None):
    self.config, self.model, self.optimizer = config, model, optimizer
    self.eps_memory, self.perturbation_memory = eps_memory, perturbation_memory
    self.num_replicas, self.whole_step_xla = num_replicas, whole_step_xla
    self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # The global batch size of the step being traced (the attacks' loss scale reads it).
    self._global_batch_size = batch_size
    self.objective = objective

  @property
  def objective(self):
    return self._objective

  @objective.setter
  def objective(self, objective):
    self._objective = objective
    if self.loss_scaling:
      objective.attack_loss_scale = self._attack_loss_scale

  def _attack_loss_scale(self):
    """The attacks' loss scale: the optimizer's dynamic scale per example of the global batch,
    so an example's gradient through the model is scaled as in the weight pass (a mean loss)."""
    return (tf.cast(self.optimizer.dynamic_scale, tf.float32)
            / tf.cast(self._global_batch_size, tf.float32))

  def _gradients(self, batch, eps0, seeds, warm_start=None):
    """The objective and its weight gradients on one replica's batch (and, with the perturbation
    memory, the perturbations to remember and the mask of rows to write, as int32)."""
    config, model = self.config, self.model
    with tf.GradientTape() as tape:
      kwargs = {} if warm_start is None else {'warm_start': warm_start}
      out = self.objective(model, batch['image'], batch['label'], eps0, seeds,
                           tape.stop_recording, **kwargs)
      loss = tf.reduce_sum(out.loss) / tf.cast(self._global_batch_size, tf.float32)
      total = loss
      if config.weight_decay:
        l2 = tf.add_n([tf.reduce_sum(tf.square(v)) for v in model.trainable_variables])
        total += 0.5 * config.weight_decay * l2 / self.num_replicas
      if self.loss_scaling:
        total = self.optimizer.scale_loss(total)
    grads = tape.gradient(total, model.trainable_variables)
    sums = {k: tf.reduce_sum(v) for k, v in out.stats.items()}
    eps = out.eps if self.objective.uses_eps_memory else tf.zeros_like(eps0)
    remember = {}
    if warm_start is not None:
      mask = out.perturbation_mask
      mask = tf.ones_like(eps0, tf.bool) if mask is None else mask
      # All-gather has no bool kernel: the mask travels as int32.
      remember = {'perturbation': out.perturbation, 'mask': tf.cast(mask, tf.int32)}
    return loss, sums, eps, remember, grads

  def run(self, batch, step, global_batch_size):
    """One replica's step on `batch` ({'image', 'label', 'index'[, 'augment_seed']}) at training
    step `step` (attack seeds), `global_batch_size` examples over all replicas (a number or a
    scalar tensor). Returns (loss, stat sums, index, eps to remember, perturbations to remember)."""
    self._global_batch_size = global_batch_size
    index = batch['index']
    eps0 = tf.gather(self.eps_memory, index)
    seeds = example_seeds(tf.stack([tf.cast(self.config.seed, tf.int64), step]), index)
    warm_start = None
    if self.perturbation_memory is not None:
      warm_start = self.perturbation_memory.read(index, batch.get('augment_seed'))
    grads_fn = self._gradients
    if self.config.jit_compile and self.whole_step_xla:
      def whole(batch, eps0, seeds, warm_start):
        loss, sums, eps, remember, grads = grads_fn(batch, eps0, seeds, warm_start)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, sums, eps, remember
      loss, sums, eps, remember = tf.function(whole, jit_compile=True)(batch, eps0, seeds,
                                                                       warm_start)
      return loss, sums, index, eps, remember
    if self.config.jit_compile:
      # Under a distribution strategy the gradient all-reduce in apply_gradients is a
      # cross-replica op, so XLA compiles everything before it, per replica (a new tf.function
      # per replica: one shared trace would capture replica 0's variables).
      grads_fn = tf.function(grads_fn, jit_compile=True)
    loss, sums, eps, remember, grads = grads_fn(batch, eps0, seeds, warm_start)
    if self.loss_scaling and self.num_replicas > 1:
      grads = _non_finite_everywhere(grads)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    if 'augment_seed' in batch:
      remember['augment_seed'] = batch['augment_seed']
    return loss, sums, index, eps, remember

  def to_write(self, index, eps, remember):
    """What the memory writes need from every replica (empty: nothing to write)."""
    out = dict(remember)
    if self.objective.uses_eps_memory:
      out['eps'] = eps
    if out:
      out['index'] = index
    return out

  def write_memories(self, gathered):
    """Cross-replica context: rewrites the memories' rows of the all-gathered batch
    (`to_write`'s tensors, gathered over all replicas)."""
    index = gathered.get('index')
    if 'eps' in gathered:
      self.eps_memory.assign(tf.tensor_scatter_nd_update(self.eps_memory, index[:, None],
                                                         gathered['eps']))
    if 'perturbation' in gathered:
      self.perturbation_memory.write(index, gathered['perturbation'], gathered['mask'] > 0,
                                     gathered.get('augment_seed'))

  def gather_and_write(self, index, eps, remember):
    """Replica context (Keras' train_step): all-gathers `to_write` and writes once, in
    cross-replica context, with the same values on every replica."""
    values = self.to_write(index, eps, remember)
    if not values:
      return
    if not tf.distribute.has_strategy():
      self.write_memories(values)
      return
    context = tf.distribute.get_replica_context()
    gathered = context.all_gather(values, axis=0)

    def write(strategy, gathered):
      # The all-gathered values are the same on every replica: replica 0's copy is the batch.
      self.write_memories(tf.nest.map_structure(
          lambda v: strategy.experimental_local_results(v)[0], gathered))
    context.merge_call(write, args=(gathered,))

  def validation_sums(self, batch, global_batch_size=None):
    """One replica's validation sums (evaluation.validation.validation_sums) of a padded batch
    {'image', 'label', 'index', 'weight'}: the live model attacked as the training attacks do
    (float32 logits, loss scaling under float16). No cross-replica op inside, so with
    config.jit_compile the replica's whole work compiles (a new tf.function per replica: one
    shared trace would capture replica 0's variables)."""
    if global_batch_size is not None:
      self._global_batch_size = global_batch_size

    def sums(batch):
      predict = self.objective.attack_predictor(self.model, False)
      return validation_sums(predict, batch['image'], batch['label'], batch['index'],
                             batch['weight'], self.config)
    if self.config.jit_compile:
      return tf.function(sums, jit_compile=True)(batch)
    return sums(batch)

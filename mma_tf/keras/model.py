"""`AdversarialModel`: the Keras wrapper (compile, fit, the train and test steps, export, config).

Which TrainConfig fields it takes as settings (`SETTINGS`) and which Keras owns (`_KERAS_OWNS`);
the data it is given becomes batches in `adapters.py`, its logs come from `statistics.py`.
"""
import keras
import numpy as np
import tensorflow as tf

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import objectives as objectives_lib
from mma_tf import perturbation_memory as memory_lib
from mma_tf.attacks import example_seeds
from mma_tf.data import checks
from mma_tf.evaluation.validation import validation_metrics
from mma_tf.keras import adapters
from mma_tf.keras.statistics import Statistics
from mma_tf.models import user as user_models
from mma_tf.step import ReplicaStep

# TrainConfig fields that are not settings of AdversarialModel: Keras (or your model) owns them.
_KERAS_OWNS = {
    'dataset': 'the data you pass to fit()',
    'num_validation': "fit()'s validation_data or validation_split",
    'model': 'the model you wrap',
    'sync_batchnorm': 'keras.layers.BatchNormalization(synchronized=True) in your model',
    'input_range': 'a keras.layers.Rescaling at the front of your model (images stay in [0, 1])',
    'mixed_precision': 'keras.mixed_precision.set_dtype_policy() before building your model',
    'optimizer': 'compile(optimizer=...)',
    'learning_rate': 'compile(optimizer=...)',
    'lr_boundaries': 'compile(optimizer=...) with a learning-rate schedule',
    'lr_values': 'compile(optimizer=...) with a learning-rate schedule',
    'momentum': 'compile(optimizer=...)',
    'batch_size': 'fit(batch_size=...)',
    'eval_batch_size': 'evaluate(batch_size=...) or fit(validation_batch_size=...)',
    'train_steps': 'fit(epochs=...)',
    'checkpoint_every': 'keras.callbacks.BackupAndRestore / ModelCheckpoint',
    'log_every': 'callbacks (TensorBoard(update_freq=...))',
    'steps_per_loop': 'compile(steps_per_execution=...)',
    'jit_compile': 'compile(jit_compile=...)',
    'deterministic': 'tf.config.experimental.enable_op_determinism()',
}
# The settings of every part and built-in objective, with their defaults (an objective's own:
# its dataclass's). An objective registered later is checked through configs.setting_owners.
SETTINGS = {}
for _settings in configs.OBJECTIVE_SETTINGS.values():  # mma first: clean_loss_coeff 1/3
  for _name, _field in configs.TrainConfig(settings=_settings()).fields().items():
    if _name not in _KERAS_OWNS:
      SETTINGS.setdefault(_name, _field.default)


def settings_of(config):
  """The AdversarialModel settings that train as a `configs.TrainConfig` does: those of its
  fields that differ from AdversarialModel's defaults."""
  return {k: getattr(config, k) for k in config.fields()
          if k in SETTINGS and getattr(config, k) != SETTINGS[k]}


def _python_terms(message):
  """A configuration message in argument names: '--hinge_maxeps' -> 'hinge_maxeps'."""
  return message.replace('--', '')


def _settings_config(settings, jit_compile=False):
  """The TrainConfig of the given settings (the rest at their defaults), checked as the CLI
  checks its flags; ValueError in argument names."""
  for name in settings:
    if name in _KERAS_OWNS:
      raise ValueError(f'{name} is not a setting of AdversarialModel: set it with '
                       f'{_KERAS_OWNS[name]}.')
    if name not in SETTINGS and not configs.setting_owners(name)[0]:
      raise ValueError(f'Unknown setting {name!r}; AdversarialModel takes {sorted(SETTINGS)}.')
  try:
    config = configs.build({'jit_compile': jit_compile}, settings)
    config.validate(objectives=tuple(objectives_lib.OBJECTIVES))
  except ValueError as e:
    raise ValueError(_python_terms(str(e))) from None
  return config



@keras.saving.register_keras_serializable(package='mma_tf')
class AdversarialModel(keras.Model):
  """`base` (a keras.Model from [0, 1] images to logits) trained by an objective of the registry
  (mma, omma, pgd_at, trades, standard, or one you registered) with compile() and fit().

  settings: TrainConfig fields (`SETTINGS`: names and defaults of TrainConfig / the CLI flags, and
    the settings of an objective you registered),
    checked here as the CLI checks its flags.
  num_examples: rows of the memories (default: the first fit()'s training examples); with
    image_shape (default: the base model's input shape) the memories exist at once, so weights
    saved by ModelCheckpoint / BackupAndRestore load before fit().

  Build `base` and this wrapper inside the same `strategy.scope()` to train on several devices.
  fit() logs the objective's statistics (its `summarize`: loss, avg_eps, frac_at_dmax, ...);
  evaluate() and fit(validation_data=...) report clean_acc, pgd_acc (PGD at test_eps) and
  avg_margin (AN-PGD), as the Trainer's validation.
  """

  def __init__(self, base, *, num_examples=None, image_shape=None, name=None, **settings):
    if not isinstance(base, keras.Model):
      raise ValueError(f'AdversarialModel wraps a keras.Model; got {type(base).__name__}.')
    policy = base.dtype_policy.name
    super().__init__(name=name or f'adversarial_{base.name}',
                     dtype=policy if policy in configs.PRECISIONS else None)
    self._settings = dict(settings)
    self.config = _settings_config(settings)
    self.base = base
    # The strategy whose scope this wrapper was built in (None: the default, one device).
    self._strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    self.objective = objectives_lib.build_objective(self.config)
    outside = self._strategy is None and any(
        isinstance(getattr(v, 'value', v), tf.distribute.DistributedValues) for v in base.variables)
    if outside:
      raise ValueError("The model's variables are distributed but AdversarialModel is built "
                       "outside the strategy's scope; build it inside the same "
                       'strategy.scope() as the model.')
    self.eps_memory = self.perturbation_memory = None
    self._replica_step, self._checked_shape, self._evaluating = None, None, False
    self._data_epoch = 0
    self._train_stats = self._val_stats = None
    self.image_shape = tuple(image_shape) if image_shape else self._base_image_shape()
    if num_examples is not None and self.image_shape is not None:
      self._prepare(self.image_shape, num_examples)
    self.built = base.built

  # ------------------------------------------------------------------------------ Keras API
  def call(self, inputs, training=False):
    images = inputs['image'] if isinstance(inputs, dict) else inputs
    return self.base(adapters.unit_images(images), training=training)

  def compile(self, optimizer='rmsprop', loss=None, metrics=None, jit_compile='auto', **kwargs):
    """Keras' compile. The objective is the loss and its statistics are the metrics, so `loss`,
    `metrics` and `weighted_metrics` are refused. jit_compile=True compiles the step with XLA as
    the Trainer's --jit_compile does ('auto': off, the Trainer's default)."""
    if loss is not None or metrics is not None or kwargs.get('weighted_metrics') is not None:
      raise ValueError(f'The objective ({self.config.objective}) is the loss and its statistics '
                       'are the metrics: compile() takes no loss, metrics or weighted_metrics.')
    if kwargs.get('run_eagerly') and jit_compile is True:
      raise ValueError('compile(run_eagerly=True) cannot also jit_compile the step.')
    self.config = _settings_config(self._settings, jit_compile=jit_compile is True)
    # Keras would compile the whole distributed step; the replica step compiles what XLA can.
    super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
    if self.dtype_policy.name == 'mixed_float16' and not isinstance(
        self.optimizer, keras.optimizers.LossScaleOptimizer):
      raise ValueError('The model computes in float16, which needs loss scaling: leave '
                       'compile(auto_scale_loss=True) or pass a '
                       'keras.optimizers.LossScaleOptimizer.')
    if self.built and not self.optimizer.built:
      # Now, not at the first fit(): weights loaded before it (load_weights, load_model) then
      # restore the optimizer's state too, instead of Keras skipping it with a warning.
      with self.distribute_strategy.scope():
        self.optimizer.build(self.trainable_variables)
    self._replica_step = None  # built for this optimizer on first use

  def get_compile_config(self):
    config = super().get_compile_config()
    if config:
      config['jit_compile'] = self.config.jit_compile  # what compile() was given
    return config

  def compile_from_config(self, config):
    """keras.saving.load_model compiles the loaded wrapper as it was (compile() builds the
    optimizer, so its state loads too)."""
    self.compile(**keras.saving.deserialize_keras_object(config))

  @property
  def metrics(self):
    return [m for m in (self._train_stats, self._val_stats) if m is not None]

  def get_metrics_result(self):
    stats = self._val_stats if self._evaluating else self._train_stats
    return stats.result() if stats is not None else {}

  def fit(self, x=None, y=None, batch_size=None, epochs=1, *, callbacks=None, shuffle=True,
          validation_split=0.0, validation_data=None, validation_batch_size=None,
          sample_weight=None, class_weight=None, steps_per_epoch=None, **kwargs):
    """Keras' fit with the index attached (the `mma_tf.keras` docstring). Not taken: sample_weight
    and class_weight (the objective weighs the examples), steps_per_epoch with arrays (epochs are
    whole permutations)."""
    if sample_weight is not None or class_weight is not None:
      raise ValueError('fit() takes no sample_weight or class_weight: the objective weighs the '
                       'examples.')
    if validation_split and validation_data is None:
      if isinstance(x, tf.data.Dataset):
        raise ValueError('validation_split needs arrays; pass validation_data with a dataset.')
      x, y, validation_data = adapters.split_arrays(x, y, validation_split)
    train = self._train_data(x, y, batch_size, shuffle, steps_per_epoch)
    if validation_data is not None:
      validation_data = self._eval_data(validation_data, None,
                                        validation_batch_size or batch_size)
    callbacks = list(callbacks or []) + [adapters.EpochOrder(self)]
    with adapters.data_errors():
      return super().fit(train, epochs=epochs, callbacks=callbacks, shuffle=False,
                         validation_data=validation_data, steps_per_epoch=steps_per_epoch,
                         **kwargs)

  def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
    """clean_acc, pgd_acc (PGD at test_eps) and avg_margin (AN-PGD), as the Trainer's
    validation: arrays (index = row), or a finite dataset of batches (images, labels)."""
    if not kwargs.get('_use_cached_eval_dataset'):  # fit()'s validation data is prepared
      if kwargs.get('sample_weight') is not None:
        raise ValueError('evaluate() takes no sample_weight: every example counts once.')
      x, y = self._eval_data(x, y, batch_size), None
    self._evaluating = True
    try:
      with adapters.data_errors():
        return super().evaluate(x, y, batch_size, *args, **kwargs)
    finally:
      self._evaluating = False

  def train_step(self, data):
    batch = self._train_batch(data)
    step = self._get_replica_step()
    local = tf.shape(batch['label'])[0]
    loss, sums, index, eps, remember = step.run(
        batch, tf.convert_to_tensor(self.optimizer.iterations), self._global(local))
    del loss  # the objective's statistics hold it
    step.gather_and_write(index, eps, remember)
    self._train_stats.update_state(sums, local)
    return self._train_stats.result()

  def test_step(self, data):
    batch = dict(data, image=adapters.unit_images(data['image']))
    sums = self._get_replica_step().validation_sums(
        batch, self._global(tf.shape(batch['label'])[0]))
    count = sums.pop('count')
    self._val_stats.update_state(sums, count)
    return self._val_stats.result()

  def export(self, filepath, format='tf_saved_model', verbose=None, input_signature=None,
             **kwargs):  # pylint: disable=redefined-builtin
    """The wrapped model's SavedModel (the memories stay out): [0, 1] float32 images -> logits,
    as `mma-evaluate --saved_model` and `export.load_classifier` take it."""
    if input_signature is None and self.image_shape is not None:
      input_signature = [tf.TensorSpec([None, *self.image_shape], tf.float32, name='images')]
    return self.base.export(filepath, format=format, verbose=verbose,
                            input_signature=input_signature, **kwargs)

  def get_config(self):
    num_examples = None if self.eps_memory is None else int(self.eps_memory.shape[0])
    return dict(self._settings, base=keras.saving.serialize_keras_object(self.base),
                num_examples=num_examples, image_shape=self.image_shape, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    base = keras.saving.deserialize_keras_object(config.pop('base'),
                                                 custom_objects=custom_objects)
    return cls(base, **config)

  # ------------------------------------------------------------------------------ set-up
  def _base_image_shape(self):
    try:
      shape = tuple(self.base.input_shape[1:])
    except (AttributeError, ValueError):  # a subclassed model records none
      return None
    return shape if None not in shape else None

  def _prepare(self, image_shape, num_examples=None):
    """Checks the model against the data's image shape (once), creates the metrics, and makes
    sure the memories hold `num_examples` rows (created at the first call that gives it).
    Returns the number of classes."""
    image_shape = tuple(int(d) for d in image_shape)
    if self._checked_shape is None:
      with self.distribute_strategy.scope():
        logits = self.base(tf.zeros([1, *image_shape]), training=False)  # builds it
        self.num_classes = int(logits.shape[-1]) if logits.shape.rank == 2 else -1
        user_models.check_classifier(self.base, image_shape, self.num_classes,
                                     self._strategy)
      self._checked_shape, self.image_shape, self.built = image_shape, image_shape, True
      with self.distribute_strategy.scope():
        self._train_stats = Statistics(self._stat_names(), self.objective.summarize,
                                        'objective')
        self._val_stats = Statistics(
            ('clean_correct', 'pgd_correct', 'margin'),
            lambda sums, count: validation_metrics(dict(sums, count=count)), 'validation')
    elif image_shape != self._checked_shape:
      raise ValueError(f'The data has images of shape {list(image_shape)}; this model was set '
                       f'up for {list(self._checked_shape)}.')
    if num_examples is None:
      pass
    elif self.eps_memory is None:
      self._create_memories(num_examples)
    elif num_examples > self.eps_memory.shape[0]:
      raise ValueError(f'The data has {num_examples} training examples (indices up to '
                       f'{num_examples - 1}) but the memory holds {self.eps_memory.shape[0]} '
                       '(num_examples); train on at most that many, or build a new '
                       'AdversarialModel with a larger num_examples.')
    if getattr(self, 'optimizer', None) is not None and not self.optimizer.built:
      with self.distribute_strategy.scope():  # the attacks read a loss scale's variable
        self.optimizer.build(self.trainable_variables)
    return self.num_classes

  def _create_memories(self, num_examples):
    config = self.config
    if config.perturbation_memory:  # before allocating: refused with its size, not an OOM
      try:
        memory_lib.check_size(num_examples, self.image_shape, config.perturbation_memory_bits,
                              config.perturbation_memory_limit_mb)
      except ValueError as e:
        raise ValueError(_python_terms(str(e))) from None

    def weight(name, shape, dtype):
      return self.add_weight(shape=shape, initializer='zeros', dtype=dtype, trainable=False,
                             name=name)
    with self.distribute_strategy.scope():
      self.eps_memory = weight('eps_memory', [num_examples], 'float32')
      if config.perturbation_memory:
        # The table's tf.Variables are the Keras weights' (saved with them).
        self.perturbation_memory = memory_lib.PerturbationMemory(
            num_examples, self.image_shape, config.perturbation_memory_bits,
            make_variable=lambda *args: weight(*args).value)
    self._replica_step = None  # it holds the memories

  def _stat_names(self):
    """The objective's statistics, from a trace of one call (nothing runs)."""
    names, shape = [], self.image_shape
    objective = objectives_lib.build_objective(self.config)

    def replica():
      x = tf.zeros([2, *shape])
      kwargs = {}
      if self.config.perturbation_memory:
        kwargs['warm_start'] = (tf.zeros_like(x), tf.zeros([2], tf.bool))
      with tf.GradientTape() as tape:
        out = objective(self.base, x, tf.zeros([2], tf.int32), tf.zeros([2]),
                        example_seeds(tf.constant([0, 0], tf.int64), tf.range(2)),
                        tape.stop_recording, **kwargs)
      names.extend(sorted(out.stats))
      return out.loss
    tf.function(lambda: self.distribute_strategy.run(replica)).get_concrete_function()
    return names

  def _get_replica_step(self):
    if self._replica_step is None:
      whole = self._strategy is None
      self.objective = objectives_lib.build_objective(self.config)
      self._replica_step = ReplicaStep(
          self.config, self.objective, self.base, self.optimizer, self.eps_memory,
          self.perturbation_memory, self.distribute_strategy.num_replicas_in_sync,
          whole_step_xla=whole)
    return self._replica_step

  def _global(self, local):
    """The global batch size from this replica's."""
    if not tf.distribute.has_strategy():
      return local
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)

  # ------------------------------------------------------------------------------ data
  def _train_data(self, x, y, batch_size, shuffle, steps_per_epoch):
    """The training dataset of batches {'image', 'label', 'index'}."""
    if isinstance(x, tf.data.Dataset):
      if y is not None:
        raise ValueError('fit(dataset) takes no y: the dataset yields (images, labels).')
      return self._dataset_batches(x, 'training', for_training=True)
    if steps_per_epoch is not None:
      raise ValueError('fit() from arrays runs whole epochs (a permutation each); drop '
                       'steps_per_epoch, or pass a tf.data.Dataset.')
    if not isinstance(shuffle, bool):
      raise ValueError(f'shuffle must be True or False; got {shuffle!r}.')
    images, labels, index = adapters.checked_arrays(x, y, 'training')
    n, batch_size = len(labels), batch_size or 32
    if n // batch_size < 1:
      raise ValueError(f'batch_size={batch_size} exceeds the {n} training examples.')
    classes = self._prepare(images.shape[1:], n if index is None else int(index.max()) + 1)
    checks.check_label_range(labels, classes, 'training')
    return adapters.array_batches(images, labels, index, batch_size, self.config.seed, shuffle,
                                  lambda: self._data_epoch)

  def _dataset_batches(self, dataset, split, for_training):
    """Checked batches of a dataset (adapters.indexed_batches), the model and memories set up
    for it: training data sizes the memories, if they do not exist yet."""
    dataset, image_spec = adapters.indexed_batches(dataset)
    shape = image_spec.shape[1:]
    if for_training:
      classes = self._prepare(shape, adapters.rows_needed(dataset)
                              if self.eps_memory is None else 0)
      rows = int(self.eps_memory.shape[0])
    else:
      classes, rows = self._prepare(shape), None
    return adapters.checked_batches(dataset, split, classes, rows, for_training)

  def _eval_data(self, x, y, batch_size):
    """Validation batches {'image', 'label', 'index', 'weight'} (padded with weight 0)."""
    if isinstance(x, (tuple, list)) and y is None and len(x) == 2:
      x, y = x  # validation_data=(x_val, y_val)
    if isinstance(x, tf.data.Dataset):
      if y is not None:
        raise ValueError('evaluate(dataset) takes no y: the dataset yields (images, labels).')
      return self._dataset_batches(x, 'validation', for_training=False)
    images, labels, index = adapters.checked_arrays(x, y, 'validation')
    classes = self._prepare(images.shape[1:])
    checks.check_label_range(labels, classes, 'validation')
    index = np.arange(len(labels), dtype=np.int32) if index is None else index
    return data_lib.eval_dataset(checks.to_unit(images), labels, index, batch_size or 32)

  def _train_batch(self, data):
    return dict(data, image=adapters.unit_images(data['image']))

"""MMA the Keras way: `AdversarialModel` wraps your model so that training is compile() + fit().

  base = build_my_model()                      # any Keras model from [0, 1] images to logits
  model = mma_tf.keras.AdversarialModel(base, objective='mma', norm='Linf', hinge_maxeps=0.45)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.fit(x_train, y_train, batch_size=50, epochs=30, validation_data=(x_val, y_val),
            callbacks=[keras.callbacks.BackupAndRestore('backup/')])
  base.export('export/')                       # or model.export(...): logits from [0, 1] images

Settings are the `TrainConfig` fields (same names and defaults as the CLI's flags, the objective's
own settings included) that say what a step computes; the ones Keras owns are set the Keras way
(`_KERAS_OWNS`). `train_step` runs `step.ReplicaStep`, the Trainer's step: on the same batch,
weights and memories both give the same result.

The example index. The eps memory (and the perturbation memory) keep one row per training
example, keyed by its index; the wrapper attaches it, and it travels with the example:
  - arrays `fit(x, y)` (images uint8 0-255 or float in [0, 1], integer labels): index = row of x.
    The wrapper batches them itself: every epoch is a permutation drawn from (seed, epoch)
    (shuffle=False: the arrays' order), in batches of exactly batch_size (the last partial batch
    is dropped, as the Trainer does). So an epoch replayed after a restart (BackupAndRestore) is
    the same epoch. `x={'image': images, 'index': indices}` gives your own indices.
  - a finite `tf.data.Dataset` of batches (images, labels) in a fixed order: index = position in
    the dataset. A dataset that shuffles (a shuffle op in its graph, or options().deterministic
    False) is refused: its positions would name other examples every epoch. To shuffle, attach
    the index first (`with_index(ds)`, before shuffle and batch): batches ({'image', 'index'},
    labels) carry their own index.
Data with more examples than the memory holds is refused (arrays before training; datasets as
they are read, an error naming the example), never a silent wrong row. The memory is sized by
`num_examples`, or else by the first fit()'s training data.

Resume: the memories are weights of the wrapper and the attack randomness is keyed by
`optimizer.iterations`, so `BackupAndRestore` (save_freq='epoch') resumes exactly; mid-epoch
backups (save_freq=N) replay the interrupted epoch from its start, as for any Keras model.
"""
import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import objectives as objectives_lib
from mma_tf import perturbation_memory as memory_lib
from mma_tf.attacks import example_seeds
from mma_tf.evaluation.validation import validation_metrics
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


def with_index(dataset):
  """(image, label) examples -> ({'image', 'index'}, label), index = position in `dataset`
  (unbatched, in a fixed order). Shuffle and batch after it: the index travels with the example."""
  spec = dataset.element_spec
  if not (isinstance(spec, tuple) and len(spec) == 2) or spec[0].shape.rank != 3:
    raise ValueError(f'with_index takes an unbatched dataset of (image [H, W, C], label); got '
                     f'{spec}.')
  return dataset.enumerate().map(
      lambda i, example: ({'image': example[0], 'index': tf.cast(i, tf.int32)}, example[1]))


def _unit_images(images):
  """uint8 0-255 or float [0, 1] images -> float32 in [0, 1]."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


def _shuffling(dataset):
  """Why `dataset` may not give its examples in the same order every time, or None."""
  if dataset.options().deterministic is False:
    return 'its options allow non-deterministic order'
  try:  # the dataset's graph; no public API reads it
    variant = dataset._variant_tensor  # pylint: disable=protected-access
    graph = tf.compat.v1.GraphDef.FromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=variant).numpy())
  except Exception:  # pylint: disable=broad-except  (cannot tell)
    return None
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  ops = sorted({n.op for n in nodes if 'Shuffle' in n.op})
  return f'it shuffles ({", ".join(ops)})' if ops else None


_DATA_ERROR = 'mma_tf.keras'  # starts the messages of the datasets' checks


@contextlib.contextmanager
def _data_errors():
  """A failed check of a dataset as it is read (an InvalidArgumentError from the iterator)
  becomes a ValueError with its message."""
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    if _DATA_ERROR not in e.message:
      raise
    raise ValueError(e.message[e.message.index(_DATA_ERROR):].splitlines()[0]) from None


class _Statistics(keras.metrics.Metric):
  """Sums of named per-example statistics and their count; `result()` is `summarize(sums,
  count)` under fixed keys (NaN for a key summarize leaves out, e.g. avg_eps before any example
  is attacked). Read in a replica, the sums are all-reduced first, so every step's logs are the
  epoch's exact running values; read across replicas (at the end of an epoch) they add up."""

  def __init__(self, names, summarize, name):
    super().__init__(name=name)
    self.names, self.summarize = tuple(names), summarize
    self.keys = tuple(summarize({n: 1.0 for n in self.names}, 1.0))
    self.sums = self.add_variable(shape=[len(self.names) + 1], initializer='zeros',
                                  name='sums')

  def update_state(self, sums, count):
    self.sums.assign_add(tf.stack([tf.cast(sums[n], tf.float32) for n in self.names]
                                  + [tf.cast(count, tf.float32)]))

  def _results(self, values):
    values = [float(v) for v in values]
    got = self.summarize(dict(zip(self.names, values)), values[-1]) if values[-1] > 0 else {}
    return [float(got.get(k, math.nan)) for k in self.keys]

  def result(self):
    values = tf.convert_to_tensor(self.sums)
    context = tf.distribute.get_replica_context()
    if tf.distribute.has_strategy() and context is not None:
      values = context.all_reduce(tf.distribute.ReduceOp.SUM, values)
    if tf.executing_eagerly():
      return dict(zip(self.keys, self._results(values.numpy())))
    out = tf.numpy_function(lambda v: np.array(self._results(v), np.float32), [values],
                            tf.float32, stateful=False)
    return dict(zip(self.keys, tf.unstack(tf.ensure_shape(out, [len(self.keys)]))))

  def reset_state(self):
    self.sums.assign(tf.zeros_like(self.sums))


class _EpochOrder(keras.callbacks.Callback):
  """Tells the array pipeline which epoch starts (its permutation is drawn from (seed, epoch))."""

  def __init__(self, wrapper):
    super().__init__()
    self.wrapper = wrapper

  def on_epoch_begin(self, epoch, logs=None):
    self.wrapper._data_epoch = epoch  # pylint: disable=protected-access


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
    if self.config.perturbation_memory and not self.objective.supports_perturbation_memory:
      raise ValueError(f'perturbation_memory stores the training attack\'s perturbation, and the '
                       f'objective {self.objective.name!r} has no training attack that can '
                       'start from one; drop it.')
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
    return self.base(_unit_images(images), training=training)

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
    self._replica_step = None  # built for this optimizer on first use

  def get_compile_config(self):
    config = super().get_compile_config()
    if config:
      config['jit_compile'] = self.config.jit_compile  # what compile() was given
    return config

  def compile_from_config(self, config):
    """keras.saving.load_model compiles the loaded wrapper as it was (optimizer state too)."""
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
      self.optimizer.build(self.trainable_variables)

  @property
  def metrics(self):
    return [m for m in (self._train_stats, self._val_stats) if m is not None]

  def get_metrics_result(self):
    stats = self._val_stats if self._evaluating else self._train_stats
    return stats.result() if stats is not None else {}

  def fit(self, x=None, y=None, batch_size=None, epochs=1, *, callbacks=None, shuffle=True,
          validation_split=0.0, validation_data=None, validation_batch_size=None,
          sample_weight=None, class_weight=None, steps_per_epoch=None, **kwargs):
    """Keras' fit with the index attached (module docstring). Not taken: sample_weight and
    class_weight (the objective weighs the examples), steps_per_epoch with arrays (epochs are
    whole permutations)."""
    if sample_weight is not None or class_weight is not None:
      raise ValueError('fit() takes no sample_weight or class_weight: the objective weighs the '
                       'examples.')
    if validation_split and validation_data is None:
      if isinstance(x, tf.data.Dataset):
        raise ValueError('validation_split needs arrays; pass validation_data with a dataset.')
      x, y, validation_data = self._split(x, y, validation_split)
    train = self._train_data(x, y, batch_size, shuffle, steps_per_epoch)
    if validation_data is not None:
      validation_data = self._eval_data(validation_data, None,
                                        validation_batch_size or batch_size)
    callbacks = list(callbacks or []) + [_EpochOrder(self)]
    with _data_errors():
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
      with _data_errors():
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
    batch = dict(data, image=_unit_images(data['image']))
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
        self._train_stats = _Statistics(self._stat_names(), self.objective.summarize,
                                        'objective')
        self._val_stats = _Statistics(
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
  @staticmethod
  def _split(x, y, validation_split):
    """Keras' validation_split: the last fraction of the arrays."""
    n = len(x['image'] if isinstance(x, dict) else x)
    at = int(math.floor(n * (1.0 - validation_split)))
    head = lambda v: {k: a[:at] for k, a in v.items()} if isinstance(v, dict) else v[:at]
    tail = lambda v: v['image'][at:] if isinstance(v, dict) else v[at:]
    return head(x), y[:at], (tail(x), y[at:])

  def _arrays(self, x, y, split):
    """(images, labels, indices or None) checked as data.from_arrays checks them."""
    index = None
    if isinstance(x, dict):
      if set(x) != {'image', 'index'}:
        raise ValueError(f"x as a dict has the keys 'image' and 'index'; got {sorted(x)}.")
      x, index = x['image'], np.asarray(x['index'])
    images = data_lib._as_nhwc(np.asarray(x), split)  # pylint: disable=protected-access
    labels = data_lib._as_labels(y, len(images), split)  # pylint: disable=protected-access
    data_lib._pixel_kind(images, split)  # pylint: disable=protected-access
    if index is not None:
      if (index.shape != (len(images),) or not np.issubdtype(index.dtype, np.integer)
          or (len(index) and index.min() < 0) or len(np.unique(index)) != len(index)):
        raise ValueError(f"x['index'] must hold one distinct integer >= 0 per image "
                         f'({len(images)}); got {index.dtype} {index.shape}.')
      index = index.astype(np.int32)
    return images, labels, index

  def _train_data(self, x, y, batch_size, shuffle, steps_per_epoch):
    """The training dataset of batches {'image', 'label', 'index'}."""
    if isinstance(x, tf.data.Dataset):
      if y is not None:
        raise ValueError('fit(dataset) takes no y: the dataset yields (images, labels).')
      return self._checked_dataset(x, 'training', for_training=True)
    if steps_per_epoch is not None:
      raise ValueError('fit() from arrays runs whole epochs (a permutation each); drop '
                       'steps_per_epoch, or pass a tf.data.Dataset.')
    if not isinstance(shuffle, bool):
      raise ValueError(f'shuffle must be True or False; got {shuffle!r}.')
    images, labels, index = self._arrays(x, y, 'training')
    n, batch_size = len(labels), batch_size or 32
    steps = n // batch_size
    if steps < 1:
      raise ValueError(f'batch_size={batch_size} exceeds the {n} training examples.')
    classes = self._prepare(images.shape[1:], n if index is None else int(index.max()) + 1)
    data_lib._check_label_range(labels, classes, 'training')  # pylint: disable=protected-access
    index = np.arange(n, dtype=np.int32) if index is None else index
    seed = self.config.seed

    def epoch_order():
      # Read when the epoch's iterator starts, after on_epoch_begin named the epoch.
      if not shuffle:
        return np.arange(n)
      return np.random.default_rng([seed, self._data_epoch]).permutation(n)

    def epoch(_):
      order = tf.numpy_function(epoch_order, [], tf.int64)
      return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(order, [n])[:steps * batch_size])

    tensors = [tf.constant(a) for a in (images, labels, index)]
    ds = tf.data.Dataset.from_tensors(0).flat_map(epoch).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda rows: dict(zip(('image', 'label', 'index'),
                                      (tf.gather(t, rows) for t in tensors))))
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)

  def _checked_dataset(self, dataset, split, for_training):
    """A dataset of batches (images, labels) or ({'image', 'index'}, labels) as batches
    {'image', 'label', 'index'[, 'weight']}, its indices, labels and pixels checked as read."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
      raise ValueError(f'The dataset must yield batches (images, labels) or ({{"image", '
                       f'"index"}}, labels); got {spec}.')
    indexed = isinstance(spec[0], dict)
    if indexed and set(spec[0]) != {'image', 'index'}:
      raise ValueError(f"The dataset's inputs as a dict have the keys 'image' and 'index'; got "
                       f'{sorted(spec[0])}.')
    image_spec = spec[0]['image'] if indexed else spec[0]
    bad = f'{_DATA_ERROR} {split} data:'
    if image_spec.shape.rank != 4 or None in image_spec.shape[1:]:
      raise ValueError(f'The dataset must yield batches of images [batch, H, W, C] of one '
                       f'shape; got {image_spec.shape} (batch it: dataset.batch(n)).')
    if not (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating):
      raise ValueError(f'Images must be uint8 (0-255) or float in [0, 1]; got '
                       f'{image_spec.dtype.name}.')
    if not indexed:
      why = _shuffling(dataset)
      if why:
        raise ValueError(f'The dataset does not keep its order ({why}), so an example\'s '
                         'position, its index in the memory, would change between epochs. Attach '
                         'the index before shuffling: mma_tf.keras.with_index(unbatched) '
                         '.shuffle(...).batch(...); or pass arrays.')
      dataset = dataset.scan(tf.constant(0), lambda at, xy: (
          at + tf.shape(xy[1])[0],
          ({'image': xy[0], 'index': at + tf.range(tf.shape(xy[1])[0])}, xy[1])))
    if for_training:
      if self.eps_memory is None:  # sized by this data: one pass to count it
        needed = int(dataset.map(lambda x, y: tf.reduce_max(x['index']) + 1).reduce(
            tf.constant(0), tf.maximum))
      else:
        needed = 0
      classes = self._prepare(image_spec.shape[1:], needed)
      rows = int(self.eps_memory.shape[0])
    else:
      classes, rows = self._prepare(image_spec.shape[1:]), None

    def checked(x, y):
      index, labels = tf.cast(x['index'], tf.int32), tf.cast(y, tf.int32)
      checks = [
          tf.debugging.assert_non_negative(index, message=f'{bad} a negative example index'),
          tf.debugging.assert_non_negative(labels, message=f'{bad} a negative label'),
          tf.debugging.assert_less(labels, classes, message=(
              f'{bad} a label is >= the {classes} classes of the model')),
      ]
      if rows is not None:
        checks.append(tf.debugging.assert_less(index, rows, message=(
            f'{bad} an example index is >= the {rows} rows of the memory (num_examples): the '
            'data has more examples than the memory was sized for')))
      images = x['image']
      if images.dtype.is_floating:
        checks.append(tf.debugging.assert_less_equal(
            tf.abs(tf.cast(images, tf.float32) - 0.5), 0.5,
            message=f'{bad} float pixels outside [0, 1]'))
      with tf.control_dependencies(checks):
        batch = {'image': tf.identity(images), 'label': labels, 'index': index}
      if not for_training:
        batch['weight'] = tf.ones(tf.shape(labels), tf.float32)
      return batch
    return dataset.map(checked)

  def _eval_data(self, x, y, batch_size):
    """Validation batches {'image', 'label', 'index', 'weight'} (padded with weight 0)."""
    if isinstance(x, (tuple, list)) and y is None and len(x) == 2:
      x, y = x  # validation_data=(x_val, y_val)
    if isinstance(x, tf.data.Dataset):
      if y is not None:
        raise ValueError('evaluate(dataset) takes no y: the dataset yields (images, labels).')
      return self._checked_dataset(x, 'validation', for_training=False)
    images, labels, index = self._arrays(x, y, 'validation')
    classes = self._prepare(images.shape[1:])
    data_lib._check_label_range(labels, classes, 'validation')  # pylint: disable=protected-access
    index = np.arange(len(labels), dtype=np.int32) if index is None else index
    images = data_lib._to_unit_np(images)  # pylint: disable=protected-access
    return data_lib.eval_dataset(images, labels, index, batch_size or 32)

  def _train_batch(self, data):
    return dict(data, image=_unit_images(data['image']))

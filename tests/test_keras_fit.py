"""mma_tf.keras.AdversarialModel: compile() + fit() run the Trainer's step, keep the example index
through shuffling, replicas and restarts, and save, load and export."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config, warm_start
from mma_tf import export as export_lib
from mma_tf import keras as keras_lib
from mma_tf import losses, models, objectives, precision
from mma_tf import trainer as trainer_lib

QUIET = lambda m: None


def _config(**overrides):
  fields = dict(model='small_cnn', batch_size=16, optimizer='sgd', learning_rate=0.05,
                momentum=0.9, nb_iter=2, num_search_steps=4)
  fields.update(overrides)
  return tiny_config(**fields)



def _wrapper(config, weights=None, compile_args=None, **kwargs):
  base = models.small_cnn((8, 8, 1), 10)
  if weights is not None:
    base.set_weights(weights)
  model = keras_lib.AdversarialModel(base, **keras_lib.settings_of(config), **kwargs)
  model.compile(optimizer=trainer_lib.build_optimizer(config), **(compile_args or {}))
  return model


def _trainer_batches(trainer, steps):
  """The trainer's first `steps` global batches of epoch 0 as a dataset of indexed batches."""
  c = trainer.config
  from mma_tf import data as data_lib
  batches = list(data_lib.train_dataset(trainer.task.data, c.batch_size, c.seed, 0).take(steps))
  return tf.data.Dataset.from_tensor_slices((
      {'image': tf.stack([b['image'] for b in batches]),
       'index': tf.stack([b['index'] for b in batches])},
      tf.stack([b['label'] for b in batches])))


def _state(model):
  memory = []
  if model.perturbation_memory is not None:
    memory = [model.perturbation_memory.stored().numpy(), model.perturbation_memory.known.numpy()]
  return [v.numpy() for v in model.base.weights] + [model.eps_memory.numpy()] + memory


# ------------------------------------------------------------------------------ one step
@pytest.mark.parametrize('memory', [False, True])
def test_fit_steps_equal_trainer_steps_and_log_their_statistics(memory, data8, warm_weights,
                                                                tmp_path):
  config = _config(perturbation_memory=memory)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  warm_start([trainer], warm_weights)  # most examples correct: MMA attacks them
  model = _wrapper(config, trainer.task.model.get_weights(), num_examples=data8.num_train_total)
  iterator = iter(trainer.task.train_batches(0))
  outs = [trainer.task.train_step(iterator) for _ in range(2)]
  history = model.fit(_trainer_batches(trainer, 2), epochs=1, verbose=0).history
  task = trainer.task
  state = [v.numpy() for v in task.model.weights] + [task.eps_memory.numpy()]
  if memory:
    state += [task.perturbation_memory.stored().numpy(), task.perturbation_memory.known.numpy()]
  for a, b in zip(state, _state(model), strict=True):
    np.testing.assert_array_equal(a, b)
  assert np.count_nonzero(model.eps_memory.numpy()) > 16  # the second step read the first's
  sums = {k: sum(float(o[k]) for o in outs) for k in outs[0] if k not in ('total_loss', 'eps')}
  expected = task.objective.summarize(sums, 2 * config.batch_size)
  assert set(history) == set(expected)
  for k, v in expected.items():
    assert history[k][0] == pytest.approx(v, rel=1e-6), k
  # evaluate() is the trainer's validation.
  images, labels, _ = data8.eval_split('validation')
  got = model.evaluate(images, labels, batch_size=20, return_dict=True, verbose=0)
  want = trainer.evaluate('validation')
  for k in ('clean_acc', 'pgd_acc', 'avg_margin'):
    assert got[k] == pytest.approx(want[k], rel=1e-6), k


# Slow (CI: --runslow): the default tier proves that fit() takes the trainer's steps
# (test_fit_steps_equal_trainer_steps_and_log_their_statistics) and that the trainer's step on
# two replicas is one device's (test_trainer.py::test_mirrored_step_equals_one_device).
@pytest.mark.slow
def test_two_replicas_keep_the_weights_and_memories_of_one_device(data8, warm_weights, tmp_path,
                                                                  two_cpu_strategy):
  config = _config(perturbation_memory=True)
  weights = warm_weights
  one = _wrapper(config, weights)
  with two_cpu_strategy.scope():
    two = _wrapper(config, weights)
  x, y = data8.train_images, data8.train_labels
  for model in (one, two):
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # epoch 2 reads epoch 1's rows
  assert one.perturbation_memory.known.numpy().sum() > 100
  for a, b in zip(_state(one), _state(two), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-3)  # the same weights up to float rounding
  for variable in (two.eps_memory.value, two.perturbation_memory.table,
                   two.perturbation_memory.known):
    first, second = [v.numpy() for v in variable.values]
    np.testing.assert_array_equal(first, second)  # replicas hold one table


# ------------------------------------------------------------------------------ the index
@pytest.fixture
def echo_objective():
  """A registered objective that remembers each example's mean pixel as its eps: a row of the
  memory shows which example it was written for."""

  @objectives.register
  class Echo(objectives.Objective):
    name = 'echo_mean_pixel'
    uses_eps_memory = True

    def __call__(self, model, x, y, eps0, seeds, stop_recording):
      ce = losses.cross_entropy(self.logits(model, x, True), y)
      return objectives.ObjectiveOutput(ce, tf.reduce_mean(x, [1, 2, 3]), {'loss': ce})
  yield Echo.name
  objectives.unregister(Echo.name)


def _echo(objective, **kwargs):
  model = keras_lib.AdversarialModel(models.small_cnn((8, 8, 1), 10), objective=objective,
                                     **kwargs)
  model.compile(optimizer=keras.optimizers.SGD(0.01))
  return model


def _expected_rows(images):
  return images.reshape(len(images), -1).astype(np.float32).mean(1) / 255.0


def test_the_index_travels_with_the_example_through_shuffles(echo_objective, data8):
  x, y = data8.train_images, data8.train_labels  # 200 uint8 images
  arrays = _echo(echo_objective)
  arrays.fit(x, y, batch_size=16, epochs=1, verbose=0)  # shuffled; 192 trained, 8 dropped
  rows = arrays.eps_memory.numpy()
  assert np.count_nonzero(rows) == 192
  trained = rows > 0
  np.testing.assert_allclose(rows[trained], _expected_rows(x)[trained], rtol=1e-5)
  assert not np.all(np.nonzero(trained)[0] < 192)  # shuffled: not the first 192 rows

  positions = _echo(echo_objective)  # a fixed-order dataset: index = position
  positions.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(30), verbose=0)
  np.testing.assert_allclose(positions.eps_memory.numpy(), _expected_rows(x), rtol=1e-5)

  shuffled = _echo(echo_objective)  # the index attached before shuffling
  dataset = keras_lib.with_index(tf.data.Dataset.from_tensor_slices((x / 255.0, y)))
  shuffled.fit(dataset.shuffle(200, seed=1).batch(30), verbose=0)
  np.testing.assert_allclose(shuffled.eps_memory.numpy(), _expected_rows(x), rtol=1e-5)


def test_data_the_memory_cannot_hold_is_refused(echo_objective, data8):
  x, y = data8.train_images, data8.train_labels
  model = _echo(echo_objective, num_examples=150)
  with pytest.raises(ValueError, match='200 training examples .* memory holds 150'):
    model.fit(x, y, batch_size=16, verbose=0)
  with pytest.raises(ValueError, match='float images must lie in'):
    model.fit(x * 1.0, y, verbose=0)
  assert not np.any(model.eps_memory.numpy())  # arrays are refused before any step
  # A dataset is checked as it is read: the error names it, no row is written for it.
  with pytest.raises(ValueError, match=r'index is >= the 150 rows of the memory'):
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(30), verbose=0)
  with pytest.raises(ValueError, match=r'does not keep its order \(it shuffles.*with_index'):
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(100).batch(30), verbose=0)


def test_uint8_and_float_arrays_train_alike(data8):
  x, y = data8.train_images, data8.train_labels
  weights = models.small_cnn((8, 8, 1), 10).get_weights()
  trained = []
  for images in (x, x.astype(np.float32) / 255.0):
    model = _wrapper(_config(), weights)
    model.fit(images, y, batch_size=16, epochs=1, verbose=0)
    trained.append(_state(model))
  for a, b in zip(*trained, strict=True):  # the same up to the rounding of x / 255
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ settings
def test_settings_are_trainconfig_fields_checked_in_python_terms(data8):
  from mma_tf import configs
  defaults = configs.TrainConfig()
  assert keras_lib.SETTINGS['hinge_maxeps'] == defaults.hinge_maxeps
  every_field = set().union(*(configs.TrainConfig(settings=settings()).fields()
                               for settings in configs.OBJECTIVE_SETTINGS.values()))
  assert set(keras_lib.SETTINGS) | set(keras_lib._KERAS_OWNS) == every_field
  # Every objective's settings.
  assert keras_lib.SETTINGS['trades_beta'] == configs.TradesSettings.trades_beta
  base = models.small_cnn((8, 8, 1), 10)
  model = keras_lib.AdversarialModel(base, objective='omma')
  assert model.config.clean_loss_coeff == 0  # the OMMA rule of the CLI
  for settings, message in [
      ({'hinge_maxeps': -1.0}, r'^hinge_maxeps must be > 0; got -1.0\.$'),
      ({'objective': 'pgd_at', 'clean_loss_coeff': 0.5}, r'^clean_loss_coeff has no effect'),
      ({'objective': 'nope'}, r"Unknown objective 'nope'"),
      ({'learning_rate': 0.1}, r'learning_rate is not a setting .* compile\(optimizer=\.\.\.\)'),
      ({'hinge_max_eps': 0.3}, r"Unknown setting 'hinge_max_eps'"),
      ({'objective': 'standard', 'perturbation_memory': True}, r'objective=standard has no'),
  ]:
    with pytest.raises(ValueError, match=message) as error:
      keras_lib.AdversarialModel(base, **settings)
    assert '--' not in str(error.value)
  with pytest.raises(ValueError, match='is the loss'):
    model.compile(optimizer='adam', loss='mse')


# ------------------------------------------------------------------------------ resume, saving
class _Crash(keras.callbacks.Callback):
  def __init__(self, epoch, batch):
    super().__init__()
    self.at, self.epoch = (epoch, batch), None

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if (self.epoch, batch) == self.at:
      raise RuntimeError('preempted')


def test_backup_and_restore_resumes_a_crashed_fit_exactly(data8, warm_weights, tmp_path,
                                                          op_determinism):  # noqa: F811
  config = _config(perturbation_memory=True, optimizer='adam', learning_rate=1e-2, momentum=None)
  x, y = data8.train_images, data8.train_labels
  fit = dict(batch_size=16, epochs=3, verbose=0)
  full = _wrapper(config, warm_weights)
  full.fit(x, y, **fit)
  backup = keras.callbacks.BackupAndRestore(str(tmp_path / 'backup'))
  with pytest.raises(RuntimeError, match='preempted'):
    _wrapper(config, warm_weights).fit(x, y, callbacks=[backup, _Crash(1, 5)], **fit)
  epochs = []
  resumed = _wrapper(config, warm_weights)  # as a restarted process builds it
  resumed.fit(x, y, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / 'backup')),
                               keras.callbacks.LambdaCallback(
                                   on_epoch_begin=lambda e, logs: epochs.append(e))], **fit)
  assert epochs == [1, 2]  # restored after epoch 0, epoch 1 replayed
  assert full.perturbation_memory.known.numpy().sum() > 100
  assert int(resumed.optimizer.iterations) == int(full.optimizer.iterations) == 36
  for a, b in zip(_state(full), _state(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(full.optimizer.variables, resumed.optimizer.variables, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_files_keras_files_and_exports(data8, warm_weights, tmp_path):
  config = _config(perturbation_memory=True)
  model = _wrapper(config, warm_weights)
  path = str(tmp_path / 'model.weights.h5')
  model.fit(data8.train_images, data8.train_labels, batch_size=16, verbose=0, callbacks=[
      keras.callbacks.ModelCheckpoint(path, save_weights_only=True)])
  assert np.count_nonzero(model.eps_memory.numpy()) > 50
  restored = _wrapper(config, num_examples=data8.num_train_total)  # memories exist at once
  restored.load_weights(path)
  for a, b in zip(_state(model), _state(restored), strict=True):
    np.testing.assert_array_equal(a, b)
  # The optimizer's state too (iterations, momentum): compile() built it, so Keras loaded it.
  for a, b in zip(model.optimizer.variables, restored.optimizer.variables, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  keras.saving.save_model(model, str(tmp_path / 'model.keras'))
  loaded = keras.saving.load_model(str(tmp_path / 'model.keras'))
  assert isinstance(loaded, keras_lib.AdversarialModel) and loaded.config == model.config
  for a, b in zip(_state(model), _state(loaded), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)

  images = tf.constant(data8.test_images[:8] / 255.0, tf.float32)
  for name, exporter in (('wrapper', model), ('base', model.base)):
    exporter.export(str(tmp_path / name), verbose=False)
    predict, spec = export_lib.load_classifier(str(tmp_path / name))  # as mma-evaluate loads
    assert tuple(spec.shape[1:]) == (8, 8, 1)
    np.testing.assert_allclose(predict(images), model.base(images), atol=1e-5)
  size = lambda name: os.path.getsize(tmp_path / name / 'variables' /
                                      'variables.data-00000-of-00001')
  assert size('wrapper') == size('base')  # the memories stay out of the export


# ------------------------------------------------------------------------------ speed switches
@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
def test_steps_per_execution_and_xla_keep_the_step(data8, warm_weights):
  x, y = data8.train_images[:64], data8.train_labels[:64]
  states = {}
  for name, compile_args in (('plain', {}), ('spe', {'steps_per_execution': 2}),
                             ('xla', {'jit_compile': True})):
    model = _wrapper(_config(), warm_weights, compile_args)
    model.fit(x, y, batch_size=16, verbose=0)
    states[name] = _state(model)
  assert np.count_nonzero(states['plain'][-1]) > 16
  for a, b in zip(states['plain'], states['spe'], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for a, b in zip(states['plain'], states['xla'], strict=True):
    np.testing.assert_allclose(a, b, atol=2e-3)  # XLA's CPU kernels round differently


def test_a_float16_model_trains_with_loss_scaling(data8):
  with precision.dtype_policy('mixed_float16'):
    base = models.small_cnn((8, 8, 1), 10)
  model = keras_lib.AdversarialModel(base, objective='pgd_at', pgd_eps=0.1, nb_iter=2,
                                     perturbation_memory=True)
  model.compile(optimizer=keras.optimizers.SGD(0.01))
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  history = model.fit(data8.train_images[:64], data8.train_labels[:64], batch_size=16,
                      verbose=0).history
  assert np.isfinite(history['loss'][0]) and 0 <= history['adv_correct'][0] <= 1
  assert model.perturbation_memory.known.numpy().sum() == 64
  assert model.eps_memory.dtype == 'float32'
  with pytest.raises(ValueError, match='needs loss scaling'):
    model.compile(optimizer='sgd', auto_scale_loss=False)

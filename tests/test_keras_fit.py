"""mma_tf.keras.AdversarialModel: compile() + fit() run the Trainer's step, keep the example index
through shuffling, replicas and restarts, and save, load and export."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config
from mma_tf import export as export_lib
from mma_tf import keras as keras_lib
from mma_tf import losses, models, objectives, precision
from mma_tf import trainer as trainer_lib
from test_throughput import _warm_start, data8  # noqa: F401  (fixture)
from test_trainer import op_determinism  # noqa: F401  (fixture)

QUIET = lambda m: None


def _config(**overrides):
  fields = dict(model='small_cnn', batch_size=16, optimizer='sgd', learning_rate=0.05,
                momentum=0.9, nb_iter=2, num_search_steps=4)
  fields.update(overrides)
  return tiny_config(**fields)


def _settings(config):
  """The config's step settings that differ from the defaults (the ones a user would pass)."""
  return {k: getattr(config, k) for k, default in keras_lib.SETTINGS.items()
          if getattr(config, k) != default}


def _wrapper(config, weights=None, **kwargs):
  base = models.small_cnn((8, 8, 1), 10)
  if weights is not None:
    base.set_weights(weights)
  model = keras_lib.AdversarialModel(base, **_settings(config), **kwargs)
  model.compile(optimizer=trainer_lib.build_optimizer(config), **kwargs.pop('compile', {}))
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
def test_fit_steps_equal_trainer_steps_and_log_their_statistics(memory, data8, tmp_path):
  config = _config(perturbation_memory=memory)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  _warm_start([trainer], data8, tmp_path)  # most examples correct: MMA attacks them
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

"""The CIFAR presets' paths at toy size: BatchNorm in MMA's passes and across replicas (REVIEW
P6c, P7), PyTorch-style SGD with weight decay across a learning-rate drop, the step schedule."""
import bisect

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config, tiny_data
from mma_tf import configs, losses, models
from mma_tf import data as data_lib
from mma_tf import trainer as trainer_lib
from test_trainer import _steps, _weights

NUM_SEARCH_STEPS = 2  # each search step adds a WRN forward to every traced MMA step
QUIET = lambda m: None


@pytest.fixture(scope='module')
def data8():
  """The tiny digits at 8x8 (24x24 centre, 3x3 means): WRN-10-1 steps in milliseconds."""
  return tiny_data(size=8)


def _bn_config(**overrides):
  fields = dict(model='wrn10_1', batch_size=16, nb_iter=3, num_search_steps=NUM_SEARCH_STEPS,
                optimizer='sgd', learning_rate=0.05, momentum=0.9)
  fields.update(overrides)
  return tiny_config(**fields)


def _bn_layers(model):
  return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.fixture(scope='module')
def warm_weights(data8, tmp_path_factory):
  """WRN-10-1 briefly trained on clean images, so most examples are correct and get attacked."""
  warm = trainer_lib.Trainer(_bn_config(objective='standard'),
                             str(tmp_path_factory.mktemp('warm')), data=data8, log=QUIET)
  _steps(warm, 28, epochs=3)
  return warm.task.model.get_weights()


# Train-mode forwards of one MMA step (objectives.MMA): (a) the clean pass, (c) with
# search_bn_mode='train' the AN-PGD bisection (one forward at the PGD point plus one per search
# step; PGD itself runs in eval mode), (d) the pass on the mixed batch. Each updates the moving
# statistics once: moving <- 0.9 moving + 0.1 batch.
@pytest.mark.parametrize('mode, train_mode_passes', [
    ('eval', 2),                          # (a) + (d): only the passes the weights train on
    ('train', 2 + 1 + NUM_SEARCH_STEPS),  # released code: the search moves the statistics too
])
def test_moving_statistics_count_the_train_mode_passes_of_an_mma_step(data8, tmp_path, mode,
                                                                      train_mode_passes):
  trainer = trainer_lib.Trainer(_bn_config(search_bn_mode=mode), str(tmp_path), data=data8,
                                log=QUIET)
  bns = _bn_layers(trainer.task.model)
  assert len(bns) == 7
  # A huge starting moving variance V decays as V * 0.9^k after k updates (the batch variances
  # add O(1)), so k can be read off every layer.
  big = 1e6
  for layer in bns:
    layer.moving_variance.assign(tf.fill(layer.moving_variance.shape, big))
  means_before = [layer.moving_mean.numpy().copy() for layer in bns]
  _steps(trainer, 1)
  for layer, before in zip(bns, means_before):
    updates = np.log(layer.moving_variance.numpy() / big) / np.log(0.9)
    np.testing.assert_allclose(updates, train_mode_passes, atol=0.01, err_msg=layer.name)
    assert not np.allclose(layer.moving_mean.numpy(), before)


def test_sync_batchnorm_one_and_two_replicas_take_the_same_step(data8, tmp_path, warm_weights,
                                                                two_cpu_strategy):
  """With synchronized BN the batch statistics (also in the train-mode AN-PGD search) are the
  global batch's, so two replicas match one. Without it each replica normalises its own half,
  as the released code does under DataParallel, and the step differs."""
  def run(name, strategy, **overrides):
    config = _bn_config(weight_decay=5e-4, **overrides)
    trainer = trainer_lib.Trainer(config, str(tmp_path / name), strategy, data=data8, log=QUIET)
    trainer.task.model.set_weights(warm_weights)
    return trainer, _steps(trainer, 2)

  one, out_one = run('one', None, sync_batchnorm=True)
  two, out_two = run('two', two_cpu_strategy, sync_batchnorm=True)
  assert two.strategy.num_replicas_in_sync == 2
  assert all(layer.synchronized for layer in _bn_layers(two.task.model))
  for a, b in zip(out_one, out_two):
    np.testing.assert_allclose(float(a['total_loss']), float(b['total_loss']), rtol=1e-5)
    np.testing.assert_allclose(np.sort(a['eps']), np.sort(b['eps']), atol=1e-5)
  assert np.count_nonzero(one.task.eps_memory.numpy()) >= 16  # most of 32 examples were attacked
  np.testing.assert_allclose(one.task.eps_memory.numpy(), two.task.eps_memory.numpy(), atol=1e-5)
  tolerance = 1e-5 * one.config.learning_rate
  for a, b in zip(_weights(one), _weights(two)):  # trainable weights and moving statistics
    np.testing.assert_allclose(a, b, atol=tolerance, rtol=1e-5)
  per_replica, _ = run('per_replica', two_cpu_strategy)
  gap = max(np.abs(a - b).max() for a, b in zip(_weights(one), _weights(per_replica)))
  assert gap > 100 * tolerance


def test_torch_sgd_with_weight_decay_across_a_learning_rate_drop_matches_numpy(tmp_path):
  """Four trainer steps with lr 0.1, 0.1, then 0.02 (boundary 2) against PyTorch's update rule
  in NumPy: g <- g + wd w; v <- mu v + g; w <- w - lr v, with gradients of the same batches."""
  data = tiny_data()
  mu, wd, values = 0.9, 5e-3, (0.1, 0.02)
  config = tiny_config(objective='standard', optimizer='sgd', learning_rate=None,
                       lr_boundaries=(2,), lr_values=values, momentum=mu, weight_decay=wd)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data, log=QUIET)
  reference = models.build_model(config.model, (28, 28, 1), 10)
  w = [v.numpy() for v in trainer.task.model.trainable_variables]
  velocity = [np.zeros_like(x) for x in w]
  keras_w, keras_velocity = list(w), [np.zeros_like(x) for x in w]
  batches = data_lib.train_dataset(data, config.batch_size, config.seed, 0).take(4)
  for k, batch in enumerate(batches, start=1):
    for var, value in zip(reference.trainable_variables, w):
      var.assign(value)
    with tf.GradientTape() as tape:
      ce = losses.cross_entropy(reference(batch['image'], training=True), batch['label'])
      loss = tf.reduce_mean(ce)
    grads = [g.numpy() for g in tape.gradient(loss, reference.trainable_variables)]
    lr = values[0] if k <= 2 else values[1]
    for i, g in enumerate(grads):
      g = g + wd * w[i]  # what the trainer's 0.5 * wd * ||w||^2 loss term adds
      velocity[i] = mu * velocity[i] + g
      w[i] = w[i] - lr * velocity[i]
      # Keras' SGD convention (lr inside the velocity), on the same gradients, for contrast.
      keras_velocity[i] = mu * keras_velocity[i] - lr * g
      keras_w[i] = keras_w[i] + keras_velocity[i]
  _steps(trainer, 4)
  assert int(trainer.task.optimizer.iterations.numpy()) == 4
  got = [v.numpy() for v in trainer.task.model.trainable_variables]
  for a, b in zip(got, w):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The test separates the two conventions: after the drop they differ far beyond the tolerance.
  assert max(np.abs(a - b).max() for a, b in zip(keras_w, w)) > 1e-4


def test_schedule_is_pytorch_multisteplr_stepped_per_iteration():
  """Step k (1-based) uses the rate MultiStepLR gives after k - 1 scheduler steps; Keras calls
  the schedule with k - 1. So the boundary step b still uses the old rate and b + 1 the new."""
  config = configs.resolve('cifar10', 'Linf')
  schedule = trainer_lib.learning_rate(config)
  boundaries, values = config.lr_boundaries, config.lr_values
  for b, before, after in zip(boundaries, values[:-1], values[1:]):
    assert float(schedule(b - 1)) == pytest.approx(before)  # step b
    assert float(schedule(b)) == pytest.approx(after)       # step b + 1
    for k in range(b - 2, b + 3):
      torch_rate = values[bisect.bisect_right(boundaries, k - 1)]
      assert float(schedule(k - 1)) == pytest.approx(torch_rate)
  assert float(schedule(0)) == pytest.approx(values[0])
  assert float(schedule(config.train_steps)) == pytest.approx(values[-1])


def test_the_schedule_follows_the_trainers_steps_when_float16_steps_are_skipped(data8, tmp_path):
  """Under mixed_float16 a step with non-finite gradients is skipped and the optimizer's own
  count stays behind; the schedule still runs on the trainer's steps: after 3 skipped steps,
  step 4 uses the rate after boundary 3 (0 here, so the applied step leaves the weights)."""
  config = tiny_config(objective='standard', optimizer='sgd', learning_rate=None,
                       lr_boundaries=(3,), lr_values=(0.1, 0.0), mixed_precision='mixed_float16')
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  optimizer = trainer.task.optimizer
  optimizer.dynamic_scale.assign(2.0**100)  # float16 gradients overflow: steps 1-3 are skipped
  iterator = iter(trainer.task.train_batches(0))
  for _ in range(3):
    trainer.task.train_step(iterator)
  assert int(optimizer.iterations.numpy()) == 0 and int(trainer.task.step.numpy()) == 3
  assert float(optimizer.learning_rate) == 0.0  # the rate the log shows: step 4's
  optimizer.dynamic_scale.assign(2.0**10)
  before = _weights(trainer)
  trainer.task.train_step(iterator)
  assert int(optimizer.iterations.numpy()) == 1  # step 4 was applied, at rate 0
  for a, b in zip(before, _weights(trainer)):
    np.testing.assert_array_equal(a, b)

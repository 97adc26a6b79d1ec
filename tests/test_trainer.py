"""The training loop: replica parity, exact resume, export, process state, failures.

Multi-worker and compiled-validation tests are in test_distributed.py; BatchNorm and SGD in
test_bn_sgd.py.
"""
import json
import os
import random
import shutil

import keras

import numpy as np
import pytest
import tensorflow as tf

import in_process
from helpers import tiny_config, tiny_data
from mma_tf import configs
from mma_tf import export as export_lib
from mma_tf import models
from mma_tf import trainer as trainer_lib
from tensorflow.python.framework import config as tf_config  # TF has no public disable


@pytest.fixture(scope='module')
def data():
  return tiny_data()


def _weights(trainer):
  return [v.numpy() for v in trainer.task.model.weights]


def _steps(trainer, n, epochs=1):
  """Runs n training steps of each of the first `epochs` epochs; returns the step outputs."""
  outputs = []
  for epoch in range(epochs):
    iterator = iter(trainer.task.train_batches(epoch))
    outputs += [trainer.task.train_step(iterator) for _ in range(n)]
  return outputs


def test_mirrored_step_equals_one_device(data, tmp_path, two_cpu_strategy):
  # SGD, not Adam: Adam divides by sqrt(v), so a weight whose gradient is a near-cancelling sum
  # (float noise of the order of the gradient itself) moves by up to lr either way, and no weight
  # tolerance would separate that from a real difference. SGD moves weights by lr * gradient.
  config = tiny_config(batch_size=16, optimizer='sgd', learning_rate=0.05, momentum=0.9)
  one = trainer_lib.Trainer(config, str(tmp_path / 'one'), data=data, log=lambda m: None)
  mirrored = trainer_lib.Trainer(
      config, str(tmp_path / 'two'), two_cpu_strategy,
      data=data, log=lambda m: None)
  assert mirrored.strategy.num_replicas_in_sync == 2
  for a, b in zip(_weights(one), _weights(mirrored)):
    np.testing.assert_array_equal(a, b)  # same seed, same initial weights
  # Start both from a briefly trained model, so most examples are correct and get attacked.
  warm = trainer_lib.Trainer(tiny_config(objective='standard'), str(tmp_path / 'warm'), data=data)
  _steps(warm, 25, epochs=3)
  one.task.model.set_weights(warm.task.model.get_weights())
  mirrored.task.model.set_weights(warm.task.model.get_weights())
  # Random starts are keyed by (seed, step, example index), so parity holds with rand init on.
  out_one, out_two = _steps(one, 2), _steps(mirrored, 2)
  for a, b in zip(out_one, out_two):
    np.testing.assert_allclose(float(a['total_loss']), float(b['total_loss']), rtol=1e-5)
    np.testing.assert_allclose(np.sort(a['eps']), np.sort(b['eps']), atol=1e-5)
  lr = config.learning_rate
  for a, b in zip(_weights(one), _weights(mirrored)):
    np.testing.assert_allclose(a, b, atol=lr * 1e-5)
  np.testing.assert_allclose(one.task.eps_memory.numpy(), mirrored.task.eps_memory.numpy(),
                             atol=1e-5)
  assert np.count_nonzero(one.task.eps_memory.numpy()) > 16  # the memory was written


@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
def test_jit_compiled_attacks_train(data, tmp_path):
  trainer = trainer_lib.Trainer(tiny_config(jit_compile=True), str(tmp_path), data=data,
                                log=lambda m: None)
  outputs = _steps(trainer, 3)
  assert all(np.isfinite(float(o['total_loss'])) for o in outputs)
  assert trainer.task.train_step.experimental_get_tracing_count() == 1


def test_resume_equals_uninterrupted(data, tmp_path, op_determinism):
  # A schedule that wrecks the model after step 12 (25 steps per epoch): the stopped run's
  # validation at step 12 beats every later one, and must still not become the resumed run's
  # best (an uninterrupted run never validates there). Resuming also crosses the rate change.
  # 2 AN-PGD search steps (not 10): each adds to every trace, and what this test checks does not
  # depend on the search's resolution.
  loop = dict(checkpoint_every=7, deterministic=True, learning_rate=None, lr_boundaries=(12,),
              lr_values=(1e-2, 1.0), num_search_steps=2)
  config = tiny_config(train_steps=30, **loop)
  full_dir, part_dir = str(tmp_path / 'full'), str(tmp_path / 'part')
  full = trainer_lib.Trainer(config, full_dir, data=data, log=lambda m: None)
  full_summary = full.train()
  stopped = trainer_lib.Trainer(tiny_config(train_steps=12, **loop), part_dir, data=data,
                                log=lambda m: None).train()
  messages = []
  resumed = trainer_lib.Trainer(config, part_dir, data=data, log=messages.append)
  summary = resumed.train()
  assert any('Resumed from step 12' in m for m in messages)
  for a, b in zip(_weights(full), _weights(resumed)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.task.eps_memory.numpy(), resumed.task.eps_memory.numpy())
  for a, b in zip(full.task.optimizer.variables, resumed.task.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert stopped['best_step'] == 12 and stopped['best_val_value'] > full_summary['best_val_value']
  assert summary['best_step'] == full_summary['best_step']
  assert summary['best_val_value'] == full_summary['best_val_value']
  x = tf.constant(data.test_images[:16] / 255.0, tf.float32)
  exported = [export_lib.load_classifier(os.path.join(d, 'export'))[0](x).numpy()
              for d in (full_dir, part_dir)]
  np.testing.assert_array_equal(*exported)
  # Started again with nothing left to train, the run reports the same choice.
  again = trainer_lib.Trainer(config, part_dir, data=data, log=lambda m: None).train()
  assert again['best_step'] == summary['best_step']
  assert again['validation'] == summary['validation']


def test_training_raises_the_margin_and_exports_a_differentiable_savedmodel(data, tmp_path):
  model_dir = str(tmp_path / 'run')
  config = tiny_config(train_steps=75, nb_iter=5)
  trainer = trainer_lib.Trainer(config, model_dir, data=data, log=lambda m: None)
  before = trainer.evaluate('validation')
  summary = trainer.train()
  after = summary['validation']
  assert trainer.task.train_loop.experimental_get_tracing_count() == 1  # 3 epochs, one trace
  assert after['avg_margin'] > before['avg_margin'] + 0.05, (before, after)
  assert after['clean_acc'] > 0.6
  assert summary['best_step'] > 0 and summary['best_val_margin'] == pytest.approx(
      max(summary['best_val_margin'], after['avg_margin']))
  with open(os.path.join(model_dir, 'config.json')) as f:
    assert configs.flat_record(json.load(f))['hinge_maxeps'] == config.hinge_maxeps
  # The export is the best checkpoint; it reloads with the same logits and input gradients.
  predict, spec = export_lib.load_classifier(os.path.join(model_dir, 'export'))
  assert tuple(spec.shape[1:]) == (28, 28, 1)
  best = models.build_model(config.model, (28, 28, 1), 10)
  trainer_lib.restore_model_weights(best, trainer.checkpoints.best_manager.latest_checkpoint)
  x = tf.constant(data.test_images[:8] / 255.0, tf.float32)
  np.testing.assert_allclose(predict(x), best(x), atol=1e-5)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(predict(x))
  grad = tape.gradient(loss, x)
  assert grad is not None and np.all(np.isfinite(grad)) and np.abs(grad.numpy()).sum() > 0


def _save_best(trainer, step=1):
  trainer.checkpoints.best_manager.save(checkpoint_number=step)
  return trainer.checkpoints.best_manager.latest_checkpoint


def test_export_refuses_a_checkpoint_that_does_not_match_the_model(data, tmp_path):
  """A best checkpoint of another model, or without the model, fails loudly and exports nothing
  (expect_partial() used to export the unmatched weights at their initial values)."""
  quiet = lambda m: None
  other = trainer_lib.Trainer(tiny_config(model='lenet5_madry'), str(tmp_path / 'lenet'),
                              data=data, log=quiet)
  _save_best(other)
  no_model = tmp_path / 'source_without_model' / 'best'
  tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(3)), str(no_model),
                             max_to_keep=1).save(checkpoint_number=1)
  for name, source in (('wrong_model', tmp_path / 'lenet' / 'best'), ('no_model', no_model)):
    run = tmp_path / name
    shutil.copytree(source, run / 'best')
    trainer = trainer_lib.Trainer(tiny_config(), str(run), data=data, log=quiet)
    assert trainer.checkpoints.best_manager.latest_checkpoint.endswith('best/ckpt-1')
    with pytest.raises(ValueError, match='does not match model.*Nothing was exported'):
      trainer.export_best(str(run / 'export'))
    assert not os.path.exists(run / 'export') and not os.path.exists(run / 'export.tmp')
  # The matching checkpoint exports, with its own weights.
  good = trainer_lib.Trainer(tiny_config(), str(tmp_path / 'good'), data=data, log=quiet)
  good.task.model.set_weights([w + 0.5 for w in good.task.model.get_weights()])
  _save_best(good)
  good.task.model.set_weights([w * 0 for w in good.task.model.get_weights()])
  good.export_best(str(tmp_path / 'good' / 'export'))
  predict, _ = export_lib.load_classifier(str(tmp_path / 'good' / 'export'))
  assert float(tf.reduce_max(tf.abs(predict(tf.zeros([1, 28, 28, 1]))))) > 0  # not the zeros


def test_a_checkpoint_with_the_old_best_margin_key_resumes(data, tmp_path):
  """Checkpoints store the best value of the selection metric as 'best_value'; those of earlier
  versions stored it as 'best_margin' and still resume, with everything else they hold."""
  quiet = lambda m: None
  old = trainer_lib.Trainer(tiny_config(), str(tmp_path), data=data, log=quiet)
  old.task.model.set_weights([w + 0.5 for w in old.task.model.get_weights()])
  old.task.step.assign(3)
  old.checkpoints.best_value.assign(0.25)
  old.checkpoints.best_step.assign(2)
  earlier_layout = tf.train.Checkpoint(best_margin=old.checkpoints.best_value,
                                       best_step=old.checkpoints.best_step,
                                       **old.task.checkpoint_items())
  tf.train.CheckpointManager(earlier_layout, str(tmp_path / 'ckpt'),
                             max_to_keep=3).save(checkpoint_number=3)
  resumed = trainer_lib.Trainer(tiny_config(), str(tmp_path), data=data, log=quiet)
  assert resumed.restore() == 3
  assert float(resumed.checkpoints.best_value.numpy()) == 0.25
  assert int(resumed.checkpoints.best_step.numpy()) == 2
  for a, b in zip(resumed.task.model.get_weights(), old.task.model.get_weights()):
    np.testing.assert_array_equal(a, b)
  resumed.task.step.assign(4)
  resumed.checkpoints.save(4)  # saved again under the current key
  keys = {name.split('/')[0] for name, _ in tf.train.list_variables(resumed.checkpoints.latest())}
  assert 'best_value' in keys and 'best_margin' not in keys
  again = trainer_lib.Trainer(tiny_config(), str(tmp_path), data=data, log=quiet)
  assert again.restore() == 4 and float(again.checkpoints.best_value.numpy()) == 0.25


def test_export_refuses_a_checkpoint_with_extra_model_weights(data, tmp_path):
  """Every model weight in the checkpoint must find its place, not only the other way round."""
  big = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(10), keras.layers.Dense(10)])
  small = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
  path = tf.train.Checkpoint(model=big).save(str(tmp_path / 'ckpt'))
  with pytest.raises(ValueError, match='holds 4 model weights but .* has 2'):
    trainer_lib.restore_model_weights(small, path)
  trainer_lib.restore_model_weights(big, path)  # the model it came from restores


def test_building_a_trainer_leaves_process_state_alone(data, tmp_path):
  """No op determinism and no global reseeding in the constructor; the weights depend on
  config.seed only, whatever the global seeds are."""
  was = tf_config.is_op_determinism_enabled()
  tf_config.disable_op_determinism()
  try:
    random.seed(5), np.random.seed(5), tf.random.set_seed(5)
    trainers = []
    for global_seed in (1, 2):
      keras.utils.set_random_seed(global_seed)
      before = (random.random(), np.random.rand())
      keras.utils.set_random_seed(global_seed)
      trainers.append(trainer_lib.Trainer(tiny_config(), str(tmp_path / str(global_seed)),
                                          data=data, log=lambda m: None))
      assert (random.random(), np.random.rand()) == before  # the global streams were not reseeded
      assert not tf_config.is_op_determinism_enabled()
    for a, b in zip(*[_weights(t) for t in trainers]):
      np.testing.assert_array_equal(a, b)
    other_seed = trainer_lib.Trainer(tiny_config(seed=1), str(tmp_path / 's1'), data=data,
                                     log=lambda m: None)
    assert not np.array_equal(_weights(other_seed)[0], _weights(trainers[0])[0])
    # Asking for determinism without the process set-up is an error, not a silent no-op.
    with pytest.raises(ValueError, match='configure_process'):
      trainer_lib.Trainer(tiny_config(deterministic=True), str(tmp_path / 'det'), data=data)
    trainer_lib.configure_process(tiny_config(deterministic=True))
    assert tf_config.is_op_determinism_enabled()
    trainer_lib.Trainer(tiny_config(deterministic=True), str(tmp_path / 'det'), data=data)
  finally:
    if was:
      tf.config.experimental.enable_op_determinism()
    else:
      tf_config.disable_op_determinism()


def test_other_configuration_in_the_same_dir_is_refused(data, tmp_path):
  trainer_lib.Trainer(tiny_config(train_steps=2), str(tmp_path), data=data, log=lambda m: None)
  with pytest.raises(ValueError, match='hinge_maxeps: saved 0.45, now 0.3'):
    trainer_lib.Trainer(tiny_config(hinge_maxeps=0.3), str(tmp_path), data=data)


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(data, tmp_path):
  trainer_lib.Trainer(tiny_config(train_steps=10, num_search_steps=2), str(tmp_path), data=data,
                      log=lambda m: None).train()
  index = tf.train.latest_checkpoint(str(tmp_path / 'ckpt')) + '.index'
  with open(index, 'wb') as f:
    f.write(b'not a checkpoint')
  with pytest.raises(ValueError, match='cannot be restored'):
    trainer_lib.Trainer(tiny_config(train_steps=20, num_search_steps=2), str(tmp_path),
                        data=data).train()
  assert open(index, 'rb').read() == b'not a checkpoint'  # nothing deleted or overwritten


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
  config = tiny_config(train_steps=20, checkpoint_every=2, num_search_steps=2)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data, log=lambda m: None)
  objective = trainer.task.objective

  class Poisoned(type(objective)):
    def __call__(self, *args):
      out = super().__call__(*args)
      bad = tf.cast(trainer.task.step, tf.float32) >= 4  # the 5th step goes non-finite
      out.loss = tf.where(bad, np.nan, out.loss)
      return out

  trainer.task.objective = Poisoned(objective.config)
  with pytest.raises(trainer_lib.NonFiniteLossError, match='at step 5.*ckpt-4'):
    trainer.train()
  fresh = trainer_lib.Trainer(config, str(tmp_path), data=data, log=lambda m: None)
  assert fresh.restore() == 4
  assert all(np.all(np.isfinite(w)) for w in _weights(fresh))


def test_config_rejects_batch_not_divisible_by_replicas():
  with pytest.raises(ValueError, match='not divisible by the 3 replicas'):
    tiny_config(batch_size=20).validate(num_replicas=3)


@pytest.mark.parametrize('flags, message', [
    (['--hinge_maxeps=-1'], '--hinge_maxeps must be > 0'),
    (['--attack_mineps=0.5', '--hinge_maxeps=0.3'], 'must not exceed --hinge_maxeps'),
    (['--test_eps=8'], 'beyond the [0, 1] image box'),
    (['--model_dir=/proc/mma_tf_cannot_write_here'], 'is not writable'),
    (['--dataset=imagenet'], "Unknown dataset 'imagenet'"),
    (['--objective=omma', '--clean_loss_coeff=0.5'], 'OMMA is MMA without the clean loss'),
])
def test_train_script_rejects_bad_flags_clearly(flags, message, tmp_path):
  args = ['--train_steps=1']
  if not any(f.startswith('--model_dir') for f in flags):
    args.append(f'--model_dir={tmp_path / "run"}')
  result = in_process.run_main('mma_tf.cli.train', args + flags)
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
  assert 'Traceback' not in result.stderr

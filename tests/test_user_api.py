"""Your own model and your own data: user models through package.module:factory and .keras files,
the model contract's refusals, every data source (arrays, npz, tf.data, TFDS by name) and its
index contract, and TRADES through the same loop."""
import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import in_process
import user_nets
from helpers import LinearProblem, tiny_data
from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import export as export_lib
from mma_tf import norms, objectives
from mma_tf import trainer as trainer_lib
from mma_tf.attacks import example_seeds

QUIET = lambda m: None
TESTS = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(batch_size=16, nb_iter=2, num_search_steps=3, eval_batch_size=40, train_steps=4,
             log_every=2, checkpoint_every=2, learning_rate=1e-3, test_eps_iter=0.1)


def small_config(dataset='mnist_5k', **overrides):
  return configs.resolve(dataset, 'Linf', dict(SMALL, **overrides))


def _input_gradient(predict, x, y):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, predict(x)))
  return tape.gradient(loss, x).numpy()


# ------------------------------------------------------------------------------ your own model
@pytest.mark.parametrize('factory', ['functional', 'subclassed'])
@pytest.mark.parametrize('source', ['factory', 'keras_file'])
def test_user_model_trains_exports_and_reloads_with_input_gradients(factory, source, data8,
                                                                    tmp_path):
  spec = f'user_nets:{factory}'
  if source == 'keras_file':
    spec = str(tmp_path / f'{factory}.keras')
    getattr(user_nets, factory)((8, 8, 1), 10).save(spec)
  model_dir = str(tmp_path / 'run')
  trainer = trainer_lib.Trainer(small_config(model=spec), model_dir, data=data8, log=QUIET)
  summary = trainer.train()
  assert summary['step'] == 4 and summary['best_step'] > 0
  predict, input_spec = export_lib.load_classifier(summary['export'])
  assert tuple(input_spec.shape[1:]) == (8, 8, 1)
  x, y, _ = data8.eval_split('test', limit=8)
  # The export holds the best checkpoint of the user's own model, not a rebuilt registry model
  # (4 steps end no epoch of 10: the final step's, the only one validated).
  best = trainer.task.new_model()
  assert summary['best_step'] == 4 and trainer.checkpoints.best_manager.latest_checkpoint is None
  trainer_lib.restore_model_weights(best, trainer.checkpoints.manager.latest_checkpoint)
  np.testing.assert_allclose(predict(tf.constant(x)), best(x, training=False), atol=1e-5)
  assert np.abs(_input_gradient(predict, x, y)).sum() > 0
  with open(os.path.join(model_dir, 'config.json')) as f:
    record = configs.flat_record(json.load(f))
  assert record['model'] == spec and record['data']['num_train_total'] == 200
  assert ('keras_file_sha256' in record['model_source']) == (source == 'keras_file')


def test_a_changed_keras_file_does_not_resume_the_run(data8, tmp_path):
  path = str(tmp_path / 'net.keras')
  user_nets.functional((8, 8, 1), 10).save(path)
  config = small_config(model=path, train_steps=2)
  trainer_lib.Trainer(config, str(tmp_path / 'run'), data=data8, log=QUIET)
  user_nets.functional((8, 8, 1), 10).save(path)  # other initial weights, same name
  with pytest.raises(ValueError, match='keras_file_sha256'):
    trainer_lib.Trainer(config, str(tmp_path / 'run'), data=data8, log=QUIET)


@pytest.mark.parametrize('spec, message', [
    ('user_nets:softmax_output', 'outputs probabilities (a final softmax)'),
    ('user_nets:random_flip_inside', 'RandomFlip'),
    ('user_nets:noisy_at_inference', 'different outputs for the same images in inference'),
    ('user_nets:wrong_classes', 'expected logits [batch, 10]'),
    ('user_nets:no_such_factory', "has no attribute 'no_such_factory'"),
    ('no_such_module_anywhere:build', 'cannot import'),
])
def test_models_that_break_the_contract_are_refused_naming_the_fix(spec, message, data8,
                                                                   tmp_path):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')
                     .replace('[', r'\[').replace(']', r'\]')):
    trainer_lib.Trainer(small_config(model=spec), str(tmp_path), data=data8, log=QUIET)


def test_a_model_built_outside_the_strategy_scope_is_refused(data8, tmp_path, two_cpu_strategy):
  outside = user_nets.functional((8, 8, 1), 10)
  with pytest.raises(ValueError, match="outside the strategy's scope.*Pass a factory"):
    trainer_lib.Trainer(small_config(), str(tmp_path / 'a'), two_cpu_strategy, data=data8,
                        model=outside, log=QUIET)
  with two_cpu_strategy.scope():
    inside = user_nets.functional((8, 8, 1), 10)
  trainer_lib.Trainer(small_config(), str(tmp_path / 'b'), two_cpu_strategy, data=data8,
                      model=inside, log=QUIET)


def test_a_declared_input_range_puts_the_model_behind_a_rescaling(data8, tmp_path):
  config = small_config(model='user_nets:expects_0_255', input_range=(0, 255), train_steps=2)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  summary = trainer.train()
  predict, _ = export_lib.load_classifier(summary['export'])
  x, _, _ = data8.eval_split('test', limit=4)
  inner = trainer.task.model.layers[-1]  # the user's model behind the 'input_range' layer
  assert trainer.task.model.layers[1].name == 'input_range'
  np.testing.assert_allclose(predict(tf.constant(x)), inner(x * 255.0, training=False), atol=1e-4)


# ------------------------------------------------------------------------------ your own data
def _digit_arrays(n=180):
  d = tiny_data(num_train=n - 20, num_validation=20, num_test=20, size=8)
  return d.train_images, d.train_labels, d.test_images, d.test_labels


def test_arrays_are_checked_for_range_shape_and_labels():
  x, y, _, _ = _digit_arrays()
  with pytest.raises(ValueError, match=r'float images must lie in \[0, 1\].*divide by 255'):
    data_lib.from_arrays(x.astype(np.float32), y)
  with pytest.raises(ValueError, match=r'labels must be class ids in \[0, 5\)'):
    data_lib.from_arrays(x, y, num_classes=5)
  with pytest.raises(ValueError, match='not one-hot'):
    data_lib.from_arrays(x, np.eye(10)[y])
  with pytest.raises(ValueError, match='180 train images but 179 labels'):
    data_lib.from_arrays(x, y[:-1])
  source = data_lib.from_arrays(x.astype(np.float32) / 255.0, y)
  assert source.pixels == 'float' and source.num_validation == 18  # 10% by default
  images, _, indices = source.eval_split('validation')
  np.testing.assert_allclose(images, x[indices] / 255.0, atol=1e-6)


def test_npz_archives_load_and_bad_ones_say_what_is_missing(tmp_path):
  x, y, xt, yt = _digit_arrays()
  good = tmp_path / 'good.npz'
  np.savez(good, x_train=x, y_train=y, x_test=xt, y_test=yt)
  source = data_lib.load(f'npz:{good}', num_validation=20)
  assert (source.name, source.image_shape, source.num_classes) == (f'npz:{good}', (8, 8, 1), 10)
  np.testing.assert_array_equal(source.eval_split('test')[1], yt)
  np.savez(tmp_path / 'bad.npz', images=x, labels=y)
  with pytest.raises(ValueError, match='it needs x_train and y_train'):
    data_lib.load(f'npz:{tmp_path / "bad.npz"}')
  (tmp_path / 'corrupt.npz').write_bytes(b'not an archive')
  with pytest.raises(ValueError, match='not a readable NumPy archive'):
    data_lib.load(f'npz:{tmp_path / "corrupt.npz"}')
  with pytest.raises(ValueError, match='Unknown dataset'):
    data_lib.load('imagenet_please')


def _flip_sometimes(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


def _stream(n=180, augment=None, num_examples=None, shuffle_buffer=64):
  x, y, xt, yt = _digit_arrays(n)
  train = tf.data.Dataset.from_tensor_slices((x, y))
  test = tf.data.Dataset.from_tensor_slices({'image': xt, 'label': yt})
  source = data_lib.from_dataset(train, test, num_classes=10, num_examples=num_examples,
                                 num_validation=20, augment=augment,
                                 shuffle_buffer=shuffle_buffer)
  return source, x, y


def test_a_shuffled_augmented_stream_sees_every_index_once_per_epoch():
  source, x, y = _stream(augment=_flip_sometimes)
  assert source.num_train_total == 180 and source.steps_per_epoch(16) == 10
  orders = []
  for epoch in range(2):
    batches = list(data_lib.train_dataset(source, 16, seed=3, epoch=epoch))
    index = np.concatenate([b['index'] for b in batches])
    np.testing.assert_array_equal(np.sort(index), np.arange(20, 180))  # each once, no validation
    flipped = 0
    for b in batches:
      for image, label, i in zip(b['image'].numpy(), b['label'].numpy(), b['index'].numpy()):
        original = x[i] / 255.0  # the index was attached before shuffling and augmenting
        assert label == y[i]
        same, mirrored = np.allclose(image, original), np.allclose(image, original[:, ::-1])
        assert same or mirrored
        flipped += mirrored and not same
    assert flipped > 20  # the augmentation ran
    orders.append(index)
  assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
  resumed = list(data_lib.train_dataset(source, 16, seed=3, epoch=1, start_batch=6))
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in resumed]), orders[1][96:])
  halves = [next(iter(data_lib.train_dataset(source, 16, 3, 1, input_context=tf.distribute
                                             .InputContext(2, pid, 2)))) for pid in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['index'] for h in halves]), orders[1][:16])
  images, labels, _ = source.eval_split('test')
  assert images.shape == (20, 8, 8, 1) and images.max() <= 1.0 and len(labels) == 20


def test_a_stream_longer_than_num_examples_stops_with_an_error(tmp_path):
  source, _, _ = _stream(num_examples=100, shuffle_buffer=1000)
  trainer = trainer_lib.Trainer(small_config(train_steps=3), str(tmp_path), data=source,
                                log=QUIET)
  with pytest.raises(ValueError, match='Bad training data in steps 1-1.*index is >= the 100 rows'):
    trainer.train()


def test_a_stream_with_an_out_of_range_label_stops_with_an_error(tmp_path):
  x, y, _, _ = _digit_arrays()
  y = y.copy()
  y[100:] = 12  # a label the declared 10 classes do not have
  # Beyond the validation split and first shuffle block (20 + 64), which start-up reads.
  source = data_lib.from_dataset(tf.data.Dataset.from_tensor_slices((x, y)), num_classes=10,
                                 num_validation=20, shuffle_buffer=64)
  trainer = trainer_lib.Trainer(small_config(train_steps=10), str(tmp_path), data=source,
                                log=QUIET)
  with pytest.raises(ValueError, match=r'a label is >= num_classes \(10\)'):
    trainer.train()
  # Inside them: refused at start-up.
  source = data_lib.from_dataset(tf.data.Dataset.from_tensor_slices((x, y)), num_classes=10,
                                 num_validation=20)
  with pytest.raises(ValueError, match=r'labels must be class ids in \[0, 10\)'):
    trainer_lib.Trainer(small_config(train_steps=10), str(tmp_path / 'b'), data=source, log=QUIET)


def _steps(trainer, n):
  iterator = iter(trainer.task.train_batches(0))
  return [trainer.task.train_step(iterator) for _ in range(n)]


def _weights(trainer):
  return [v.numpy() for v in trainer.task.model.weights]


def _warm_weights(source, tmp_path, model='small_cnn'):
  warm = trainer_lib.Trainer(small_config(objective='standard', learning_rate=1e-2, model=model),
                             str(tmp_path / 'warm'), data=source, log=QUIET)
  for epoch in range(8):
    iterator = iter(warm.task.train_batches(epoch))
    for _ in range(10):
      warm.task.train_step(iterator)
  return warm.task.model.get_weights()


@pytest.mark.parametrize('objective', ['mma', 'trades'])
def test_two_devices_equal_one_on_a_stream_source(objective, tmp_path, two_cpu_strategy):
  source, _, _ = _stream(augment=_flip_sometimes)
  # TRADES' first sign step follows the KL gradient at x + 0.001 N(0, 1), which is nearly zero:
  # a conv layer's batch-size-dependent summation order (8 vs 16 per replica) flips some signs.
  # A dense model sums each example's row in one fixed order on any batch size.
  extra = {'pgd_eps': 0.2, 'model': 'user_nets:subclassed'} if objective == 'trades' else {}
  config = small_config(objective=objective, optimizer='sgd', learning_rate=0.05, momentum=0.9,
                        **extra)
  one = trainer_lib.Trainer(config, str(tmp_path / 'one'), data=source, log=QUIET)
  two = trainer_lib.Trainer(config, str(tmp_path / 'two'), two_cpu_strategy, data=source,
                            log=QUIET)
  warm = _warm_weights(source, tmp_path, config.model)
  one.task.model.set_weights(warm), two.task.model.set_weights(warm)
  for a, b in zip(_steps(one, 2), _steps(two, 2)):
    np.testing.assert_allclose(float(a['total_loss']), float(b['total_loss']), rtol=1e-5)
  for a, b in zip(_weights(one), _weights(two)):  # float noise only: a step moves ~lr * 1e-1
    np.testing.assert_allclose(a, b, atol=config.learning_rate * 1e-4)
  memory = one.task.eps_memory.numpy()
  np.testing.assert_allclose(memory, two.task.eps_memory.numpy(), atol=1e-5)
  assert (np.count_nonzero(memory) > 10) == (objective == 'mma')  # MMA wrote its rows


def test_any_tfds_dataset_by_name_streams_through_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=60):
    source = data_lib.load('tfds:fashion_mnist', num_validation=12)
    assert (source.image_shape, source.num_classes, source.num_train_total) == ((28, 28, 1), 10,
                                                                                 60)
    batch = next(iter(data_lib.train_dataset(source, 16, seed=0, epoch=0)))
    assert batch['image'].shape == (16, 28, 28, 1) and np.all(batch['index'].numpy() >= 12)
    images, labels, _ = source.eval_split('test', limit=5)
    assert images.shape == (5, 28, 28, 1) and 0 <= images.min() and images.max() <= 1
    config = small_config('tfds:fashion_mnist', train_steps=2, num_validation=12,
                          hinge_maxeps=0.1, test_eps=0.03, test_eps_iter=0.01)
    summary = trainer_lib.Trainer(config, str(tmp_path), data=source, log=QUIET).train()
  assert summary['step'] == 2


def test_cli_trains_a_user_factory_on_npz_data_and_evaluates_the_export(tmp_path, monkeypatch):
  x, y, xt, yt = _digit_arrays()
  archive = tmp_path / 'digits.npz'
  np.savez(archive, x_train=x, y_train=y, x_test=xt, y_test=yt)
  # Both CLIs run in this process (tests/ is on its sys.path), so the factory's module is a copy
  # that only the working directory holds, as a user's would be.
  shutil.copy(os.path.join(TESTS, 'user_nets.py'), tmp_path / 'user_nets_in_cwd.py')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, 'path', list(sys.path))  # the CLI adds the working directory
  train = in_process.run_main('mma_tf.cli.train', [
      '--model=user_nets_in_cwd:functional',
      f'--dataset=npz:{archive}', '--num_validation=20', '--train_steps=2', '--batch_size=16',
      '--nb_iter=1', '--num_search_steps=2', '--eval_batch_size=20', '--hinge_maxeps=0.45',
      '--test_eps=0.3', '--test_eps_iter=0.1', f'--model_dir={tmp_path / "run"}'])
  assert train.returncode == 0, train.stderr
  assert 'Done: 2 steps' in train.stdout
  evaluate = in_process.run_main('mma_tf.cli.evaluate', [
      f'--saved_model={tmp_path / "run" / "export"}', f'--dataset=npz:{archive}', '--eps=0.1',
      '--attacks=apgd-ce', '--apgd_nb_iter=3', '--margins=', '--num_examples=10',
      f'--output_dir={tmp_path / "eval"}'])
  assert evaluate.returncode == 0, evaluate.stderr
  with open(tmp_path / 'eval' / 'results.json') as f:
    assert json.load(f)['num_examples'] == 10


# ------------------------------------------------------------------------------ TRADES
def test_trades_loss_equals_a_direct_recomputation():
  p = LinearProblem('Linf', 10, batch=8)
  model = keras.Sequential([keras.Input(p.x.shape[1:]), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
  model.layers[-1].set_weights([p.w, p.b])
  config = configs.resolve('mnist_5k', 'Linf', dict(objective='trades', pgd_eps=0.1, nb_iter=4,
                                                    trades_beta=6.0))
  seeds = example_seeds([0, 3], np.arange(8))
  x = tf.constant(p.x)
  with tf.GradientTape() as tape:
    out = objectives.build_objective(config)(model, x, p.y, None, seeds, tape.stop_recording)

  # Zhang et al.'s trades_loss, step by step: x' = x + 0.001 N(0, 1); 4 sign steps on
  # KL(p(x) || p(x')) of size 2.5 * 0.1 / 4, each projected to the 0.1-ball and [0, 1].
  def probs(v):
    z = model(v).numpy().astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  p_clean = probs(x)
  x_adv = p.x + 0.001 * norms.normal_per_example(seeds, x).numpy()
  step = 2.5 * 0.1 / 4
  for _ in range(4):
    v = tf.constant(x_adv, tf.float32)
    with tf.GradientTape() as t:
      t.watch(v)
      kl = tf.reduce_sum(tf.constant(p_clean, tf.float32)
                         * (tf.math.log(tf.constant(p_clean, tf.float32))
                            - tf.nn.log_softmax(model(v))))
    x_adv = x_adv + step * np.sign(t.gradient(kl, v).numpy())
    x_adv = np.clip(np.clip(x_adv, p.x - 0.1, p.x + 0.1), 0, 1)
  p_adv = probs(x_adv.astype(np.float32))
  ce = -np.log(p_clean[np.arange(8), p.y])
  kl = (p_clean * (np.log(p_clean) - np.log(p_adv))).sum(1)
  assert kl.mean() > 1e-3  # the attack moved the prediction: the KL term is exercised
  np.testing.assert_allclose(out.loss, ce + 6.0 * kl, rtol=1e-4, atol=1e-6)
  assert out.eps is None
  std = norms.normal_per_example(example_seeds(0, np.arange(64)), tf.zeros([64, 20, 20, 1]))
  assert abs(float(tf.math.reduce_std(std)) - 1) < 0.02 and abs(float(tf.reduce_mean(std))) < 0.02

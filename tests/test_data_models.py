import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import models


@pytest.fixture(scope='module')
def embedded():
  return data_lib.load('mnist_5k')


def test_embedded_split_follows_the_protocol(embedded):
  assert embedded.train_images.shape == (4000, 28, 28, 1)
  assert embedded.test_images.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(embedded.train_indices, np.arange(500, 4000))
  images, labels, indices = embedded.eval_split('validation')
  assert len(labels) == 500 and np.all(np.bincount(labels) >= 30)  # every class present
  np.testing.assert_array_equal(indices, np.arange(500))


def test_train_batches_resume_exactly_and_carry_indices(embedded):
  full = list(data_lib.train_dataset(embedded, 50, seed=3, epoch=2))
  assert len(full) == embedded.steps_per_epoch(50) == 70
  resumed = list(data_lib.train_dataset(embedded, 50, seed=3, epoch=2, start_batch=40))
  for a, b in zip(full[40:], resumed):
    np.testing.assert_array_equal(a['index'], b['index'])
    np.testing.assert_array_equal(a['image'], b['image'])
  batch = full[0]
  assert batch['image'].dtype == tf.float32
  assert 0 <= float(tf.reduce_min(batch['image'])) and float(tf.reduce_max(batch['image'])) <= 1
  idx = batch['index'].numpy()
  assert np.all(idx >= 500)  # validation images never train
  np.testing.assert_array_equal(batch['label'], embedded.train_labels[idx])
  np.testing.assert_allclose(batch['image'], embedded.train_images[idx] / 255.0, atol=1e-7)
  other_epoch = next(iter(data_lib.train_dataset(embedded, 50, seed=3, epoch=3)))
  assert not np.array_equal(other_epoch['index'], idx)


def test_input_pipelines_split_each_global_batch(embedded):
  whole = next(iter(data_lib.train_dataset(embedded, 40, seed=1, epoch=0)))
  parts = []
  for pid in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                     num_replicas_in_sync=2)
    parts.append(next(iter(data_lib.train_dataset(embedded, 40, 1, 0, input_context=ctx))))
  np.testing.assert_array_equal(np.concatenate([p['index'] for p in parts]), whole['index'])


def test_eval_batches_are_padded_with_zero_weight(embedded):
  images, labels, indices = embedded.eval_split('validation')
  batches = list(data_lib.eval_dataset(images[:130], labels[:130], indices[:130], 50))
  assert [b['image'].shape[0] for b in batches] == [50, 50, 50]
  weights = np.concatenate([b['weight'] for b in batches])
  assert weights.sum() == 130 and np.all(weights[130:] == 0)


@pytest.mark.parametrize('name, shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape):
  with tfds.testing.mock_data(num_examples=5100):
    data = data_lib.load(name)
  assert data.train_images.shape[1:] == shape and data.num_train_total == 5100
  assert len(data.train_indices) == 100 and data.num_validation == 5000
  batch = next(iter(data_lib.train_dataset(data, 20, seed=0, epoch=0)))
  assert batch['image'].shape == (20,) + shape
  assert 0 <= float(tf.reduce_min(batch['image'])) and float(tf.reduce_max(batch['image'])) <= 1


def test_tfds_missing_data_gives_instructions(tmp_path):
  with pytest.raises(data_lib.DataUnavailableError, match='--tfds_data_dir'):
    data_lib.load('mnist', tfds_data_dir=str(tmp_path), download=False)


def _windows(out, image):
  """Every (dy, dx, flipped) for which `out` is the 32x32 window at (dy, dx) of the reflect-padded
  (4 pixels, edge not repeated, as torchvision's Pad(4, 'reflect')) `image`, possibly flipped."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode='reflect')
  h, w = image.shape[:2]
  return [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
          if np.array_equal(out, (lambda v: v[:, ::-1] if flip else v)(
              padded[dy:dy + h, dx:dx + w]))]


def test_cifar_augmentation_is_reflect_pad_4_random_crop_32_and_flip():
  # Distinct pixel values: a window and its flip are identifiable, so each output has one match.
  image = np.random.RandomState(0).permutation(32 * 32 * 3).reshape(32, 32, 3).astype(np.float32)
  seen = set()
  for s in range(40):
    out = data_lib.madry_cifar_augment(tf.constant(image), tf.constant([5, s], tf.int64)).numpy()
    matches = _windows(out, image)
    assert len(matches) == 1, f'seed {s}: not a flipped/unflipped window of the padded image'
    seen.add(matches[0])
  offsets = {(dy, dx) for dy, dx, _ in seen}
  assert {flip for _, _, flip in seen} == {False, True}
  assert len(offsets) >= 10  # 81 offsets are possible; 40 draws land on many of them
  # Windows reaching into the padding on each side: the pad is really 4 and really reflected.
  assert {dy for dy, _ in offsets} & {0, 1} and {dy for dy, _ in offsets} & {7, 8}
  assert {dx for _, dx in offsets} & {0, 1} and {dx for _, dx in offsets} & {7, 8}
  again = data_lib.madry_cifar_augment(tf.constant(image), tf.constant([5, 3], tf.int64))
  np.testing.assert_array_equal(
      again, data_lib.madry_cifar_augment(tf.constant(image), tf.constant([5, 3], tf.int64)))


def test_cifar_training_batches_are_augmented_per_image_and_validation_is_not():
  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, (24, 32, 32, 3)).astype(np.uint8)
  labels = rng.randint(0, 10, 24).astype(np.int32)
  data = data_lib.from_arrays(images, labels, images[:4], labels[:4], num_classes=10,
                              num_validation=4, augment=data_lib.madry_cifar_augment)
  seen = set()
  for epoch in range(2):
    for batch in data_lib.train_dataset(data, 10, seed=0, epoch=epoch):
      for out, index in zip(batch['image'].numpy(), batch['index'].numpy()):
        matches = _windows(out, images[index].astype(np.float32) / 255.0)
        assert len(matches) == 1
        seen.add(matches[0])
  assert {flip for _, _, flip in seen} == {False, True} and len(seen) >= 10
  # The same (seed, epoch) gives the same views; validation images stay as they are.
  first = next(iter(data_lib.train_dataset(data, 10, seed=0, epoch=1)))
  again = next(iter(data_lib.train_dataset(data, 10, seed=0, epoch=1)))
  np.testing.assert_array_equal(first['image'], again['image'])
  val_images, val_labels, val_indices = data.eval_split('validation')
  val = next(iter(data_lib.eval_dataset(val_images, val_labels, val_indices, 4)))
  np.testing.assert_allclose(val['image'], images[val_indices] / 255.0, atol=1e-7)


def test_unknown_dataset_is_a_value_error():
  with pytest.raises(ValueError, match='Unknown dataset'):
    data_lib.load('imagenet')


def test_lenet5_madry_architecture():
  model = models.build_model('lenet5_madry', (28, 28, 1), 10)
  # conv 32x(5*5*1+1), conv 64x(5*5*32+1), fc 3136x1024+1024, fc 1024x10+10
  assert model.count_params() == 832 + 51264 + 3136 * 1024 + 1024 + 10250
  assert model(tf.zeros([2, 28, 28, 1])).shape == (2, 10)


def test_wide_resnet_28_4_architecture():
  model = models.build_model('wrn28_4', (32, 32, 3), 10)
  convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Layer)
           and layer.__class__.__name__ == 'Conv2D']
  assert all(not c.use_bias for c in convs)
  assert len(convs) == 1 + 12 * 2 + 3  # stem, 12 blocks x 2, three 1x1 shortcuts
  bns = [layer for layer in model.layers if layer.__class__.__name__ == 'BatchNormalization']
  assert bns and all(b.epsilon == 1e-5 and b.momentum == 0.9 for b in bns)
  # Hand count: stem 432, groups 270,144 + 1,117,952 + 4,464,128, final BN 1,024, fc 2,570
  # (BN counts gamma, beta and both moving statistics).
  assert model.count_params() == 5_856_250
  assert model(tf.zeros([2, 32, 32, 3]), training=False).shape == (2, 10)


def test_per_image_standardize_uses_unbiased_std(rng):
  x = rng.uniform(0, 1, (3, 4, 4, 3)).astype(np.float32)
  out = models.PerImageStandardize()(x).numpy()
  flat = x.reshape(3, -1)
  expected = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, ddof=1, keepdims=True),
                                                               1 / np.sqrt(48))
  np.testing.assert_allclose(out.reshape(3, -1), expected, rtol=1e-5, atol=1e-6)
  constant = models.PerImageStandardize()(np.full((1, 4, 4, 3), 0.5, np.float32)).numpy()
  np.testing.assert_allclose(constant, 0.0)  # std floor: no division by zero


def test_the_config_model_table_matches_the_registry():
  """configs.MODELS (read by the CLI before Keras starts) lists every registered model and
  whether it holds BatchNorm, which decides whether --search_bn_mode can act."""
  assert set(configs.MODELS) == set(models.MODELS)
  for name, has_bn in configs.MODELS.items():
    model = models.build_model(name, (8, 8, 3) if name.startswith('wrn') else (28, 28, 1), 10)
    found = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert found == has_bn, name


def test_unknown_model_is_a_value_error():
  with pytest.raises(ValueError, match='Unknown model'):
    models.build_model('resnet50', (32, 32, 3), 10)

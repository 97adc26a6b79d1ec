"""Input pipelines: TFDS MNIST / CIFAR-10 and the embedded 5k MNIST digits, through one code path.

Protocol (docs/paper_notes.md 3.3): validation = the first `num_validation` images of the
training set, train = the rest, test = the official test split. Every example carries `index`, its
position in the training set, which keys the per-example eps memory. Images are float32 in [0, 1].

Each source only yields uint8 arrays; batching, sharding across input pipelines, augmentation and
resumable epoch order are shared. Training order is a permutation drawn from (seed, epoch), so a
run resumed at any step sees exactly the batches an uninterrupted run would.

TensorFlow is imported inside the functions that build pipelines, not at module load: the CLIs
read `DATASETS` while checking flags, before TF starts (and before its log level is set).
"""
import dataclasses
import gzip
import importlib.resources

import numpy as np


class DataUnavailableError(RuntimeError):
  """The dataset is not on this machine and could not be downloaded."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  image_shape: tuple
  num_classes: int
  num_validation: int
  augment: bool            # Madry et al. CIFAR-10 augmentation on the training split
  tfds_name: str = None    # None: embedded data, no download


DATASETS = {
    'mnist_5k': DatasetSpec('mnist_5k', (28, 28, 1), 10, num_validation=500, augment=False),
    'mnist': DatasetSpec('mnist', (28, 28, 1), 10, 5000, False, tfds_name='mnist'),
    'cifar10': DatasetSpec('cifar10', (32, 32, 3), 10, 5000, True, tfds_name='cifar10'),
}

EMBEDDED_TEST_SIZE = 1000  # the last 1,000 of the 5,000 embedded digits are the test split


@dataclasses.dataclass
class Data:
  spec: DatasetSpec
  train_images: np.ndarray   # uint8 [N, H, W, C]: the whole training set, validation first
  train_labels: np.ndarray   # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray

  @property
  def num_train_total(self):
    """Size of the training set (validation included): the eps memory has one slot per image."""
    return len(self.train_labels)

  @property
  def train_indices(self):
    return np.arange(self.spec.num_validation, self.num_train_total)

  def steps_per_epoch(self, global_batch_size):
    return len(self.train_indices) // global_batch_size

  def eval_split(self, split):
    """(images, labels, indices) of 'validation' or 'test'."""
    if split == 'validation':
      n = self.spec.num_validation
      return self.train_images[:n], self.train_labels[:n], np.arange(n)
    if split == 'test':
      return self.test_images, self.test_labels, np.arange(len(self.test_labels))
    raise ValueError(f"Unknown split {split!r}; choose 'validation' or 'test'.")


def _embedded_mnist_5k():
  """5,000 real MNIST training digits shipped in the package (rows: 784 pixels 0-255, then the
  label; provenance and licence in mma_tf/embedded_data/README.md)."""
  path = importlib.resources.files('mma_tf') / 'embedded_data' / 'mnist_5k.csv.gz'
  with path.open('rb') as raw, gzip.open(raw) as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  # The file is sorted by label (500 per class); a fixed shuffle makes every split class-balanced.
  order = np.random.RandomState(0).permutation(len(table))
  images = table[order, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = table[order, -1].astype(np.int32)
  n_train = len(labels) - EMBEDDED_TEST_SIZE
  return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def _tfds(spec, data_dir, download):
  import tensorflow_datasets as tfds
  try:
    splits = tfds.load(spec.tfds_name, split=['train', 'test'], data_dir=data_dir,
                       as_supervised=True, shuffle_files=False, download=download)
    # Batched reads, not batch_size=-1: that aborts the process under tfds.testing.mock_data.
    (train_x, train_y), (test_x, test_y) = [
        [np.concatenate(part) for part in zip(*tfds.as_numpy(split.batch(10_000)))]
        for split in splits]
  except Exception as e:  # TFDS raises many types (network, not found, corrupt); say what to do.
    where = data_dir or '~/tensorflow_datasets'
    raise DataUnavailableError(
        f'Could not load TFDS dataset {spec.tfds_name!r} from {where} ({type(e).__name__}: '
        f'{str(e).splitlines()[0][:300]}). On a machine with internet run\n'
        f'  python -c "import tensorflow_datasets as tfds; '
        f'tfds.builder(\'{spec.tfds_name}\', data_dir=\'DIR\').download_and_prepare()"\n'
        'then copy DIR here and pass --tfds_data_dir=DIR. Or train on the embedded data with '
        '--dataset=mnist_5k.') from e
  return train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32)


def load(dataset, tfds_data_dir=None, download=True):
  """Loads `dataset` ('mnist_5k' embedded, or 'mnist' / 'cifar10' through TFDS) into memory."""
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}.')
  spec = DATASETS[dataset]
  arrays = _tfds(spec, tfds_data_dir, download) if spec.tfds_name else _embedded_mnist_5k()
  train_x, train_y, test_x, test_y = arrays
  for name, x in (('train', train_x), ('test', test_x)):
    if tuple(x.shape[1:]) != spec.image_shape:
      raise ValueError(f'{dataset} {name} images have shape {x.shape[1:]}, expected '
                       f'{spec.image_shape}.')
  if len(train_y) <= spec.num_validation:
    raise ValueError(f'{dataset} has {len(train_y)} training images; the protocol needs more '
                     f'than the {spec.num_validation} validation images.')
  return Data(spec, train_x, train_y, test_x, test_y)


def _pipeline_slice(positions, global_batch_size, input_context):
  """The part of each global batch that this input pipeline feeds to its local replicas."""
  if input_context is None:
    return positions
  pipelines, pid = input_context.num_input_pipelines, input_context.input_pipeline_id
  local = global_batch_size // pipelines
  return positions.reshape(-1, global_batch_size)[:, pid * local:(pid + 1) * local].reshape(-1)


def _per_replica_batch(global_batch_size, input_context):
  if input_context is None:
    return global_batch_size
  return input_context.get_per_replica_batch_size(global_batch_size)


def _madry_cifar_augment(image, seed):
  """Reflect-pad 4, random 32x32 crop, random horizontal flip; stateless, from `seed`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  seeds = tf.random.experimental.stateless_split(seed, 2)
  size = tf.shape(image)
  padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode='REFLECT')
  image = tf.image.stateless_random_crop(padded, size, seed=seeds[0])
  return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def train_dataset(data, global_batch_size, seed, epoch, start_batch=0, input_context=None):
  """One epoch of training batches {image, label, index}, starting at batch `start_batch`.

  The epoch's order is a permutation drawn from (seed, epoch); the last partial batch is dropped
  so every step has the same static shape (the permutation changes, so every image is used).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  order = np.random.default_rng([seed, epoch]).permutation(data.train_indices)
  steps = len(order) // global_batch_size
  order = order[start_batch * global_batch_size:steps * global_batch_size]
  order = _pipeline_slice(order, global_batch_size, input_context).astype(np.int32)
  images, labels = tf.constant(data.train_images), tf.constant(data.train_labels)
  augment = data.spec.augment

  def example(index):
    image = tf.cast(tf.gather(images, index), tf.float32) / 255.0
    if augment:
      image = _madry_cifar_augment(image, tf.stack([tf.cast(seed * 1_000_003 + epoch, tf.int64),
                                                    tf.cast(index, tf.int64)]))
    return {'image': image, 'label': tf.gather(labels, index), 'index': index}

  ds = tf.data.Dataset.from_tensor_slices(order)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images, labels, indices, global_batch_size, input_context=None):
  """Batches {image, label, index, weight} of a whole split, padded to full global batches.

  Padding examples have weight 0, so every batch has a static shape and metrics stay exact.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mma_tf.evaluation.common import pad_positions  # pylint: disable=import-outside-toplevel
  n = len(labels)
  positions, weights = pad_positions(n, -(-n // global_batch_size) * global_batch_size)
  positions = _pipeline_slice(positions, global_batch_size, input_context)
  weights = _pipeline_slice(weights, global_batch_size, input_context)
  ds = tf.data.Dataset.from_tensor_slices({
      'image': (images[positions].astype(np.float32) / 255.0),
      'label': labels[positions].astype(np.int32),
      'index': indices[positions].astype(np.int32),
      'weight': weights,
  })
  return ds.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=True)

"""Loaders: a source by name (`load`), the embedded digits, NumPy archives (`from_npz`) and TFDS
(`from_tfds`; the paper's MNIST / CIFAR-10 are read whole into memory, any other TFDS dataset is
streamed).

`DATASETS` and `describe_dataset_name` need no TensorFlow: the CLIs read them while checking
flags, before TF starts (and before its log level is set).
"""
import dataclasses
import gzip
import importlib.resources
import os

import numpy as np

from mma_tf.data.arrays import ArraySource
from mma_tf.data.augment import madry_cifar_augment
from mma_tf.data.splits import parse_validation_split
from mma_tf.data.streams import StreamSource


class DataUnavailableError(RuntimeError):
  """The dataset is not on this machine and could not be downloaded."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A built-in dataset: the paper's protocol for it."""
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


def describe_dataset_name(name):
  """'npz:PATH', 'tfds:NAME' or a built-in name; ValueError otherwise (no TF needed)."""
  kind, _, rest = name.partition(':')
  if name in DATASETS or (kind in ('npz', 'tfds') and rest):
    return kind if rest else 'builtin'
  raise ValueError(f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}, tfds:NAME (any '
                   'TFDS image-classification dataset) or npz:PATH (arrays x_train, y_train[, '
                   'x_test, y_test]).')


def load(dataset, tfds_data_dir=None, download=True, num_validation=None,
         validation_split=None):
  """A source by name: 'mnist_5k' (embedded), 'mnist' / 'cifar10' (TFDS, in memory, the paper's
  protocol), 'tfds:NAME' (any TFDS image-classification dataset, streamed) or 'npz:PATH'.
  num_validation overrides the dataset's default validation size; validation_split that of
  npz:PATH (see `ArraySource`; e.g. the split a run's config.json records)."""
  kind = describe_dataset_name(dataset)
  if kind == 'npz':
    return from_npz(dataset[len('npz:'):], num_validation, validation_split=validation_split)
  if validation_split is not None and parse_validation_split(validation_split) != 'first':
    raise ValueError(f'{dataset} validates on its first images (the paper\'s protocol, or a '
                     f"stream's front); validation_split={validation_split!r} applies to "
                     'npz:PATH only.')
  if kind == 'tfds':
    return from_tfds(dataset[len('tfds:'):], tfds_data_dir, num_validation=num_validation,
                     download=download)
  spec = DATASETS[dataset]
  arrays = (_tfds_arrays(spec, tfds_data_dir, download) if spec.tfds_name
            else _embedded_mnist_5k())
  for name, x in (('train', arrays[0]), ('test', arrays[2])):
    if tuple(x.shape[1:]) != spec.image_shape:
      raise ValueError(f'{dataset} {name} images have shape {x.shape[1:]}, expected '
                       f'{spec.image_shape}.')
  # The paper's protocol: the first images (the embedded digits are stored shuffled; the
  # README's figures depend on this split).
  return ArraySource(dataset, *arrays, num_classes=spec.num_classes,
                     num_validation=spec.num_validation if num_validation is None
                     else num_validation,
                     augment=madry_cifar_augment if spec.augment else None,
                     validation_split='first')



def from_npz(path, num_validation=None, augment=None, validation_split=None):
  """`--dataset=npz:PATH`: a NumPy archive with x_train, y_train and optionally x_test, y_test;
  validation as in `from_arrays`."""
  if not os.path.isfile(path):
    raise ValueError(f'npz:{path}: no such file.')
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {k: archive[k] for k in archive.files}
  except Exception as e:  # zipfile / pickle / format errors
    raise ValueError(f'npz:{path} is not a readable NumPy archive '
                     f'({type(e).__name__}: {e}).') from e
  missing = {'x_train', 'y_train'} - set(arrays)
  if missing or (('x_test' in arrays) != ('y_test' in arrays)):
    raise ValueError(f'npz:{path} has arrays {sorted(arrays)}; it needs x_train and y_train, '
                     'and x_test with y_test or neither.')
  return ArraySource(f'npz:{path}', arrays['x_train'], arrays['y_train'], arrays.get('x_test'),
                     arrays.get('y_test'), num_validation=num_validation, augment=augment,
                     validation_split=validation_split)


def from_tfds(name, data_dir=None, *, num_validation=None, train_split='train',
              test_split='test', shuffle_buffer=10_000, download=True):
  """Any TFDS image-classification dataset by name, streamed (`--dataset=tfds:NAME`): image shape
  and classes from its info, validation = the first num_validation training images (TFDS stores
  training splits shuffled; training refuses one sorted by class)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    info = builder.info
    _, label_key = info.supervised_keys or ('image', 'label')
    num_classes = info.features[label_key].num_classes
    train = tfds.load(name, split=train_split, data_dir=data_dir, as_supervised=True,
                      shuffle_files=False, download=download)
    try:
      test = tfds.load(name, split=test_split, data_dir=data_dir, as_supervised=True,
                       shuffle_files=False, download=download)
    except ValueError:  # no such split: evaluation then uses the validation split
      test = None
  except Exception as e:  # TFDS raises many types (network, not found, corrupt)
    raise _unavailable(name, data_dir, e) from e
  return StreamSource(f'tfds:{name}', train, test, num_classes=num_classes,
                      num_validation=num_validation, shuffle_buffer=shuffle_buffer)


def _unavailable(name, data_dir, e):
  where = data_dir or '~/tensorflow_datasets'
  return DataUnavailableError(
      f'Could not load TFDS dataset {name!r} from {where} ({type(e).__name__}: '
      f'{str(e).splitlines()[0][:300] if str(e) else ""}). On a machine with internet run\n'
      f'  python -c "import tensorflow_datasets as tfds; '
      f'tfds.builder(\'{name}\', data_dir=\'DIR\').download_and_prepare()"\n'
      'then copy DIR here and pass --tfds_data_dir=DIR. Or train on the embedded data with '
      '--dataset=mnist_5k.')


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


def _tfds_arrays(spec, data_dir, download):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    splits = tfds.load(spec.tfds_name, split=['train', 'test'], data_dir=data_dir,
                       as_supervised=True, shuffle_files=False, download=download)
    # Batched reads, not batch_size=-1: that aborts the process under tfds.testing.mock_data.
    (train_x, train_y), (test_x, test_y) = [
        [np.concatenate(part) for part in zip(*tfds.as_numpy(split.batch(10_000)))]
        for split in splits]
  except Exception as e:  # TFDS raises many types (network, not found, corrupt); say what to do.
    raise _unavailable(spec.tfds_name, data_dir, e) from e
  return train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32)


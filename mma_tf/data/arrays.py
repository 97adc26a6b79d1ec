"""In-memory data: `ArraySource` over NumPy arrays (`from_arrays`; the loaders' npz files, embedded
digits and the paper's TFDS MNIST / CIFAR-10 too).

The epoch's order is a permutation drawn from (seed, epoch), so a run resumed at any step sees
exactly the batches of an uninterrupted one.
"""
import copy
import hashlib

import numpy as np

from mma_tf.data import checks
from mma_tf.data.source import Source
from mma_tf.data.splits import (DATA_SEED, default_num_validation, parse_validation_split,
                                validation_positions)

IDENTITY_SAMPLE = 1024  # training examples whose images and labels identify an array source


class ArraySource(Source):
  """Training and test images held in memory as uint8 0-255 or float [0, 1].

  validation_split: 'random' (a fixed selection of num_validation training images, drawn with
  DATA_SEED, the same for every run) or 'first' (the first num_validation, the paper's protocol;
  the built-in datasets use it). None (default): 'random' for a new run; a resumed run keeps
  the split its config.json records ('first' if it records none: older versions).
  """

  def __init__(self, name, train_images, train_labels, test_images=None, test_labels=None, *,
               num_classes=None, num_validation=None, augment=None, validation_split=None):
    train_images = checks.as_nhwc(train_images, 'train')
    test_images = checks.as_nhwc(test_images, 'test')
    train_labels = checks.as_labels(train_labels, len(train_images), 'train')
    test_labels = checks.as_labels(test_labels,
                                   None if test_images is None else len(test_images), 'test')
    if test_images is not None and test_images.shape[1:] != train_images.shape[1:]:
      raise ValueError(f'{name}: test images are {test_images.shape[1:]}, training images '
                       f'{train_images.shape[1:]}.')
    self.pixels = checks.pixel_kind(train_images, name)
    if test_images is not None and checks.pixel_kind(test_images, name) != self.pixels:
      raise ValueError(f'{name}: training and test images must be stored alike (both uint8 or '
                       'both float in [0, 1]).')
    all_labels = train_labels if test_labels is None else np.concatenate([train_labels,
                                                                          test_labels])
    if num_classes is None:
      num_classes = int(all_labels.max()) + 1
    checks.check_label_range(all_labels, num_classes, name)
    self.name, self.image_shape, self.num_classes = name, tuple(train_images.shape[1:]), num_classes
    self.train_images, self.train_labels = train_images, train_labels
    self.test_images, self.test_labels = test_images, test_labels
    self.num_train_total = len(train_labels)
    self.num_validation = (default_num_validation(self.num_train_total) if num_validation is None
                           else int(num_validation))
    self.augment = augment
    self._check_protocol()
    self.validation_split_given = validation_split is not None
    self._set_validation_split(validation_split or 'random')

  def _set_validation_split(self, validation_split):
    self.validation_split = parse_validation_split(validation_split)
    self.validation_indices = validation_positions(self.validation_split, self.num_validation,
                                                   self.num_train_total)
    # Training examples in their order in the arrays (each epoch permutes them).
    self.train_indices = np.setdiff1d(np.arange(self.num_train_total),
                                      self.validation_indices)

  def with_validation_split(self, validation_split):
    """A copy of this source (sharing its arrays) with another validation split (given)."""
    other = copy.copy(self)
    other._set_validation_split(validation_split)  # pylint: disable=protected-access
    other.validation_split_given = True
    return other

  def identity(self):
    # All labels, and the images and labels of a fixed sample: two datasets of the same shape
    # differ there (a hash of every image would cost seconds on large arrays).
    sample = np.sort(np.random.default_rng(DATA_SEED).permutation(self.num_train_total)[
        :IDENTITY_SAMPLE])
    digest = hashlib.sha256()
    checks.hash_examples(digest, self.train_images[sample], self.train_labels[sample])
    return dict(super().identity(),
                labels_sha256=hashlib.sha256(self.train_labels.tobytes()).hexdigest()[:16],
                sample_sha256=digest.hexdigest()[:16])

  def check_label_mix(self):
    labels = self.train_labels[self.validation_indices]
    where = ('the first' if self.validation_split == 'first' else 'a random selection of')
    return checks.check_mix(
        f'{self.name}: the validation split ({where} {len(labels)} training images)', labels,
        'the whole training set', self.train_labels, self.num_classes, one_sample=True,
        harm=f"{checks.CHOSEN_ON_FEW} Use validation_split='random' (from_arrays' and from_npz's "
             'default), or shuffle the arrays once with a fixed seed.')

  def eval_split(self, split, limit=None):
    if split == 'validation':
      positions = self.validation_indices[:limit]
      images, labels = self.train_images[positions], self.train_labels[positions]
      return checks.to_unit(images), labels, positions.astype(np.int32)
    if split == 'test':
      if self.test_labels is None:
        raise ValueError(f'{self.name} has no test split; evaluate on the validation split.')
      images, labels = self.test_images[:limit], self.test_labels[:limit]
    else:
      raise ValueError(f"Unknown split {split!r}; choose 'validation' or 'test'.")
    return checks.to_unit(images), labels, np.arange(len(labels), dtype=np.int32)

  def epoch_examples(self, seed, epoch, start, count):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    order = np.random.default_rng([seed, epoch]).permutation(self.train_indices)
    order = order[start:start + count].astype(np.int32)
    images, labels = tf.constant(self.train_images), tf.constant(self.train_labels)
    return tf.data.Dataset.from_tensor_slices(order).map(
        lambda i: (tf.gather(images, i), tf.gather(labels, i), i))


def from_arrays(x_train, y_train, x_test=None, y_test=None, *, num_classes=None,
                num_validation=None, augment=None, name='arrays', validation_split=None):
  """A source over NumPy arrays: images [N, H, W(, C)] as uint8 0-255 or float in [0, 1],
  integer labels [N]. Validation: `num_validation` training images (default
  `default_num_validation`), a fixed random selection (validation_split='random', the same in
  every run; the default for a new run, see `ArraySource`) or the first ones ('first');
  `augment(image, seed)` transforms training images only."""
  return ArraySource(name, x_train, y_train, x_test, y_test, num_classes=num_classes,
                     num_validation=num_validation, augment=augment,
                     validation_split=validation_split)


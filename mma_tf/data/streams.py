"""Streamed data: `StreamSource` over a finite `tf.data.Dataset` of (image, label), never held in
memory (`from_dataset`; the loaders' `tfds:NAME` too).

It reads the dataset in its own fixed order, numbers it with `enumerate()` (the example index),
permutes each block of `shuffle_buffer` examples with a stateless draw from (seed, epoch) and
resumes by skipping; nothing but one block and the validation images is held in memory.
"""
import hashlib

import numpy as np

from mma_tf.data import checks
from mma_tf.data.source import Source
from mma_tf.data.splits import default_num_validation


class StreamSource(Source):
  """A finite `tf.data.Dataset` of (image, label) read in a fixed order, never held in memory.

  Index = position in `train`; validation = the first num_validation examples. Each epoch
  permutes every block of `shuffle_buffer` consecutive examples with a stateless draw from
  (seed, epoch); an example stays in its block, so make it >= the dataset size for a uniform
  shuffle (memory: one block of images). Data sorted by class must be shuffled once first
  (`check_label_mix` refuses it).
  """

  def __init__(self, name, train, test=None, *, num_classes, num_train_total=None,
               num_validation=None, augment=None, shuffle_buffer=10_000):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    train, test = _pairs(train, 'train'), _pairs(test, 'test')
    spec = train.element_spec[0]
    if spec.shape.rank != 3 or not spec.shape.is_fully_defined():
      raise ValueError(f'{name}: images must have a fixed shape [H, W, C]; got {spec.shape}. '
                       'Resize them in the dataset (tf.image.resize) first.')
    if not (spec.dtype == tf.uint8 or spec.dtype.is_floating):
      raise ValueError(f'{name}: images must be uint8 (0-255) or float in [0, 1]; got '
                       f'{spec.dtype}.')
    self.name, self.image_shape = name, tuple(spec.shape.as_list())
    self.pixels = 'uint8' if spec.dtype == tf.uint8 else 'float'
    self.num_classes = int(num_classes)
    self.train, self.test = train, test
    self.num_train_total = int(num_train_total or _count(train))
    self.num_validation = (default_num_validation(self.num_train_total) if num_validation is None
                           else int(num_validation))
    self.augment, self.shuffle_buffer = augment, int(shuffle_buffer)
    self._check_protocol()
    self._front = None

  def _read_front(self):
    """(labels of the validation split, labels of the first shuffle block, a hash of the images
    and labels of both): what the start-up check reads, once."""
    if self._front is None:
      digest, labels = hashlib.sha256(), []
      front = self.train.take(self.num_validation + self.shuffle_buffer)
      for images, batch_labels in front.batch(1024).as_numpy_iterator():
        checks.hash_examples(digest, images, batch_labels)
        labels.append(batch_labels.astype(np.int64))
      labels = np.concatenate(labels)
      checks.check_label_range(labels, self.num_classes, self.name)
      n = self.num_validation
      self._front = labels[:n], labels[n:], digest.hexdigest()[:16]
    return self._front

  def identity(self):
    # A stream is not read in full up front: the validation split and the first shuffle block
    # (read anyway by the start-up check) identify it.
    return dict(super().identity(), shuffle_buffer=self.shuffle_buffer,
                sample_sha256=self._read_front()[2])

  def check_label_mix(self):
    validation, block, _ = self._read_front()
    total = len(validation) + len(block)
    fix = ('Shuffle the dataset once with a fixed seed before passing it, e.g. '
           'ds.shuffle(n, seed=0, reshuffle_each_iteration=False) (or its files, for data larger '
           'than memory), or pass shuffle_buffer >= its size '
           f'({self.num_train_total - self.num_validation}) to shuffle it whole each epoch.')
    if self.num_classes > 1 and len(np.unique(np.concatenate([validation, block]))) == 1:
      raise ValueError(f'{self.name}: all of the first {total} examples (validation split and '
                       f'first shuffle block) are of class {validation[0]}: the data looks '
                       f'sorted by class. {fix}')
    warnings = checks.check_mix(
        f'{self.name}: the validation split (the first {len(validation)} examples)', validation,
        f'the next {len(block)} (the first shuffle block)', block, self.num_classes,
        f'{checks.CHOSEN_ON_FEW} {fix}')
    if self.num_train_total - self.num_validation > self.shuffle_buffer:
      # More than one block: a block sorted in itself means the batches see a few classes at a
      # time (one block shuffled whole mixes them, however it was ordered).
      half = len(block) // 2
      warnings += checks.check_mix(
          f'{self.name}: the first half of the first shuffle block ({half} examples)',
          block[:half], 'its second half', block[half:], self.num_classes,
          f'training batches would see a few classes at a time. {fix}')
    return warnings

  def eval_split(self, split, limit=None):
    if split == 'validation':
      ds = self.train.take(self.num_validation if limit is None
                           else min(limit, self.num_validation))
    elif split == 'test':
      if self.test is None:
        raise ValueError(f'{self.name} has no test split; evaluate on the validation split.')
      ds = self.test if limit is None else self.test.take(limit)
    else:
      raise ValueError(f"Unknown split {split!r}; choose 'validation' or 'test'.")
    images, labels = [], []
    for x, y in ds.batch(4096).as_numpy_iterator():
      images.append(x), labels.append(y)
    if not labels:
      raise ValueError(f'{self.name}: the {split} split is empty.')
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
    checks.pixel_kind(images, f'{self.name} {split}')
    checks.check_label_range(labels, self.num_classes, f'{self.name} {split}')
    return checks.to_unit(images), labels, np.arange(len(labels), dtype=np.int32)

  def epoch_examples(self, seed, epoch, start, count):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))

    def permute_block(index, images, labels):
      # A stateless permutation of the block, keyed by (seed, epoch, first index): unlike
      # Dataset.shuffle, it does not depend on TF's global seed, so resumes and workers agree.
      keys = tf.random.stateless_uniform(tf.shape(index), tf.stack([epoch_seed, index[0]]))
      order = tf.argsort(keys)
      return (tf.gather(index, order), tf.gather(images, order), tf.gather(labels, order))

    ds = self.train.enumerate().skip(self.num_validation)
    ds = ds.map(lambda i, xy: (i, xy[0], xy[1])).batch(self.shuffle_buffer)
    ds = ds.map(permute_block).unbatch()
    return ds.skip(start).take(count).map(
        lambda i, x, y: (x, tf.cast(y, tf.int32), tf.cast(i, tf.int32)))


def from_dataset(train, test=None, *, num_classes, num_examples=None, num_validation=None,
                 augment=None, shuffle_buffer=10_000, name='dataset'):
  """A source over a finite, unbatched `tf.data.Dataset` of (image, label) or {'image', 'label'},
  read in the same order every time (the trainer shuffles after numbering: no reshuffling in
  it). Validation is the first `num_validation` examples, so data sorted by class must be
  shuffled once with a fixed seed first (ds.shuffle(n, seed=0, reshuffle_each_iteration=False));
  training refuses it otherwise. Images uint8 0-255 or float in [0, 1] of one fixed shape.
  `num_examples`: the size of `train`, if its cardinality is unknown (otherwise it is counted
  once)."""
  return StreamSource(name, train, test, num_classes=num_classes, num_train_total=num_examples,
                      num_validation=num_validation, augment=augment,
                      shuffle_buffer=shuffle_buffer)



def _pairs(ds, split):
  if ds is None:
    return None
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if not isinstance(ds, tf.data.Dataset):
    raise ValueError(f'{split}: expected a tf.data.Dataset; got {type(ds).__name__}.')
  spec = ds.element_spec
  if isinstance(spec, dict) and {'image', 'label'} <= set(spec):
    ds = ds.map(lambda e: (e['image'], e['label']))
  elif not (isinstance(spec, tuple) and len(spec) == 2):
    raise ValueError(f'{split}: elements must be (image, label) or {{"image", "label"}}, '
                     f'unbatched; got {spec}.')
  if ds.element_spec[0].shape.rank == 4:
    raise ValueError(f'{split}: the dataset is batched; pass it unbatched (the trainer batches).')
  label = ds.element_spec[1]
  if label.shape.rank != 0 or not label.dtype.is_integer:
    raise ValueError(f'{split}: labels must be integer class ids (scalars, not one-hot); got '
                     f'{label.dtype.name} of shape {label.shape}.')
  return ds


def _count(ds):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  n = int(ds.cardinality())
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError('The training dataset is infinite (.repeat()?); pass one epoch of it.')
  if n >= 0:
    return n
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1))  # unknown: count once

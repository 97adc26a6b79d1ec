"""Input pipelines: one `Source` interface over in-memory arrays and streamed `tf.data` datasets.

Protocol (docs/paper_notes.md 3.3): validation = `num_validation` images of the training set,
train = the rest, test = the test split. The built-in datasets and streams validate on the first
`num_validation` images (the paper's protocol; the embedded digits are shuffled); arrays you pass
(`from_arrays`, `from_npz`) on a fixed random selection (`validation_split`), which sorted data
cannot turn into a one-class validation set. `Source.check_label_mix`, run when training starts,
refuses data whose validation split or first shuffle block is sorted by class. Every training example carries `index`,
its position in the training set, which keys the per-example eps memory; the index is attached
before any shuffling or augmentation and an index outside the table is an error (on a GPU,
tf.gather would silently read 0). Images leave a source as float32 in [0, 1].

Sources:
  - `ArraySource` (`from_arrays`, `from_npz`, the embedded digits, the paper's TFDS MNIST /
    CIFAR-10): the epoch's order is a permutation drawn from (seed, epoch), so a run resumed at
    any step sees exactly the batches of an uninterrupted one.
  - `StreamSource` (`from_dataset`, `from_tfds`, `--dataset=tfds:NAME`): reads a finite dataset
    in its own fixed order, numbers it with `enumerate()`, permutes each block of
    `shuffle_buffer` examples with a stateless draw from (seed, epoch) and resumes by skipping;
    nothing but one block and the validation images is held in memory.
Both hand their epoch to one shared tail: pixel scaling and range checks, augmentation with a
stateless seed per (seed, epoch, index), global batches, and each input pipeline's slice of them.

TensorFlow is imported inside the functions that build pipelines, not at module load: the CLIs
read `DATASETS` while checking flags, before TF starts (and before its log level is set).
"""
import copy
import dataclasses
import gzip
import hashlib
import importlib.resources
import math
import os

import numpy as np


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

# The seed of random validation splits and of the identity sample: fixed, not the run's --seed,
# so every seed of a study validates on the same images.
DATA_SEED = 0
IDENTITY_SAMPLE = 1024  # training examples whose images and labels identify an array source


def default_num_validation(num_train_total):
  """Validation size for data without a paper preset: 10% of the training set, at most the
  paper's 5,000 (the built-in datasets keep their own: 500 embedded, 5,000 MNIST / CIFAR-10)."""
  return min(5000, num_train_total // 10)


def describe_dataset_name(name):
  """'npz:PATH', 'tfds:NAME' or a built-in name; ValueError otherwise (no TF needed)."""
  kind, _, rest = name.partition(':')
  if name in DATASETS or (kind in ('npz', 'tfds') and rest):
    return kind if rest else 'builtin'
  raise ValueError(f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}, tfds:NAME (any '
                   'TFDS image-classification dataset) or npz:PATH (arrays x_train, y_train[, '
                   'x_test, y_test]).')


class Source:
  """What the trainer and evaluator need from a dataset (see the module docstring).

  Attributes: name, image_shape (H, W, C), num_classes, num_validation, num_train_total (size of
  the training set with validation, the rows of the eps memory), augment (None or a function
  (image float32 [H, W, C] in [0, 1], stateless seed [2] int64) -> image).
  """
  name = image_shape = num_classes = num_validation = num_train_total = augment = None
  pixels = 'uint8'  # how images are stored: 'uint8' (0-255) or 'float' (in [0, 1])
  validation_split = 'first'  # or 'random:SEED' (see parse_validation_split)

  def _check_protocol(self):
    if not 1 <= self.num_validation < self.num_train_total:
      raise ValueError(f'{self.name} has {self.num_train_total} training images; num_validation '
                       f'({self.num_validation}) must be >= 1 (validation picks the best '
                       'checkpoint) and leave images to train on.')
    if self.num_classes < 2:
      raise ValueError(f'{self.name}: a classifier needs >= 2 classes; got {self.num_classes}.')

  def steps_per_epoch(self, global_batch_size):
    return (self.num_train_total - self.num_validation) // global_batch_size

  def identity(self):
    """What identifies the data in config.json (a resumed run must see the same; see
    `identity_conflicts`). sample_sha256 hashes images and labels (which ones: the subclass)."""
    return {'name': self.name, 'image_shape': list(self.image_shape),
            'num_classes': int(self.num_classes), 'num_train_total': int(self.num_train_total),
            'num_validation': int(self.num_validation), 'pixels': self.pixels,
            'augment': getattr(self.augment, '__name__', None) if self.augment else None,
            'validation_split': self.validation_split}

  def check_label_mix(self):
    """Raises ValueError, naming the fix, when the validation split (or a stream's first shuffle
    block) is far from the training set's class mix, as with data sorted by class; returns
    warnings (strings) where the parts read are too small to tell, or, as here, where the source
    cannot be inspected up front. See `_mix_tolerance`."""
    return [f'{self.name}: the class mix of the validation split cannot be checked up front '
            f'({type(self).__name__} reads its data only as it trains); make sure the data is '
            'not sorted by class.']

  def eval_split(self, split, limit=None):
    """(images float32 [N, H, W, C] in [0, 1], labels int32, indices int32) of 'validation' or
    'test' (the first `limit` examples if given)."""
    raise NotImplementedError

  def epoch_examples(self, seed, epoch, start, count):
    """The epoch's training examples number start..start+count-1 in its order, as an unbatched
    dataset of (raw image, label, index)."""
    raise NotImplementedError


# ------------------------------------------------------------------------------ arrays
class ArraySource(Source):
  """Training and test images held in memory as uint8 0-255 or float [0, 1].

  validation_split: 'random' (a fixed selection of num_validation training images, drawn with
  DATA_SEED, the same for every run) or 'first' (the first num_validation, the paper's protocol;
  the built-in datasets use it). None (default): 'random' for a new run; a resumed run keeps
  the split its config.json records ('first' if it records none: older versions).
  """

  def __init__(self, name, train_images, train_labels, test_images=None, test_labels=None, *,
               num_classes=None, num_validation=None, augment=None, validation_split=None):
    train_images, test_images = _as_nhwc(train_images, 'train'), _as_nhwc(test_images, 'test')
    train_labels = _as_labels(train_labels, len(train_images), 'train')
    test_labels = _as_labels(test_labels, None if test_images is None else len(test_images),
                             'test')
    if test_images is not None and test_images.shape[1:] != train_images.shape[1:]:
      raise ValueError(f'{name}: test images are {test_images.shape[1:]}, training images '
                       f'{train_images.shape[1:]}.')
    self.pixels = _pixel_kind(train_images, name)
    if test_images is not None and _pixel_kind(test_images, name) != self.pixels:
      raise ValueError(f'{name}: training and test images must be stored alike (both uint8 or '
                       'both float in [0, 1]).')
    all_labels = train_labels if test_labels is None else np.concatenate([train_labels,
                                                                          test_labels])
    if num_classes is None:
      num_classes = int(all_labels.max()) + 1
    _check_label_range(all_labels, num_classes, name)
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
    n, total = self.num_validation, self.num_train_total
    if self.validation_split == 'first':
      self.validation_indices = np.arange(n)
    else:
      seed = int(self.validation_split.partition(':')[2])
      self.validation_indices = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    # Training examples in their order in the arrays (each epoch permutes them).
    self.train_indices = np.setdiff1d(np.arange(total), self.validation_indices)

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
    _hash_examples(digest, self.train_images[sample], self.train_labels[sample])
    return dict(super().identity(),
                labels_sha256=hashlib.sha256(self.train_labels.tobytes()).hexdigest()[:16],
                sample_sha256=digest.hexdigest()[:16])

  def check_label_mix(self):
    labels = self.train_labels[self.validation_indices]
    where = ('the first' if self.validation_split == 'first' else 'a random selection of')
    return _check_mix(
        f'{self.name}: the validation split ({where} {len(labels)} training images)', labels,
        'the whole training set', self.train_labels, self.num_classes, one_sample=True,
        harm=f"{_CHOSEN_ON_FEW} Use validation_split='random' (from_arrays' and from_npz's "
             'default), or shuffle the arrays once with a fixed seed.')

  def eval_split(self, split, limit=None):
    if split == 'validation':
      positions = self.validation_indices[:limit]
      images, labels = self.train_images[positions], self.train_labels[positions]
      return _to_unit_np(images), labels, positions.astype(np.int32)
    if split == 'test':
      if self.test_labels is None:
        raise ValueError(f'{self.name} has no test split; evaluate on the validation split.')
      images, labels = self.test_images[:limit], self.test_labels[:limit]
    else:
      raise ValueError(f"Unknown split {split!r}; choose 'validation' or 'test'.")
    return _to_unit_np(images), labels, np.arange(len(labels), dtype=np.int32)

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


def parse_validation_split(split):
  """'first', or 'random' / 'random:SEED' (default seed DATA_SEED) -> 'first' or 'random:SEED',
  the form config.json records."""
  kind, colon, seed = str(split).partition(':')
  if kind == 'first' and not colon:
    return 'first'
  if kind == 'random' and (not colon or seed.lstrip('-').isdigit()):
    return f'random:{int(seed) if colon else DATA_SEED}'
  raise ValueError(f"validation_split must be 'random' (or 'random:SEED') or 'first'; got "
                   f'{split!r}.')


# What each identity key covers, for the message that refuses a resume on other data.
_IDENTITY_KEYS = {'labels_sha256': 'a hash of all training labels',
                  'sample_sha256': 'a hash of sampled training images and labels'}


def identity_conflicts(saved, now):
  """How a data identity `now` differs from a run's saved one, one message per key. A key that
  an earlier version did not record is not compared, except validation_split: runs before it
  was recorded all validated on the first images ('first')."""
  saved = dict({'validation_split': 'first'}, **saved)
  out = []
  for key in sorted(set(saved) | set(now)):
    if key in saved and saved.get(key) != now.get(key):
      what = f' ({_IDENTITY_KEYS[key]}: the data differs)' if key in _IDENTITY_KEYS else ''
      out.append(f'data.{key}{what}: saved {saved[key]!r}, now {now.get(key)!r}')
  return out


def _hash_examples(digest, images, labels):
  """Adds images (uint8 as stored, float as float32) and labels (int64) to a sha256 digest."""
  images = np.asarray(images)
  digest.update((images if images.dtype == np.uint8 else images.astype(np.float32)).tobytes())
  digest.update(np.asarray(labels, np.int64).tobytes())


# ------------------------------------------------------------------------------ label mix
# Data in random order: any part of it is a sample of the training set's label distribution p.
# The histogram of n labels over K classes lies farther than t from p in total variation with
# probability at most 2^K exp(-2 n t^2) (Bretagnolle-Huber-Carol; sampling without replacement
# concentrates at least as well, Hoeffding 1963). `_mix_tolerance(n, K)` is the t at which that
# bound is MIX_FALSE_ALARM / 2, so two parts differing by more than the sum of their tolerances
# are refused for data in random order with probability below MIX_FALSE_ALARM, imbalanced classes
# included; parts of data sorted by class differ by close to 1 (e.g. 500 labels of 10 classes:
# t = 0.15).
MIX_FALSE_ALARM = 1e-6
_CHOSEN_ON_FEW = 'the best checkpoint would be chosen on a few classes.'


def _mix_tolerance(n, num_classes):
  return math.sqrt((num_classes * math.log(2) + math.log(2 / MIX_FALSE_ALARM)) / (2 * n))


def _describe_mix(labels, num_classes):
  counts = np.bincount(labels, minlength=num_classes)
  top = np.argsort(-counts, kind='stable')[:3]
  shown = ', '.join(f'{c}: {counts[c] / len(labels):.0%}' for c in top if counts[c])
  rest = np.count_nonzero(counts) - np.count_nonzero(counts[top])
  return f'classes {{{shown}{f", {rest} more" if rest > 0 else ""}}}'


def _check_mix(what, labels, other_what, other, num_classes, harm, one_sample=False):
  """Refuses (ValueError, ending with `harm`: the consequence and the fix) when `labels` and
  `other` are not the same class mix (see above); one_sample: `other` is the whole population,
  not a second sample. Returns warnings."""
  if len(labels) == 0 or len(other) == 0:
    return []
  limit = _mix_tolerance(len(labels), num_classes) + (
      0.0 if one_sample else _mix_tolerance(len(other), num_classes))
  if limit >= 1:  # total variation is at most 1: nothing could be refused
    return [f'{what} and {other_what} are too few examples to check that they hold the same '
            f'mix of the {num_classes} classes (as data sorted by class would not).']
  distance = 0.5 * np.abs(np.bincount(labels, minlength=num_classes) / len(labels)
                          - np.bincount(other, minlength=num_classes) / len(other)).sum()
  if distance > limit:
    raise ValueError(
        f'{what} holds {_describe_mix(labels, num_classes)} but {other_what} holds '
        f'{_describe_mix(other, num_classes)} (total variation {distance:.2f}; data in random '
        f'order stays within {limit:.2f}). The data looks sorted (e.g. by class): {harm}')
  return []


def _as_nhwc(images, split):
  if images is None:
    return None
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W] grey images
  if images.ndim != 4:
    raise ValueError(f'{split} images must be [N, H, W] or [N, H, W, C]; got shape {images.shape}.')
  return images


def _as_labels(labels, count, split):
  if labels is None:
    if count is not None:
      raise ValueError(f'{split} images come without labels.')
    return None
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{split} labels must be integer class ids of shape [N] (not one-hot); got '
                     f'{labels.dtype} {labels.shape}.')
  if len(labels) != count:
    raise ValueError(f'{count} {split} images but {len(labels)} labels.')
  return labels.astype(np.int32)


def _pixel_kind(images, name):
  if images.dtype == np.uint8:
    return 'uint8'
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'{name}: images must be uint8 (0-255) or float in [0, 1]; got '
                     f'{images.dtype}.')
  lo, hi = float(images.min()), float(images.max())
  if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
    raise ValueError(f'{name}: float images must lie in [0, 1]; got values in [{lo}, {hi}]. '
                     'Pass uint8 0-255 images, or divide by 255; a model that expects another '
                     'range declares it (input_range), the data stays in [0, 1].')
  return 'float'


def _check_label_range(labels, num_classes, name):
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name}: labels must be class ids in [0, {num_classes}); got '
                     f'[{labels.min()}, {labels.max()}].')


def _to_unit_np(images):
  return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(
      np.float32)


# ------------------------------------------------------------------------------ streams
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
        _hash_examples(digest, images, batch_labels)
        labels.append(batch_labels.astype(np.int64))
      labels = np.concatenate(labels)
      _check_label_range(labels, self.num_classes, self.name)
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
    warnings = _check_mix(
        f'{self.name}: the validation split (the first {len(validation)} examples)', validation,
        f'the next {len(block)} (the first shuffle block)', block, self.num_classes,
        f'{_CHOSEN_ON_FEW} {fix}')
    if self.num_train_total - self.num_validation > self.shuffle_buffer:
      # More than one block: a block sorted in itself means the batches see a few classes at a
      # time (one block shuffled whole mixes them, however it was ordered).
      half = len(block) // 2
      warnings += _check_mix(f'{self.name}: the first half of the first shuffle block '
                             f'({half} examples)', block[:half], 'its second half',
                             block[half:], self.num_classes,
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
    _pixel_kind(images, f'{self.name} {split}')
    _check_label_range(labels, self.num_classes, f'{self.name} {split}')
    return _to_unit_np(images), labels, np.arange(len(labels), dtype=np.int32)

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


def _unavailable(name, data_dir, e):
  where = data_dir or '~/tensorflow_datasets'
  return DataUnavailableError(
      f'Could not load TFDS dataset {name!r} from {where} ({type(e).__name__}: '
      f'{str(e).splitlines()[0][:300] if str(e) else ""}). On a machine with internet run\n'
      f'  python -c "import tensorflow_datasets as tfds; '
      f'tfds.builder(\'{name}\', data_dir=\'DIR\').download_and_prepare()"\n'
      'then copy DIR here and pass --tfds_data_dir=DIR. Or train on the embedded data with '
      '--dataset=mnist_5k.')


# ------------------------------------------------------------------------------ built-ins
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


class PadCropFlip:
  """Reflect-pad, random crop back to the image size, random horizontal flip (Madry et al.'s
  CIFAR-10 augmentation with pad 4); stateless: `augment(image [H, W, C], seed [2])`.

  It also moves a perturbation between the stored frame and an augmented image, for the
  perturbation memory (`mma_tf.perturbation_memory`): `to_augmented` applies the image's own crop
  and flip (the ops are linear, so augment(x + d) == augment(x) + to_augmented(d) exactly), and
  `to_stored` writes an augmented-frame perturbation back where it came from, keeping the stored
  values of the pixels the crop left out (the part that fell on the padding is dropped).
  An augmentation without these two methods cannot be used with the perturbation memory.
  """

  def __init__(self, pad=4, name='madry_cifar_augment'):
    self.pad = pad
    self.__name__ = name  # how config.json names the augmentation (Source.identity)

  def __call__(self, image, seed):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    seeds = tf.random.experimental.stateless_split(seed, 2)
    size = tf.shape(image)
    p = self.pad
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]], mode='REFLECT')
    image = tf.image.stateless_random_crop(padded, size, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])

  def to_augmented(self, delta, seed):
    """A stored-frame perturbation [H, W, C] as seen in the image augmented with `seed`."""
    return self(delta, seed)

  def to_stored(self, delta, stored, seed):
    """Writes an augmented-frame perturbation [H, W, C] back into the stored one."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    seeds = tf.random.experimental.stateless_split(seed, 2)
    h, w = delta.shape[0], delta.shape[1]
    p = self.pad
    # Where __call__ cropped and whether it flipped: the same draws applied to index grids, so
    # they always agree with it (no copy of tf.image's internals).
    grid = tf.reshape(tf.range((h + 2 * p) * (w + 2 * p)), [h + 2 * p, w + 2 * p, 1])
    corner = tf.image.stateless_random_crop(grid, [h, w, 1], seed=seeds[0])[0, 0, 0]
    top, left = corner // (w + 2 * p), corner % (w + 2 * p)
    columns = tf.reshape(tf.range(w), [1, w, 1])
    flipped = tf.image.stateless_random_flip_left_right(columns, seed=seeds[1])[0, 0, 0] > 0
    delta = tf.where(flipped, tf.reverse(delta, axis=[1]), delta)
    paddings = [[top, 2 * p - top], [left, 2 * p - left], [0, 0]]
    window = tf.pad(tf.ones_like(delta), paddings)
    placed = window * tf.pad(delta, paddings) + (1 - window) * tf.pad(
        tf.cast(stored, delta.dtype), [[p, p], [p, p], [0, 0]])
    return placed[p:p + h, p:p + w]


madry_cifar_augment = PadCropFlip()


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


# ------------------------------------------------------------------------------ pipelines
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


def train_dataset(source, global_batch_size, seed, epoch, start_batch=0, input_context=None,
                  with_augment_seed=False):
  """One epoch of training batches {image, label, index}, starting at batch `start_batch`
  (with_augment_seed: also 'augment_seed' [2], each image's augmentation seed).

  The last partial global batch is dropped so every step has the same static shape (the order
  changes every epoch, so every image is used). Each input pipeline reads the whole epoch and
  keeps its slice of every global batch: the global batches do not depend on the number of
  pipelines or replicas.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  steps = source.steps_per_epoch(global_batch_size)
  start = start_batch * global_batch_size
  examples = source.epoch_examples(seed, epoch, start, steps * global_batch_size - start)
  num_train, num_classes, augment = source.num_train_total, source.num_classes, source.augment
  shape, name = source.image_shape, source.name

  def example(image, label, index):
    checks = [
        tf.debugging.assert_less(index, num_train, message=(
            f'{name}: an example index is >= the {num_train} rows of the eps memory; the '
            'dataset is longer than num_examples said')),
        tf.debugging.assert_non_negative(index, message=f'{name}: negative example index'),
        tf.debugging.assert_less(label, num_classes, message=(
            f'{name}: a label is >= num_classes ({num_classes})')),
        tf.debugging.assert_non_negative(label, message=f'{name}: a negative label'),
    ]
    with tf.control_dependencies(checks):
      if image.dtype == tf.uint8:
        image = tf.cast(image, tf.float32) / 255.0
      else:
        image = tf.cast(image, tf.float32)
        image = tf.debugging.assert_all_finite(image, f'{name}: a non-finite pixel')
        with tf.control_dependencies([tf.debugging.assert_less_equal(
            tf.abs(image - 0.5), 0.5, message=f'{name}: float pixels outside [0, 1]')]):
          image = tf.identity(image)
    augment_seed = tf.stack([tf.cast(seed * 1_000_003 + epoch, tf.int64),
                             tf.cast(index, tf.int64)])
    if augment is not None:
      image = augment(image, augment_seed)
    out = {'image': tf.ensure_shape(image, shape), 'label': label, 'index': index}
    if with_augment_seed:
      out['augment_seed'] = augment_seed
    return out

  if input_context is not None and input_context.num_input_pipelines > 1:
    # Sliced before the per-example work, so each pipeline augments only its share.
    pipelines, pid = input_context.num_input_pipelines, input_context.input_pipeline_id
    local = global_batch_size // pipelines
    examples = examples.batch(global_batch_size, drop_remainder=True).map(
        lambda *b: tuple(v[pid * local:(pid + 1) * local] for v in b)).unbatch()
  ds = examples.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images, labels, indices, global_batch_size, input_context=None):
  """Batches {image, label, index, weight} of a whole split (float images in [0, 1]), padded to
  full global batches. Padding examples have weight 0, so every batch has a static shape and
  metrics stay exact.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mma_tf.evaluation.common import pad_positions  # pylint: disable=import-outside-toplevel
  n = len(labels)
  positions, weights = pad_positions(n, -(-n // global_batch_size) * global_batch_size)
  positions = _pipeline_slice(positions, global_batch_size, input_context)
  weights = _pipeline_slice(weights, global_batch_size, input_context)
  ds = tf.data.Dataset.from_tensor_slices({
      'image': images[positions].astype(np.float32),
      'label': labels[positions].astype(np.int32),
      'index': indices[positions].astype(np.int32),
      'weight': weights,
  })
  return ds.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=True)

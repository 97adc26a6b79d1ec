"""What fit() and evaluate() are given, as batches {'image', 'label', 'index'[, 'weight']}.

The example index keys the memories, so it is attached before anything can reorder the examples
and travels with them (the `mma_tf.keras` docstring says the rules):
  - arrays: index = row (or x['index']); the epochs are permutations drawn from (seed, epoch), in
    batches of exactly batch_size (`array_batches`, told the epoch by `EpochOrder`);
  - a finite dataset of batches (images, labels): index = position (`indexed_batches`), refused
    if it shuffles (`shuffling`); ({'image', 'index'}, labels) batches carry their own
    (`with_index`).
The data is checked as `mma_tf.data` checks a source: arrays before training, datasets as they are
read (`checked_batches`; `data_errors` turns a failed check into a ValueError).
"""
import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from mma_tf.data import checks

DATA_ERROR = 'mma_tf.keras'  # starts the messages of the datasets' checks


def with_index(dataset):
  """(image, label) examples -> ({'image', 'index'}, label), index = position in `dataset`
  (unbatched, in a fixed order). Shuffle and batch after it: the index travels with the example."""
  spec = dataset.element_spec
  if not (isinstance(spec, tuple) and len(spec) == 2) or spec[0].shape.rank != 3:
    raise ValueError(f'with_index takes an unbatched dataset of (image [H, W, C], label); got '
                     f'{spec}.')
  return dataset.enumerate().map(
      lambda i, example: ({'image': example[0], 'index': tf.cast(i, tf.int32)}, example[1]))


def unit_images(images):
  """uint8 0-255 or float [0, 1] images -> float32 in [0, 1]."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


# ------------------------------------------------------------------------------ arrays
def split_arrays(x, y, validation_split):
  """Keras' validation_split: (x, y) of the first part, and (x, y) of the last fraction."""
  n = len(x['image'] if isinstance(x, dict) else x)
  at = int(math.floor(n * (1.0 - validation_split)))
  head = lambda v: {k: a[:at] for k, a in v.items()} if isinstance(v, dict) else v[:at]
  tail = lambda v: v['image'][at:] if isinstance(v, dict) else v[at:]
  return head(x), y[:at], (tail(x), y[at:])


def checked_arrays(x, y, split):
  """(images, labels, indices or None) checked as data.from_arrays checks them."""
  index = None
  if isinstance(x, dict):
    if set(x) != {'image', 'index'}:
      raise ValueError(f"x as a dict has the keys 'image' and 'index'; got {sorted(x)}.")
    x, index = x['image'], np.asarray(x['index'])
  images = checks.as_nhwc(np.asarray(x), split)
  labels = checks.as_labels(y, len(images), split)
  checks.pixel_kind(images, split)
  if index is not None:
    if (index.shape != (len(images),) or not np.issubdtype(index.dtype, np.integer)
        or (len(index) and index.min() < 0) or len(np.unique(index)) != len(index)):
      raise ValueError(f"x['index'] must hold one distinct integer >= 0 per image "
                       f'({len(images)}); got {index.dtype} {index.shape}.')
    index = index.astype(np.int32)
  return images, labels, index


def array_batches(images, labels, index, batch_size, seed, shuffle, current_epoch):
  """Training batches of checked arrays: each epoch a permutation drawn from (seed, epoch)
  (shuffle=False: the arrays' order), read when the epoch's iterator starts from
  `current_epoch()`; the last partial batch is dropped, as the Trainer does."""
  n = len(labels)
  steps = n // batch_size
  index = np.arange(n, dtype=np.int32) if index is None else index

  def epoch_order():
    if not shuffle:
      return np.arange(n)
    return np.random.default_rng([seed, current_epoch()]).permutation(n)

  def epoch(_):
    order = tf.numpy_function(epoch_order, [], tf.int64)
    return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(order, [n])[:steps * batch_size])

  tensors = [tf.constant(a) for a in (images, labels, index)]
  ds = tf.data.Dataset.from_tensors(0).flat_map(epoch).batch(batch_size, drop_remainder=True)
  ds = ds.map(lambda rows: dict(zip(('image', 'label', 'index'),
                                    (tf.gather(t, rows) for t in tensors))))
  return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


class EpochOrder(keras.callbacks.Callback):
  """Tells the array pipeline which epoch starts (its permutation is drawn from (seed, epoch))."""

  def __init__(self, wrapper):
    super().__init__()
    self.wrapper = wrapper

  def on_epoch_begin(self, epoch, logs=None):
    self.wrapper._data_epoch = epoch  # pylint: disable=protected-access


# ------------------------------------------------------------------------------ datasets
def shuffling(dataset):
  """Why `dataset` may not give its examples in the same order every time, or None."""
  if dataset.options().deterministic is False:
    return 'its options allow non-deterministic order'
  try:  # the dataset's graph; no public API reads it
    variant = dataset._variant_tensor  # pylint: disable=protected-access
    graph = tf.compat.v1.GraphDef.FromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=variant).numpy())
  except Exception:  # pylint: disable=broad-except  (cannot tell)
    return None
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  ops = sorted({n.op for n in nodes if 'Shuffle' in n.op})
  return f'it shuffles ({", ".join(ops)})' if ops else None


def indexed_batches(dataset):
  """A dataset of batches (images, labels) or ({'image', 'index'}, labels) as batches
  ({'image', 'index'}, labels), index = position for the first kind (refused if it shuffles);
  returns it and the images' TensorSpec."""
  spec = dataset.element_spec
  if not (isinstance(spec, tuple) and len(spec) == 2):
    raise ValueError(f'The dataset must yield batches (images, labels) or ({{"image", '
                     f'"index"}}, labels); got {spec}.')
  indexed = isinstance(spec[0], dict)
  if indexed and set(spec[0]) != {'image', 'index'}:
    raise ValueError(f"The dataset's inputs as a dict have the keys 'image' and 'index'; got "
                     f'{sorted(spec[0])}.')
  image_spec = spec[0]['image'] if indexed else spec[0]
  if image_spec.shape.rank != 4 or None in image_spec.shape[1:]:
    raise ValueError(f'The dataset must yield batches of images [batch, H, W, C] of one '
                     f'shape; got {image_spec.shape} (batch it: dataset.batch(n)).')
  if not (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating):
    raise ValueError(f'Images must be uint8 (0-255) or float in [0, 1]; got '
                     f'{image_spec.dtype.name}.')
  if not indexed:
    why = shuffling(dataset)
    if why:
      raise ValueError(f'The dataset does not keep its order ({why}), so an example\'s '
                       'position, its index in the memory, would change between epochs. Attach '
                       'the index before shuffling: mma_tf.keras.with_index(unbatched) '
                       '.shuffle(...).batch(...); or pass arrays.')
    dataset = dataset.scan(tf.constant(0), lambda at, xy: (
        at + tf.shape(xy[1])[0],
        ({'image': xy[0], 'index': at + tf.range(tf.shape(xy[1])[0])}, xy[1])))
  return dataset, image_spec


def rows_needed(dataset):
  """The memory rows an indexed dataset needs (its largest index + 1): one pass to count it."""
  return int(dataset.map(lambda x, y: tf.reduce_max(x['index']) + 1).reduce(
      tf.constant(0), tf.maximum))


def checked_batches(dataset, split, classes, rows, for_training):
  """Batches {'image', 'label', 'index'[, 'weight' (evaluation)]} of an indexed dataset, its
  indices (below `rows`, unless None), labels (below `classes`) and pixels checked as read."""
  bad = f'{DATA_ERROR} {split} data:'

  def checked(x, y):
    index, labels = tf.cast(x['index'], tf.int32), tf.cast(y, tf.int32)
    asserts = [
        tf.debugging.assert_non_negative(index, message=f'{bad} a negative example index'),
        tf.debugging.assert_non_negative(labels, message=f'{bad} a negative label'),
        tf.debugging.assert_less(labels, classes, message=(
            f'{bad} a label is >= the {classes} classes of the model')),
    ]
    if rows is not None:
      asserts.append(tf.debugging.assert_less(index, rows, message=(
          f'{bad} an example index is >= the {rows} rows of the memory (num_examples): the '
          'data has more examples than the memory was sized for')))
    images = x['image']
    if images.dtype.is_floating:
      asserts.append(tf.debugging.assert_less_equal(
          tf.abs(tf.cast(images, tf.float32) - 0.5), 0.5,
          message=f'{bad} float pixels outside [0, 1]'))
    with tf.control_dependencies(asserts):
      batch = {'image': tf.identity(images), 'label': labels, 'index': index}
    if not for_training:
      batch['weight'] = tf.ones(tf.shape(labels), tf.float32)
    return batch
  return dataset.map(checked)


@contextlib.contextmanager
def data_errors():
  """A failed check of a dataset as it is read (an InvalidArgumentError from the iterator)
  becomes a ValueError with its message."""
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    if DATA_ERROR not in e.message:
      raise
    raise ValueError(e.message[e.message.index(DATA_ERROR):].splitlines()[0]) from None

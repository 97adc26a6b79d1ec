"""Input pipelines: a source's epoch as global batches, and each input pipeline's part of them.

Both `train_dataset` and `eval_dataset` build whole global batches in one order and let each input
pipeline keep its slice (pipeline k of P feeds rows k * B/P .. (k+1) * B/P - 1 of every global
batch of B), so the global batches do not depend on the number of pipelines or replicas. The
training examples are checked as they are read (index inside the eps memory, label range, pixel
range: an error names the problem, never a silent wrong row), scaled to float32 in [0, 1] and
augmented.
"""
import numpy as np


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

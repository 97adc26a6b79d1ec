"""Perturbation memory: each training example's last adversarial perturbation, the next start.

ATTA (Zheng et al., CVPR 2020) observed that adversarial perturbations transfer between
neighbouring epochs: started from an example's previous perturbation, a training attack of 1-2
iterations does the work of many. With `config.perturbation_memory` the training attack of every
objective that supports it (MMA's AN-PGD, PGD-AT's PGD, TRADES' KL search) starts from the
example's stored perturbation, projected onto the ball of the current radius and the [0, 1] box,
instead of a random start; an example without one yet starts as without the memory. After the
step, the rows of the batch's attacked examples take the perturbation the attack ended with.

Rows are keyed by example index, as the eps memory. The table is a variable of the strategy
(one copy per replica, rewritten in place in cross-replica context from the all-gathered batch, so
every replica and worker holds the same table) and part of the checkpoint. With a random
augmentation that moves pixels (crop, flip) the table holds perturbations in the un-augmented
frame and the augmentation moves them (`data.PadCropFlip.to_augmented` / `to_stored`).

Storage: 16 bits (default) is fixed point over [-1, 1], resolution 2^-15 (3e-5): a coordinate of
a perturbation of [0, 1] images that matters lies there (beyond it the box projection on reading
gives the same start), and float16 would be coarser above 0.06. Pairs of int16 are bit-packed into
int32, since collectives (MultiWorkerMirroredStrategy's initial broadcast) take no int16 and
float16 ops make TF log an error line on CPUs without AVX-512 FP16. 32 bits stores float32.
"""
import numpy as np
import tensorflow as tf

BITS = (16, 32)
_SCALE = 2**15 - 1  # 16-bit fixed point: q = round(d * _SCALE), d in [-1, 1]


def bytes_per_example(image_shape, bits):
  return int(np.prod(image_shape)) * bits // 8


def check_size(num_examples, image_shape, bits, limit_mb):
  """(bytes per example, total bytes); ValueError when the table would exceed `limit_mb` MB."""
  per_example = bytes_per_example(image_shape, bits)
  total = per_example * num_examples
  if total > limit_mb * 2**20:
    raise ValueError(
        f'--perturbation_memory would hold {num_examples:,} perturbations of {per_example:,} bytes '
        f'({bits} bits): {total / 2**20:,.1f} MB, above the limit of {limit_mb:,} MB per replica '
        '(--perturbation_memory_limit_mb). Raise the limit if your devices hold it, store it in '
        '16 bits (--perturbation_memory_bits=16), or train without --perturbation_memory.')
  return per_example, total


def describe(num_examples, image_shape, bits):
  per_example = bytes_per_example(image_shape, bits)
  total = per_example * num_examples
  return (f'perturbation memory: {per_example:,} bytes per example x {num_examples:,} examples = '
          f'{total / 2**20:,.1f} MB ({bits} bits, one copy per replica)')


def _variable(name, shape, dtype):
  return tf.Variable(tf.zeros(shape, dtype), trainable=False, name=name)


def _map(fn, *args):
  """fn applied to each example of a batch (the augmentation's per-image ops)."""
  return tf.map_fn(lambda a: fn(*a), args, fn_output_signature=tf.float32)


class PerturbationMemory:
  """The table of stored perturbations, [N, H, W, C] float32 or, in 16 bits, [N, ceil(HWC / 2)]
  int32 of packed int16 pairs (`stored()` decodes it), and which rows hold one ([N] bool).

  Create it inside `strategy.scope()`. `read` runs on a replica, `write` in cross-replica context
  with the all-gathered batch (indices unique within it, as the training data guarantees).
  make_variable(name, shape, dtype) -> a zero tf.Variable (default: a plain one; the Keras
  wrapper's are weights of the model, so Keras saves them).
  """

  def __init__(self, num_examples, image_shape, bits=16, augment=None, make_variable=None):
    self.image_shape, self.size = tuple(image_shape), int(np.prod(image_shape))
    if bits not in BITS:
      raise ValueError(f'perturbation memory bits must be one of {BITS}; got {bits!r}.')
    if augment is not None and not (hasattr(augment, 'to_augmented')
                                    and hasattr(augment, 'to_stored')):
      raise ValueError(
          f'--perturbation_memory with the augmentation {getattr(augment, "__name__", augment)!r}: '
          'a stored perturbation must follow each image\'s crop and flip, and this augmentation '
          'does not say how (it needs to_augmented(delta, seed) and to_stored(delta, stored, '
          'seed) methods, as mma_tf.data.PadCropFlip has). Train without augmentation or '
          'without --perturbation_memory.')
    self.augment = augment
    row = [(self.size + 1) // 2] if bits == 16 else list(image_shape)  # int16 pairs in int32
    make_variable = make_variable or _variable
    self.table = make_variable('perturbation_memory', [num_examples] + row,
                               tf.int32 if bits == 16 else tf.float32)
    self.known = make_variable('perturbation_known', [num_examples], tf.bool)

  def checkpoint_items(self):
    return {'perturbation_memory': self.table, 'perturbation_known': self.known}

  def read(self, index, augment_seed=None):
    """(delta float32 [B, ...] in the batch's frame, known [B]): the attack's warm start."""
    delta = self._decode(tf.gather(self.table, index))
    if self.augment is not None:
      delta = _map(self.augment.to_augmented, delta, augment_seed)
    return delta, tf.gather(self.known, index)

  def write(self, index, delta, mask=None, augment_seed=None):
    """Rows `index` where `mask` (all if None) take `delta` (the batch's frame); others keep
    theirs. Static shapes: every row of the batch is written, unmasked ones with their old value."""
    old = self._decode(tf.gather(self.table, index))
    new = tf.cast(delta, tf.float32)
    if self.augment is not None:
      new = _map(self.augment.to_stored, new, old, augment_seed)
    known = tf.ones_like(index, tf.bool)
    if mask is not None:
      new = tf.where(tf.reshape(mask, [-1] + [1] * (new.shape.rank - 1)), new, old)
      known = tf.logical_or(mask, tf.gather(self.known, index))
    self.table.scatter_update(tf.IndexedSlices(self._encode(new), index))
    self.known.scatter_update(tf.IndexedSlices(known, index))

  def stored(self):
    """The whole table as float32 perturbations [N, H, W, C] (zeros where not known)."""
    return self._decode(tf.convert_to_tensor(self.table))

  def _encode(self, delta):
    if self.table.dtype == tf.float32:
      return delta
    q = tf.cast(tf.round(tf.clip_by_value(delta, -1.0, 1.0) * _SCALE), tf.int16)
    q = tf.reshape(q, [-1, self.size])
    if self.size % 2:
      q = tf.pad(q, [[0, 0], [0, 1]])
    return tf.bitcast(tf.reshape(q, [-1, self.table.shape[1], 2]), tf.int32)

  def _decode(self, rows):
    if self.table.dtype == tf.float32:
      return rows
    q = tf.reshape(tf.bitcast(rows, tf.int16), [-1, 2 * self.table.shape[1]])[:, :self.size]
    return tf.reshape(tf.cast(q, tf.float32) * (1.0 / _SCALE), [-1, *self.image_shape])

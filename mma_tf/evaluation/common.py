"""What every evaluation path shares: one notion of "correct", one seed scheme, one padding rule.

Training-time validation and `bin/evaluate.py` both use these, so a number computed in one place
means the same thing in the other.
"""
import zlib

import numpy as np
import tensorflow as tf

from mma_tf.attacks.common import example_seeds
from mma_tf.norms import fold_in


def is_correct(logits, labels):
  """True where the top logit is the label (ties go to the lowest class index, as tf.argmax)."""
  return tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32))


def stream_seed(seed, name):
  """A [2] stateless seed for the named random stream of run `seed`, e.g. 'apgd-ce/0'.

  Streams are told apart by a hash of their name, not by hand-picked salts that can collide.
  """
  return tf.constant([int(seed), zlib.crc32(name.encode())], tf.int64)


def stream_example_seeds(seed, name, index, stage=None):
  """Per-example seeds [B, 2] of a named stream (and of one `stage` of it: a restart, a target
  rank; an int or a scalar tensor), keyed by each example's dataset index."""
  base = stream_seed(seed, name)
  if stage is not None:
    base = fold_in(base, tf.cast(stage, tf.int32))
  return example_seeds(base, index)


def bucket_size(n, batch_size, multiple=1):
  """The padded size for a chunk of n <= batch_size examples: n rounded up to a multiple of
  g = max(batch_size // 8, 1) (itself rounded up to a multiple of `multiple`, the replica count),
  at most batch_size. So compaction yields few static shapes per function (at most 9 for batch
  sizes >= 16) and pads fewer than g rows."""
  granule = -(-max(batch_size // 8, 1) // multiple) * multiple
  return min(-(-n // granule) * granule, batch_size)


def pad_positions(n, size):
  """Positions [size] that pad n items to `size` by cycling through them, and weights (1 real,
  0 padding). Padding repeats real examples, so it is always valid input for the model."""
  positions = np.arange(size) % max(n, 1)
  return positions, (np.arange(size) < n).astype(np.float32)

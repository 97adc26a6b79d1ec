"""Checks on the data a user passes, before and while it trains: array shapes, how pixels are
stored, label range, the class mix of the parts that choose the best checkpoint, and the hashes
that identify the data in config.json. NumPy only: sources run them before TensorFlow reads the
data, and `mma_tf.keras` runs the same on what fit() is given.
"""
import math

import numpy as np


# ------------------------------------------------------------------------------ shapes and pixels
def as_nhwc(images, split):
  """Images as an array [N, H, W, C] (grey [N, H, W] gain C = 1); None stays None."""
  if images is None:
    return None
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W] grey images
  if images.ndim != 4:
    raise ValueError(f'{split} images must be [N, H, W] or [N, H, W, C]; got shape {images.shape}.')
  return images


def pixel_kind(images, name):
  """How `images` store pixels: 'uint8' (0-255) or 'float' (finite, in [0, 1]); ValueError else."""
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


def to_unit(images):
  """uint8 0-255 or float [0, 1] images -> float32 in [0, 1]."""
  return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(
      np.float32)


# ------------------------------------------------------------------------------ labels
def as_labels(labels, count, split):
  """`count` integer class ids as int32 [N] ([N, 1] is flattened; one-hot is refused)."""
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


def check_label_range(labels, num_classes, name):
  """ValueError unless every label is a class id in [0, num_classes)."""
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name}: labels must be class ids in [0, {num_classes}); got '
                     f'[{labels.min()}, {labels.max()}].')


# ------------------------------------------------------------------------------ label mix
# Data in random order: any part of it is a sample of the training set's label distribution p.
# The histogram of n labels over K classes lies farther than t from p in total variation with
# probability at most 2^K exp(-2 n t^2) (Bretagnolle-Huber-Carol; sampling without replacement
# concentrates at least as well, Hoeffding 1963). `mix_tolerance(n, K)` is the t at which that
# bound is MIX_FALSE_ALARM / 2, so two parts differing by more than the sum of their tolerances
# are refused for data in random order with probability below MIX_FALSE_ALARM, imbalanced classes
# included; parts of data sorted by class differ by close to 1 (e.g. 500 labels of 10 classes:
# t = 0.15).
MIX_FALSE_ALARM = 1e-6
CHOSEN_ON_FEW = 'the best checkpoint would be chosen on a few classes.'


def mix_tolerance(n, num_classes):
  return math.sqrt((num_classes * math.log(2) + math.log(2 / MIX_FALSE_ALARM)) / (2 * n))


def describe_mix(labels, num_classes):
  counts = np.bincount(labels, minlength=num_classes)
  top = np.argsort(-counts, kind='stable')[:3]
  shown = ', '.join(f'{c}: {counts[c] / len(labels):.0%}' for c in top if counts[c])
  rest = np.count_nonzero(counts) - np.count_nonzero(counts[top])
  return f'classes {{{shown}{f", {rest} more" if rest > 0 else ""}}}'


def check_mix(what, labels, other_what, other, num_classes, harm, one_sample=False):
  """Refuses (ValueError, ending with `harm`: the consequence and the fix) when `labels` and
  `other` are not the same class mix (see above); one_sample: `other` is the whole population,
  not a second sample. Returns warnings."""
  if len(labels) == 0 or len(other) == 0:
    return []
  limit = mix_tolerance(len(labels), num_classes) + (
      0.0 if one_sample else mix_tolerance(len(other), num_classes))
  if limit >= 1:  # total variation is at most 1: nothing could be refused
    return [f'{what} and {other_what} are too few examples to check that they hold the same '
            f'mix of the {num_classes} classes (as data sorted by class would not).']
  distance = 0.5 * np.abs(np.bincount(labels, minlength=num_classes) / len(labels)
                          - np.bincount(other, minlength=num_classes) / len(other)).sum()
  if distance > limit:
    raise ValueError(
        f'{what} holds {describe_mix(labels, num_classes)} but {other_what} holds '
        f'{describe_mix(other, num_classes)} (total variation {distance:.2f}; data in random '
        f'order stays within {limit:.2f}). The data looks sorted (e.g. by class): {harm}')
  return []


# ------------------------------------------------------------------------------ identity
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


def hash_examples(digest, images, labels):
  """Adds images (uint8 as stored, float as float32) and labels (int64) to a sha256 digest."""
  images = np.asarray(images)
  digest.update((images if images.dtype == np.uint8 else images.astype(np.float32)).tobytes())
  digest.update(np.asarray(labels, np.int64).tobytes())

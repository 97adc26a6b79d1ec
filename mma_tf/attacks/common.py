"""What every attack shares: the input box, argument checks, per-example seeds and the input
gradient."""
import numbers

import numpy as np
import tensorflow as tf

from mma_tf import norms as norms_lib

# The input box: images in [0, 1] (models normalise inside). The attacks' clip_min/clip_max
# defaults, and the box the evaluator checks every returned point against.
CLIP_MIN, CLIP_MAX = 0.0, 1.0


def is_concrete(v):
  """True for Python numbers, numpy arrays and eager tensors: values we can check on the host."""
  return not tf.is_symbolic_tensor(v) if tf.is_tensor(v) else True


def check_attack_inputs(x, y, eps, clip_min=CLIP_MIN, clip_max=CLIP_MAX, name='eps'):
  """Raises ValueError, before any graph is built, on inputs that would give a meaningless attack.

  Shape checks use static shapes and always run; value checks (eps >= 0, x inside
  [clip_min, clip_max]) run when the values are known on the host, i.e. outside `tf.function`.
  """
  x_shape = tf.TensorShape(np.shape(x) if not tf.is_tensor(x) else x.shape)
  y_shape = tf.TensorShape(np.shape(y) if not tf.is_tensor(y) else y.shape)
  eps_shape = tf.TensorShape(np.shape(eps) if not tf.is_tensor(eps) else eps.shape)
  if x_shape.rank is not None and x_shape.rank < 2:
    raise ValueError(f'x must be a batch [B, ...] of inputs; got shape {x_shape}.')
  if y_shape.rank is not None and y_shape.rank != 1:
    raise ValueError(f'y must be integer labels of shape [B]; got shape {y_shape}.')
  batch = x_shape[0] if x_shape.rank else None
  if batch is not None and y_shape.rank == 1 and y_shape[0] is not None and y_shape[0] != batch:
    raise ValueError(f'x has {batch} examples but y has {y_shape[0]} labels.')
  if eps_shape.rank not in (None, 0, 1) or (
      eps_shape.rank == 1 and None not in (eps_shape[0], batch) and eps_shape[0] != batch):
    raise ValueError(f'{name} must be a scalar or a vector of one value per example ([{batch}]); '
                     f'got shape {eps_shape}.')
  if not clip_min < clip_max:
    raise ValueError(f'clip_min ({clip_min}) must be below clip_max ({clip_max}).')
  if is_concrete(eps):
    e = np.asarray(eps, np.float64)
    if not np.all(np.isfinite(e)) or np.any(e < 0):
      raise ValueError(f'{name} must be finite and >= 0; got {e.min() if e.size else e}.')
  if is_concrete(x):
    xv = np.asarray(x)
    if xv.size and (xv.min() < clip_min or xv.max() > clip_max or not np.all(np.isfinite(xv))):
      raise ValueError(
          f'Inputs must lie in [{clip_min}, {clip_max}] (got values in [{xv.min()}, {xv.max()}]). '
          'Scale images to [0, 1] and do any normalisation inside the model.')


def check_count(value, name, minimum=0):
  """`value` as an int, or a ValueError: the attacks' iteration, restart and target counts shape
  their graphs, so they must be Python (or NumPy) integers; a float or bool is refused, never
  truncated."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}; got {value!r}.')
  return int(value)


def example_seeds(seed, keys):
  """Per-example stateless seeds [B, 2] from a base seed (int or [2]) and integer keys [B].

  Keys are e.g. dataset indices: an example's random start then depends only on (seed, key),
  not on its batch or replica.
  """
  base = tf.cast(tf.reshape(tf.convert_to_tensor(seed), [-1]), tf.int64)
  base = base if base.shape[0] == 2 else tf.stack([base[0], tf.constant(0, tf.int64)])
  return norms_lib.fold_in(base, tf.cast(keys, tf.int64))  # each key folded into the base


def seeds_for_batch(seed, batch_size):
  seed = tf.convert_to_tensor(seed)
  if seed.shape.rank == 2:  # already one seed per example
    return tf.cast(seed, tf.int64)
  return example_seeds(seed, tf.range(batch_size))


def per_example_vector(v, batch_size, dtype=tf.float32):
  """Broadcasts a scalar or [B] value to a [B] vector."""
  return tf.broadcast_to(tf.cast(v, dtype), [batch_size])


def input_gradient(predict, loss_fn, x, y):
  """Gradient of the batch-summed loss w.r.t. x: per-example gradients independent of batch size."""
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    loss = tf.reduce_sum(loss_fn(predict(x), y))
  # A model that blocks the gradient (stop_gradient) gets zeros, not a crash: evaluation reports it.
  grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  # A SavedModel's gradient has an unknown batch size; keep x's, which the attack loops need
  # (a batch of one would otherwise broadcast to an unknown size).
  return tf.ensure_shape(grad, x.shape)

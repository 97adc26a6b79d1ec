"""Small models with known geometry, shared by the tests."""
import functools

import numpy as np
import tensorflow as tf

IMAGE_SHAPE = (4, 5, 1)
DIM = int(np.prod(IMAGE_SHAPE))


class LinearProblem:
  """Logits W x + b with analytic margins: min_j (z_y - z_j) / ||w_y - w_j||_dual.

  For num_classes > 2, classes 2.. have bias -40, so the competitor of every example is class 0
  or 1 and the soft logit margin equals the logit margin to ~1e-17 (SLM boundary = LM boundary).
  Examples are kept only if the optimal perturbation up to 1.1 x margin stays inside [0, 1], so the
  box never interferes with the analytic value. `nearest`: the class across the nearest boundary.
  """

  def __init__(self, norm, num_classes=2, batch=16, seed=0, max_margin=0.3):
    rng = np.random.RandomState(seed)
    self.w = rng.randn(DIM, num_classes).astype(np.float32) * 0.5
    self.b = self._biases(rng, num_classes)
    xs, ys, margins, nearest = [], [], [], []
    while len(xs) < batch:
      x = rng.uniform(0.3, 0.7, DIM).astype(np.float32)
      z = x @ self.w + self.b
      y = int(np.argmax(z))
      diffs = self.w - self.w[:, [y]]  # column j: w_j - w_y, the ascent direction toward j
      with np.errstate(divide='ignore', invalid='ignore'):
        m = np.where(np.arange(num_classes) == y, np.inf, (z[y] - z) / dual_norm(diffs, norm))
      j = int(np.argmin(m))
      d = diffs[:, j]
      direction = np.sign(d) if norm == 'Linf' else d / np.linalg.norm(d)
      x_far = x + 1.1 * m[j] * direction
      if 0.01 < m[j] < max_margin and x_far.min() > 0 and x_far.max() < 1:
        xs.append(x), ys.append(y), margins.append(m[j]), nearest.append(j)
    self.x = np.stack(xs).reshape((batch,) + IMAGE_SHAPE)
    self.y = np.array(ys, np.int32)
    self.margin = np.array(margins, np.float32)
    self.nearest = np.array(nearest, np.int32)
    self.w_t, self.b_t = tf.constant(self.w), tf.constant(self.b)

  @staticmethod
  def _biases(rng, num_classes):
    b = np.zeros(num_classes, np.float32)
    b[2:] = -40.0
    return b

  def predict(self, x):
    return tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), self.w_t) + self.b_t

  def is_correct(self, x):
    return np.argmax(self.predict(tf.convert_to_tensor(x)).numpy(), 1) == self.y


def dual_norm(v, norm):
  return np.abs(v).sum(0) if norm == 'Linf' else np.linalg.norm(v, axis=0)


class MulticlassAffine(LinearProblem):
  """LinearProblem with random biases: every class a competitor, so the nearest boundary may be
  that of any class, not always the runner-up's (`nearest_is_runner_up` says where it is)."""

  def __init__(self, norm, num_classes=10, batch=12, seed=1):
    super().__init__(norm, num_classes, batch, seed)
    z = self.x.reshape(batch, -1) @ self.w + self.b
    rank_of_nearest = (z > z[np.arange(batch), self.nearest][:, None]).sum(1) + 1
    self.nearest_is_runner_up = rank_of_nearest == 2

  @staticmethod
  def _biases(rng, num_classes):
    return (rng.randn(num_classes) * 0.3).astype(np.float32)


def radii_between(margins, count=3):
  """Up to `count` radii, each halfway between two consecutive distinct margins: the points a
  radius splits into breakable and robust are then known exactly."""
  m = np.sort(margins)
  gaps = [float((a + b) / 2) for a, b in zip(m[:-1], m[1:]) if b > a * 1.04]
  return tuple(gaps[::max(len(gaps) // count, 1)][:count])


def small_cnn_predict(num_classes=10, seed=0, input_shape=(8, 8, 1)):
  """A deterministic tiny nonlinear model (conv + tanh + dense) for invariance tests."""
  import keras
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(4, 3, activation='tanh'),
      keras.layers.Flatten(),
      keras.layers.Dense(num_classes),
  ])
  return model, (lambda x: model(x, training=False))


def shrink_to_8x8(images):
  """Digits [N, 28, 28, 1] uint8 -> [N, 8, 8, 1] (24x24 centre, 3x3 means): tiny models."""
  return images[:, 2:26, 2:26].reshape(-1, 8, 3, 8, 3, 1).mean((2, 4)).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _embedded_digits():
  """The embedded digits, parsed once per test process; read-only, so that no test can change
  what the next one gets."""
  from mma_tf import data as data_lib
  full = data_lib.load('mnist_5k')
  for array in (full.train_images, full.train_labels, full.test_images, full.test_labels):
    array.flags.writeable = False
  return full


def tiny_data(num_train=500, num_validation=100, num_test=200, size=28):
  """A small slice of the embedded digits with the same protocol (validation first: the digits
  are stored shuffled), for fast loop tests (size=8: shrunk to 8x8)."""
  from mma_tf import data as data_lib
  full = _embedded_digits()
  n = num_train + num_validation
  resize = shrink_to_8x8 if size == 8 else (lambda images: images)
  return data_lib.ArraySource('mnist_5k', resize(full.train_images[:n]), full.train_labels[:n],
                              resize(full.test_images[:num_test]), full.test_labels[:num_test],
                              num_classes=10, num_validation=num_validation,
                              validation_split='first')


def tiny_config(**overrides):
  from mma_tf import configs
  fields = dict(batch_size=20, nb_iter=3, eval_batch_size=50, train_steps=30, log_every=10,
                checkpoint_every=10, learning_rate=1e-3)
  fields.update(overrides)
  return configs.resolve('mnist_5k', 'Linf', fields)


class NoisyLinearProblem(LinearProblem):
  """LinearProblem's logits plus a small term that oscillates fast in x, with a fresh random phase
  at every call: a model with randomness at inference. Its predictions barely move, but one
  call's input gradient is dominated by the oscillation, whose mean over calls vanishes: the case
  Expectation over Transformation (AutoAttack's rand version) exists for. The noise moves logits
  by ~0.02 and input gradients by ~2 x amplitude x frequency per coordinate (the linear part: ~0.4).
  """

  def __init__(self, norm, num_classes=10, batch=16, seed=0, max_margin=0.3, amplitude=0.005,
               frequency=400.0):
    super().__init__(norm, num_classes, batch, seed, max_margin)
    rng = np.random.RandomState(seed + 1)
    self.v_t = tf.constant(rng.randn(DIM, num_classes).astype(np.float32))
    self.amplitude, self.frequency = amplitude, frequency

  def predict(self, x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    phase = tf.random.uniform(tf.shape(flat), 0.0, 2 * np.pi)
    wobble = self.amplitude * tf.sin(self.frequency * flat + phase)
    return tf.matmul(flat, self.w_t) + self.b_t + tf.matmul(wobble, self.v_t)


def warm_start(trainers, weights):
  """The trainers' models from the same weights (the warm_weights fixture: briefly trained)."""
  for t in trainers:
    t.task.model.set_weights(weights)

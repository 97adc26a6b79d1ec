"""Linf / L2 perturbation geometry, in the order advertorch (and so the released MMA code) uses.

All radii and step sizes are per-example vectors [B] (broadcast from scalars by the callers).
Random starts take per-example stateless seeds [B, 2], so an example's start depends only on its
own seed: a batch gives the same result as each example alone, on any number of replicas.
"""
import tensorflow as tf

_TINY = 1e-12


def per_example(v, x):
  """Reshapes a per-example vector [B] to broadcast against x [B, ...]."""
  v = tf.cast(v, x.dtype)
  return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([x.shape.rank - 1], tf.int32)], 0))


def _flat(x):
  return tf.reshape(x, [tf.shape(x)[0], -1])


def _unit_per_example(seeds, like, count=1):
  """U[0, 1) floats [count, B, ...] shaped like x; example i drawn from its own seed seeds[i].

  Floats are made from Philox integer bits by hand: TF's float stateless_uniform returns other
  numbers under XLA, its integer bits do not, so eager, graph and XLA runs draw the same values.
  """
  shape = [count] + like.shape[1:].as_list()

  def draw(seed):
    bits = tf.random.stateless_uniform(shape, seed, None, None, tf.uint32, alg='philox')
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))

  units = tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec(shape, tf.float32))
  return tf.unstack(units, axis=1)


def uniform_per_example(seeds, like, minval, maxval):
  """U(minval, maxval) shaped like x [B, ...]; example i is drawn from its own seed seeds[i]."""
  unit, = _unit_per_example(seeds, like)
  return tf.cast(minval + (maxval - minval) * unit, like.dtype)


def normal_per_example(seeds, like, stddev=1.0):
  """N(0, stddev^2) shaped like x [B, ...] per example seed (Box-Muller on the same bits)."""
  u1, u2 = _unit_per_example(seeds, like, count=2)
  radius = tf.sqrt(-2.0 * tf.math.log1p(-u1))  # 1 - u1 in (0, 1]: finite
  return tf.cast(stddev * radius * tf.cos(2.0 * 3.141592653589793 * u2), like.dtype)


def _clip_to_box(x, delta, clip_min, clip_max):
  return tf.clip_by_value(x + delta, clip_min, clip_max) - x


class LinfNorm:
  name = 'Linf'
  dual = 'L1'  # for analytic margins of linear models: |w . d| <= ||w||_1 ||d||_inf

  @staticmethod
  def norm(delta):
    return tf.reduce_max(tf.abs(_flat(delta)), axis=1)

  @staticmethod
  def random_init(x, eps, seeds, clip_min, clip_max):
    """delta ~ U(-eps, eps) per coordinate, then clipped so x + delta stays in the box."""
    noise = uniform_per_example(seeds, x, -1.0, 1.0)
    return _clip_to_box(x, noise * per_example(eps, x), clip_min, clip_max)

  @staticmethod
  def random_sphere(x, eps, seeds):
    """A random vertex of the eps-cube (a point of the Linf sphere), per-example seeds."""
    return tf.sign(uniform_per_example(seeds, x, -1.0, 1.0)) * per_example(eps, x)

  @staticmethod
  def project(x, delta, eps, clip_min, clip_max):
    """Projection to the eps-ball first, then to the box (docs/paper_notes.md 2.4 item 12)."""
    e = per_example(eps, x)
    return _clip_to_box(x, tf.clip_by_value(delta, -e, e), clip_min, clip_max)

  @classmethod
  def ascend(cls, x, delta, grad, eps, step_size, clip_min, clip_max):
    delta = delta + per_example(step_size, x) * tf.sign(grad)
    return cls.project(x, delta, eps, clip_min, clip_max)


class L2Norm:
  name = 'L2'
  dual = 'L2'

  @staticmethod
  def norm(delta):
    return tf.norm(_flat(delta), axis=1)

  @classmethod
  def _shrink_to_ball(cls, delta, eps):
    """delta * min(1, eps / ||delta||), advertorch's clamp_by_pnorm (0/0 -> keep 0)."""
    n = cls.norm(delta)
    eps = tf.cast(eps, delta.dtype)
    factor = tf.where(n > eps, eps / tf.maximum(n, _TINY), tf.ones_like(n))
    return delta * per_example(factor, delta)

  @classmethod
  def random_init(cls, x, eps, seeds, clip_min, clip_max):
    """advertorch's L2 start: a uniform image u in the box, delta = u - x shrunk to the eps-ball.

    This is not uniform in the ball: it almost always starts on the sphere (docs/paper_notes.md 2.2).
    """
    u = uniform_per_example(seeds, x, clip_min, clip_max)
    return _clip_to_box(x, cls._shrink_to_ball(u - x, eps), clip_min, clip_max)

  @classmethod
  def random_sphere(cls, x, eps, seeds):
    """A random point of the L2 sphere of radius eps (direction of a cube-uniform draw)."""
    noise = uniform_per_example(seeds, x, -1.0, 1.0)
    return noise * per_example(eps / tf.maximum(cls.norm(noise), _TINY), x)

  @classmethod
  def project(cls, x, delta, eps, clip_min, clip_max):
    """Clip to the box first, then shrink to the ball (docs/paper_notes.md 2.4 item 12)."""
    return cls._shrink_to_ball(_clip_to_box(x, delta, clip_min, clip_max), eps)

  @classmethod
  def ascend(cls, x, delta, grad, eps, step_size, clip_min, clip_max):
    g_norm = tf.maximum(cls.norm(grad), 1e-6)
    delta = delta + per_example(step_size / g_norm, x) * grad
    return cls.project(x, delta, eps, clip_min, clip_max)


NORMS = {'linf': LinfNorm, 'l2': L2Norm}


def get_norm(name):
  """Returns the geometry for 'Linf' or 'L2' (case-insensitive), or raises ValueError."""
  if name in (LinfNorm, L2Norm):
    return name
  key = str(name).lower()
  if key not in NORMS:
    raise ValueError(f"Unknown norm {name!r}; choose 'Linf' or 'L2'.")
  return NORMS[key]

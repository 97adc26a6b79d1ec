"""Linf / L2 perturbation geometry, in the order advertorch (and so the released MMA code) uses.

All radii and step sizes are per-example vectors [B] (broadcast from scalars by the callers).
Random starts take per-example stateless seeds [B, 2], so an example's start depends only on its
own seed: a batch gives the same result as each example alone, on any number of replicas.
"""
import numpy as np
import tensorflow as tf

_TINY = 1e-12


def per_example(v, x):
  """Reshapes a per-example vector [B] to broadcast against x [B, ...]."""
  v = tf.cast(v, x.dtype)
  return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([x.shape.rank - 1], tf.int32)], 0))


def _flat(x):
  return tf.reshape(x, [tf.shape(x)[0], -1])


_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)   # Philox-4x32 round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)   # Weyl key increments
_SEED_KEY = (0x3EC8F720, 0x02461E29)   # TF's key for scrambling a stateless seed


def _mul_hi_lo(a, m):
  """(hi, lo) 32-bit halves of a * m, for uint32 values held in int64 and a constant m (16-bit
  limbs keep every partial product inside int64)."""
  a_hi, a_lo = tf.bitwise.right_shift(a, 16), tf.bitwise.bitwise_and(a, 0xFFFF)
  m_hi, m_lo = m >> 16, m & 0xFFFF
  low = a_lo * m_lo + tf.bitwise.left_shift(a_hi * m_lo + a_lo * m_hi, 16)
  hi = a_hi * m_hi + tf.bitwise.right_shift(low, 32)
  return tf.bitwise.bitwise_and(hi, _MASK32), tf.bitwise.bitwise_and(low, _MASK32)


def _philox(counter, key):
  """Philox-4x32-10 (Salmon et al. 2011, as tensorflow/core/lib/random/philox_random.h) on
  broadcastable int64 tensors holding uint32 values: 4 counter words, 2 key words."""
  c0, c1, c2, c3 = counter
  k0, k1 = key
  for round_ in range(10):
    if round_:
      k0 = tf.bitwise.bitwise_and(k0 + _PHILOX_W[0], _MASK32)
      k1 = tf.bitwise.bitwise_and(k1 + _PHILOX_W[1], _MASK32)
    hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M[0])
    hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M[1])
    c0, c1, c2, c3 = (tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi1, c1), k0), lo1,
                      tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi0, c3), k1), lo0)
  return c0, c1, c2, c3


def philox_bits(seeds, count):
  """uint32 bits (as int64) [B, count]: row i equals
  tf.random.stateless_uniform([count], seeds[i], dtype=tf.uint32, alg='philox'), computed for all
  rows at once with elementwise ops (no per-example kernels, the same numbers on every device and
  under XLA)."""
  seeds = tf.cast(seeds, tf.int64)
  word = lambda v, shift: tf.bitwise.bitwise_and(tf.bitwise.right_shift(v, shift), _MASK32)
  s0, s1 = seeds[:, 0:1], seeds[:, 1:2]
  # The seed scramble of TF's stateless kernels: key and base counter from one Philox call.
  mix = _philox((word(s0, 0), word(s0, 32), word(s1, 0), word(s1, 32)),
                (tf.constant(_SEED_KEY[0], tf.int64), tf.constant(_SEED_KEY[1], tf.int64)))
  groups = -(-count // 4)  # each Philox call gives 4 words, to consecutive outputs
  block = tf.range(groups, dtype=tf.int64)[None, :]
  zero = tf.zeros_like(block)
  out = _philox((block, zero, mix[2], mix[3]), (mix[0], mix[1]))
  return tf.reshape(tf.stack(out, axis=-1), [-1, 4 * groups])[:, :count]


# How per-example draws are made; both give the same numbers (tests/test_losses_norms.py).
# None: vectorised when a GPU or TPU is visible (one elementwise pass, where B small per-example
# kernels would each pay a launch), per-example Philox kernels on CPU, where they measured 2-3x
# faster than the vectorised ops (BUILD.md, "Per-example random starts").
VECTORISED_RNG = None


def _vectorised_rng():
  if VECTORISED_RNG is not None:
    return VECTORISED_RNG
  return bool(tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'))


def _unit_per_example(seeds, like, count=1):
  """U[0, 1) floats [count, B, ...] shaped like x; example i drawn from its own seed seeds[i].

  24-bit floats from Philox integer bits: the same numbers eagerly, in graphs and under XLA
  (TF's float stateless_uniform differs under XLA; its integer bits do not).
  """
  shape = like.shape[1:].as_list()
  size = int(np.prod(shape))
  if _vectorised_rng():
    bits = philox_bits(seeds, count * size)
  else:
    bits = tf.map_fn(
        lambda seed: tf.random.stateless_uniform([count * size], seed, None, None, tf.uint32,
                                                 alg='philox'),
        tf.cast(seeds, tf.int64), fn_output_signature=tf.TensorSpec([count * size], tf.uint32))
  unit = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
  unit = tf.reshape(unit, [-1, count] + shape)
  return tf.unstack(unit, axis=1)


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

"""Linf / L2 perturbation geometry, in the order advertorch (and so the released MMA code) uses.

All radii and step sizes are per-example vectors [B] (broadcast from scalars by the callers).
Random starts take per-example stateless seeds [B, 2], so an example's start depends only on its
own seed: a batch gives the same result as each example alone, on any number of replicas. This
module also holds the per-example random draws every attack uses (`per_example_bits`, `fold_in`).
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


def philox_key(seeds):
  """Each example's Philox key and counter base (4 int64 tensors [B, 1] holding uint32 words)
  from its stateless seed [B, 2]: the seed scramble of TF's stateless kernels (one Philox call).
  Derive it once where many draws come from one seed (`philox_words`)."""
  seeds = tf.cast(seeds, tf.int64)
  word = lambda v, shift: tf.bitwise.bitwise_and(tf.bitwise.right_shift(v, shift), _MASK32)
  s0, s1 = seeds[:, 0:1], seeds[:, 1:2]
  return _philox((word(s0, 0), word(s0, 32), word(s1, 0), word(s1, 32)),
                 (tf.constant(_SEED_KEY[0], tf.int64), tf.constant(_SEED_KEY[1], tf.int64)))


def philox_words(key, count, stream=0):
  """uint32 words [B, count] of each example's Philox stream (key from `philox_key`), with
  elementwise ops (no per-example kernels, the same numbers on every device and under XLA).
  Stream 0 is what tf.random.stateless_uniform(..., tf.uint32, alg='philox') draws from the
  seed; stream s (an int or scalar tensor) is a disjoint one: the counter's second word is s."""
  k0, k1, c2, c3 = key
  groups = -(-count // 4)  # each Philox call gives 4 words, to consecutive outputs
  block = tf.range(groups, dtype=tf.int64)[None, :]
  stream = tf.bitwise.bitwise_and(tf.cast(stream, tf.int64), _MASK32) + tf.zeros_like(block)
  out = _philox((block, stream, c2, c3), (k0, k1))
  return tf.cast(tf.reshape(tf.stack(out, axis=-1), [-1, 4 * groups])[:, :count], tf.uint32)


def philox_bits(seeds, count):
  """uint32 bits [B, count]: row i equals
  tf.random.stateless_uniform([count], seeds[i], dtype=tf.uint32, alg='philox'), computed for all
  rows at once with elementwise ops (`philox_words`)."""
  return philox_words(philox_key(seeds), count)


# How per-example draws are made; both give the same numbers (tests/test_losses_norms.py).
# None: vectorised when a GPU or TPU is visible (one elementwise pass, where B small per-example
# kernels would each pay a launch), per-example Philox kernels on CPU, where they measured 2-3x
# faster than the vectorised ops (BUILD.md, "Per-example random starts").
VECTORISED_RNG = None


def _vectorised_rng():
  if VECTORISED_RNG is not None:
    return VECTORISED_RNG
  return bool(tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'))


# The one source of per-example randomness (attacks' starts, APGD's restarts, Square's search,
# the seed derivations): each example's stateless seed keys its own Philox stream, so its draws
# do not depend on its batch, padding or replica, and are the same eagerly, in graphs and under
# XLA.
def per_example_bits(seeds, count):
  """uint32 bits [B, count]: row i is
  tf.random.stateless_uniform([count], seeds[i], dtype=tf.uint32, alg='philox'), drawn by
  `philox_bits` or by one TF kernel per example (VECTORISED_RNG; the same numbers)."""
  if _vectorised_rng():
    return philox_bits(seeds, count)
  return tf.map_fn(
      lambda seed: tf.random.stateless_uniform([count], seed, None, None, tf.uint32,
                                               alg='philox'),
      tf.cast(seeds, tf.int64), fn_output_signature=tf.TensorSpec([count], tf.uint32))


def unit_uniform(seeds, shape):
  """U[0, 1) floats [B, *shape], example i's from its own seed seeds[i] [B, 2]: 24-bit floats from
  Philox integer bits (TF's float stateless_uniform differs under XLA; its integer bits do not)."""
  shape = list(shape)
  bits = per_example_bits(seeds, int(np.prod(shape)))
  unit = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
  return tf.reshape(unit, [-1] + shape)


def fold_in(seeds, keys):
  """tf.random.experimental.stateless_fold_in for one seed [2] or one per example [B, 2], and one
  key or one per example [B]: int64 seeds [..., 2] of (a value drawn from the seed, the key).
  The value has the keys' dtype, as TF's: int32 keys take one Philox word, int64 keys two."""
  keys = tf.convert_to_tensor(keys)
  seeds = tf.cast(seeds, tf.int64)
  words = per_example_bits(tf.reshape(seeds, [-1, 2]), 2)
  if keys.dtype == tf.int64:
    derived = tf.bitcast(words, tf.int64)  # word 0 low, word 1 high: TF's 64-bit draw
  else:
    derived = tf.cast(tf.bitcast(words[:, 0], tf.int32), tf.int64)
  if seeds.shape.rank == 1:
    derived = derived[0]
  keys = tf.cast(keys, tf.int64)
  return tf.stack([derived + tf.zeros_like(keys), keys + tf.zeros_like(derived)], axis=-1)


def _unit_per_example(seeds, like, count=1):
  """`count` U[0, 1) draws [B, ...] shaped like x, example i's from its own seed seeds[i]."""
  unit = unit_uniform(seeds, [count] + like.shape[1:].as_list())
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

    This is not uniform in the ball: it almost always starts on the sphere
    (docs/paper_notes.md 2.2).
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

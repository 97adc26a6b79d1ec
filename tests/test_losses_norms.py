import numpy as np
import pytest
import tensorflow as tf

from mma_tf import losses, norms


def _np_logsumexp(a, axis=-1):
  m = a.max(axis, keepdims=True)
  return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def test_losses_match_their_definitions(rng):
  z = rng.randn(32, 10).astype(np.float32) * 3
  y = rng.randint(0, 10, 32)
  zy = z[np.arange(32), y]
  others = np.where(np.eye(10)[y] > 0, -np.inf, z)
  np.testing.assert_allclose(losses.cross_entropy(z, y), _np_logsumexp(z) - zy, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(losses.soft_logit_margin(z, y), _np_logsumexp(others) - zy,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses.logit_margin(z, y), others.max(1) - zy, atol=1e-6)
  np.testing.assert_allclose(losses.cw_loss(z, y), np.maximum(others.max(1) - zy + 50, 0),
                             atol=1e-5)
  # Identities of docs/paper_notes.md 1.1: CE = log(1 + exp(SLM)), SLM >= LM, SLM < 0 <=> p_y > 1/2.
  slm = losses.soft_logit_margin(z, y).numpy()
  np.testing.assert_allclose(losses.cross_entropy(z, y), np.log1p(np.exp(slm)), rtol=1e-4,
                             atol=1e-5)
  assert np.all(slm >= losses.logit_margin(z, y).numpy() - 1e-6)
  p_y = tf.nn.softmax(z).numpy()[np.arange(32), y]
  np.testing.assert_array_equal(slm < 0, p_y > 0.5)


def test_cw_clamps_at_minus_kappa():
  z = np.array([[100.0, 0.0]], np.float32)  # LM = -100 < -50
  assert losses.cw_loss(z, [0]).numpy()[0] == 0.0


def test_losses_are_float32_under_mixed_precision(rng):
  z = tf.constant(rng.randn(4, 10), tf.float16)
  for fn in losses.LOSSES.values():
    assert fn(z, [1, 2, 3, 4]).dtype == tf.float32


def test_unknown_loss_is_a_value_error():
  with pytest.raises(ValueError, match='Unknown loss'):
    losses.get_loss('hinge')


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_random_init_is_in_ball_and_box(norm, rng):
  geometry = norms.get_norm(norm)
  x = tf.constant(rng.uniform(0, 1, (64, 6, 6, 3)), tf.float32)
  eps = tf.constant(rng.uniform(0, 2, 64), tf.float32)
  seeds = tf.constant(np.stack([np.arange(64), np.arange(64)], 1), tf.int64)
  delta = geometry.random_init(x, eps, seeds, 0.0, 1.0)
  assert np.all(geometry.norm(delta).numpy() <= eps.numpy() * (1 + 1e-5) + 1e-7)
  assert np.all((x + delta).numpy() >= 0) and np.all((x + delta).numpy() <= 1)
  if norm == 'L2':  # advertorch's start: almost always on the sphere (docs/paper_notes.md 2.2)
    small = eps.numpy() < 1.0
    np.testing.assert_allclose(geometry.norm(delta).numpy()[small], eps.numpy()[small],
                               rtol=1e-4)


def test_projection_order_follows_the_released_code():
  x = tf.constant([[0.95, 0.5]], tf.float32)
  delta = tf.constant([[0.3, 0.0]], tf.float32)
  # Linf: ball first (0.3 -> 0.2), then box (0.95 + 0.2 -> 1.0): delta 0.05.
  np.testing.assert_allclose(norms.LinfNorm.project(x, delta, [0.2], 0.0, 1.0), [[0.05, 0.0]],
                             atol=1e-6)
  # L2: box first (delta 0.05), then the ball (0.05 < 0.2: unchanged).
  np.testing.assert_allclose(norms.L2Norm.project(x, delta, [0.2], 0.0, 1.0), [[0.05, 0.0]],
                             atol=1e-6)
  # L2 ascent normalises each example's gradient by its own L2 norm (floor 1e-6).
  step = norms.L2Norm.ascend(tf.fill([2, 2], 0.5), tf.zeros([2, 2]),
                             tf.constant([[3.0, 4.0], [0.0, 0.0]]), [1.0, 1.0], [0.1, 0.1], 0.0,
                             1.0)
  np.testing.assert_allclose(step, [[0.06, 0.08], [0.0, 0.0]], atol=1e-6)


def test_unknown_norm_is_a_value_error():
  with pytest.raises(ValueError, match='Unknown norm'):
    norms.get_norm('L1')


def test_vectorised_philox_draws_tf_stateless_numbers_for_every_seed():
  seeds = tf.constant([[0, 0], [1, 2], [-5, 123456789012345], [2**62, -1], [7, 2**40 + 3]],
                      tf.int64)
  for count in (1, 5, 784):
    expected = np.stack([tf.random.stateless_uniform([count], s, None, None, tf.uint32,
                                                     alg='philox').numpy() for s in seeds])
    np.testing.assert_array_equal(norms.philox_bits(seeds, count), expected.astype(np.int64))
  xla = tf.function(lambda s: norms.philox_bits(s, 784), jit_compile=True)(seeds)
  np.testing.assert_array_equal(xla, expected.astype(np.int64))
  like = tf.zeros([5, 4, 7, 3])
  draws = {}
  for vectorised in (False, True):
    norms.VECTORISED_RNG = vectorised
    try:
      draws[vectorised] = (norms.uniform_per_example(seeds, like, -1.0, 1.0).numpy(),
                           norms.normal_per_example(seeds, like).numpy())
    finally:
      norms.VECTORISED_RNG = None
  for a, b in zip(draws[False], draws[True]):
    np.testing.assert_array_equal(a, b)


def test_per_example_seeds_fold_in_as_tf_and_streams_are_disjoint():
  """norms.fold_in, which every seed derivation uses (example_seeds, APGD's restarts), equals
  tf.random.experimental.stateless_fold_in per seed, on both draw paths and under XLA. Square's
  Philox sub-streams: stream 0 is stateless_uniform's own, the others differ from it."""
  seeds = tf.constant([[0, 0], [1, 2], [-5, 123456789012345], [2**62, -1], [7, 2**40 + 3]],
                      tf.int64)
  for vectorised in (False, True):
    norms.VECTORISED_RNG = vectorised
    try:
      for dtype in (tf.int32, tf.int64):
        key = tf.constant(7, dtype)
        want = np.stack([tf.random.experimental.stateless_fold_in(s, key, alg='philox').numpy()
                         for s in seeds])
        np.testing.assert_array_equal(norms.fold_in(seeds, key), want)
        np.testing.assert_array_equal(norms.fold_in(seeds[2], key), want[2])
        xla = tf.function(lambda s, k=key: norms.fold_in(s, k), jit_compile=True)(seeds)
        np.testing.assert_array_equal(xla, want)
      keys = tf.constant([3, -4, 2**40], tf.int64)  # one seed, one key per example
      want = np.stack([tf.random.experimental.stateless_fold_in(seeds[1], k, alg='philox')
                       for k in keys])
      np.testing.assert_array_equal(norms.fold_in(seeds[1], keys), want)
    finally:
      norms.VECTORISED_RNG = None
  key = norms.philox_key(seeds)
  np.testing.assert_array_equal(norms.philox_words(key, 9), norms.philox_bits(seeds, 9))
  words = [norms.philox_words(key, 9, s).numpy() for s in (0, 1, 2)]
  assert len({w.tobytes() for w in words}) == 3

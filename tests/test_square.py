"""Square Attack: schedule and sides, parity of one step with the reference, analytic margins,
gradient masking, invariants, graph modes and bad input."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, small_cnn_predict
from mma_tf import norms
from mma_tf.attacks import example_seeds, input_gradient, pgd
from mma_tf.attacks import square_attack as square_lib
from mma_tf.attacks.square_attack import eta_pattern, p_schedule, side_length, square

NORMS = ['Linf', 'L2']


_COMPILED = {}


def _run(predict, x, y, eps, seed=0, **kw):
  """One compiled call (graph mode: the loop runs without per-iteration Python overhead). The
  function is reused across calls with the same model and options; the seed is an argument."""
  key = (id(predict), tuple(sorted(kw.items())))
  if key not in _COMPILED:
    _COMPILED[key] = tf.function(
        lambda x, y, eps, seed: square(predict, x, y, eps, seed=seed, **kw))
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  seed = tf.stack([seed, 0]) if seed.shape.rank == 0 else seed
  out = _COMPILED[key](tf.constant(x), tf.constant(y), tf.constant(eps, tf.float32), seed)
  return [t.numpy() for t in out]


def _cnn_batch(rng, batch=8, shape=(8, 8, 3)):
  x = rng.uniform(0, 1, (batch,) + shape).astype(np.float32)
  x[:, 0, :, :] = rng.randint(0, 2, (batch, shape[1], shape[2]))  # pixels on the box boundary
  return x, rng.randint(0, 10, batch).astype(np.int32)


def _in_ball(norm, x_adv, x, eps):
  d = norms.get_norm(norm).norm(x_adv.astype(np.float64) - x.astype(np.float64)).numpy()
  return np.all(d <= eps * (1 + 1e-6) + 1e-7) and x_adv.min() >= 0 and x_adv.max() <= 1


# ---------------------------------------------------------------------- schedule and side length

def test_p_schedule_at_the_reference_breakpoints():
  # (iteration, p) for p_init 0.8 and 5000 queries, the index not rescaled: p halves after
  # iterations 10, 50, 200, 500, 1000, 2000 and 4000; the last regime reached is 0.8 / 128.
  expected = [(0, 0.8), (10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (200, 0.2), (201, 0.1),
              (500, 0.1), (501, 0.05), (1000, 0.05), (1001, 0.025), (2000, 0.025),
              (2001, 0.0125), (4000, 0.0125), (4001, 0.00625), (4999, 0.00625)]
  for i, p in expected:
    assert p_schedule(i, 0.8) == pytest.approx(p, rel=1e-12), i
  assert p_schedule(6001, 0.8) == pytest.approx(0.8 / 256)
  assert p_schedule(8001, 0.8) == pytest.approx(0.8 / 512)


def test_side_length_rules():
  regimes = [0.8 / 2**k for k in range(8)]  # the regimes 5000 queries reach
  # CIFAR 32x32 and MNIST 28x28 sides of docs/autoattack.md 4.2 / 4.3.
  assert [side_length(p, 32, 32, 'Linf', 3) for p in regimes] == [29, 20, 14, 10, 7, 5, 4, 3]
  assert [side_length(p, 32, 32, 'L2', 3) for p in regimes] == [29, 21, 15, 11, 7, 5, 5, 3]
  assert [side_length(p, 28, 28, 'Linf') for p in regimes] == [25, 18, 13, 9, 6, 4, 3, 2]
  assert [side_length(p, 28, 28, 'L2') for p in regimes] == [25, 19, 13, 9, 7, 5, 3, 3]
  # Linf: at least 1. L2: at least 3 and odd.
  assert side_length(0.8 / 512, 8, 8, 'Linf') == 1
  assert side_length(0.8 / 512, 8, 8, 'L2') == 3
  assert side_length(0.1, 8, 8, 'L2') == 3  # round(sqrt(6.4)) = 3
  assert side_length(0.2, 8, 8, 'L2') == 5  # round(sqrt(12.8)) = 4 -> odd 5
  # The min(H, W) cap on non-square images, applied after the odd rule (so it can be even).
  assert side_length(0.8, 4, 5, 'Linf') == 4  # round(sqrt(16)) = 4
  assert side_length(0.8, 4, 20, 'Linf') == 4  # round(sqrt(64)) = 8 -> 4
  assert side_length(0.8, 4, 5, 'L2') == 4  # 4 -> odd 5 -> capped at 4
  assert side_length(0.8, 2, 40, 'L2') == 2  # 8 -> 9 -> capped at 2


def test_eta_pattern_matches_the_reference_construction():
  # eta(3): top row R(1, 3) = [1/4, 1 + 1/4, 1/4]; bottom rows R(2, 3) = [[1/4]*3, [1/4, 5/4, 1/4]];
  # each normalised, the bottom negated, the whole normalised.
  top = np.array([[0.25, 1.25, 0.25]])
  bottom = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
  expected = np.concatenate([top / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)])
  np.testing.assert_allclose(eta_pattern(3), expected / np.linalg.norm(expected), rtol=1e-12)
  for s in (1, 2, 4, 5, 7):
    e = eta_pattern(s)
    assert e.shape == (s, s) and np.linalg.norm(e) == pytest.approx(1.0)
    assert np.all(e[:s // 2] > 0) and np.all(e[s // 2:] < 0)


# --------------------------------------------------------------------- one step against reference

def _reference_l2_step(x, x_best, eps, r1, c1, r2, c2, s, eta, sign):
  """The reference's L2 update for one example (HWC), written out in numpy."""
  delta = (x_best - x).astype(np.float64)
  n_image = np.sqrt((delta**2).sum())
  old = delta[r1:r1 + s, c1:c1 + s]
  n1 = np.sqrt((old**2).sum((0, 1)))
  both = np.zeros(x.shape[:2] + (1,))
  both[r1:r1 + s, c1:c1 + s] = 1
  both[r2:r2 + s, c2:c2 + s] = 1
  n_both = np.sqrt(((delta * both)**2).sum((0, 1)))
  new = eta[:, :, None] * sign + old / (1e-12 + n1)
  new = new / (1e-12 + np.sqrt((new**2).sum((0, 1)))) * np.sqrt(
      max(eps**2 - n_image**2, 0) / x.shape[-1] + n_both**2)
  delta[r2:r2 + s, c2:c2 + s] = 0
  delta[r1:r1 + s, c1:c1 + s] = new
  return np.clip(x + delta / (np.sqrt((delta**2).sum()) + 1e-12) * eps, 0, 1)


def test_one_step_matches_the_reference_update(rng):
  h, w, c, s, eps = 8, 8, 3, 3, 1.5
  x = tf.constant(rng.uniform(0, 1, (2, h, w, c)), tf.float32)
  d = rng.randn(2, h, w, c)
  x_best = np.clip(x + eps * d / np.linalg.norm(d.reshape(2, -1), axis=1)[:, None, None, None],
                   0, 1).astype(np.float32)
  rows, cols, rows2, cols2 = np.array([0, 5]), np.array([4, 1]), np.array([3, 5]), np.array([1, 0])
  coin = np.array([False, True])
  signs = rng.choice([-1.0, 1.0], (2, 1, 1, c)).astype(np.float32)
  window = square_lib._window(rows, cols, s, h, w)
  window2 = square_lib._window(rows2, cols2, s, h, w)
  patterns = np.zeros((1, h, h))
  patterns[0, :s, :s] = eta_pattern(s)
  pattern = square_lib._placed_pattern(tf.constant(patterns, tf.float32), 0, rows, cols, coin,
                                       window, h, w)
  got = square_lib._l2_candidate(x, x_best, np.full(2, eps, np.float32), window, window2,
                                 pattern, signs, 0.0, 1.0).numpy()
  for b in range(2):
    eta = eta_pattern(s).T if coin[b] else eta_pattern(s)
    want = _reference_l2_step(x.numpy()[b], x_best[b], eps, rows[b], cols[b], rows2[b],
                              cols2[b], s, eta, signs[b, 0, 0])
    np.testing.assert_allclose(got[b], want, atol=2e-6)
  # Linf: the window goes to x + eps*sign per channel (then the box), the rest stays x_best.
  e = np.full(2, 0.1, np.float32)
  x_best = np.clip(x + 0.1 * rng.choice([-1.0, 1.0], x.shape), 0, 1).astype(np.float32)
  got = square_lib._linf_candidate(x, x_best, e, window, signs, 0.0, 1.0).numpy()
  want = np.where(window.numpy(), np.clip(x.numpy() + 0.1 * signs, 0, 1), x_best)
  np.testing.assert_allclose(got, want, atol=1e-7)


def test_window_offsets_cover_the_image_or_follow_the_reference():
  keys = square_lib._example_keys(example_seeds(3, np.arange(300)))  # 300 examples, 2 iterations
  seen = {False: set(), True: set()}
  for i in range(2):
    bits = square_lib._random_bits(keys, i + 1, 2)
    for ref in (False, True):
      r, c = square_lib._draw_window(bits, 0, 1, 2, 4, 5, ref)
      seen[ref].update(zip(r.numpy().tolist(), c.numpy().tolist()))
  assert seen[False] == {(r, c) for r in range(3) for c in range(4)}  # {0..H-s} x {0..W-s}
  assert seen[True] == {(r, c) for r in range(2) for c in range(3)}  # the reference's range


# --------------------------------------------------------------------------- analytic margins

def _replicated(p, factors, seeds):
  """The problem's batch once per (factor, seed), with per-example eps and seeds: one call covers
  every combination, and per-example draws make each copy an independent run."""
  n, k = len(p.y), len(factors) * len(seeds)
  eps = np.concatenate([p.margin * f for f in factors for _ in seeds]).astype(np.float32)
  keys = np.concatenate([s * 1000 + np.arange(n) for _ in factors for s in seeds])
  return (np.tile(p.x, (k, 1, 1, 1)), np.tile(p.y, k), eps, example_seeds(0, keys),
          np.repeat(np.arange(len(factors)), n * len(seeds)))


@pytest.mark.parametrize('num_classes', [2, 10])
def test_linf_succeeds_just_above_the_margin_and_never_below(num_classes):
  p = LinearProblem('Linf', num_classes)
  factors = (1.02, 1.05, 0.98)
  x, y, eps, seeds, which = _replicated(p, factors, seeds=(0, 1, 2))
  # 1000 queries is ample: from iteration 201 on a 4x5 image the window is one pixel
  # (round(sqrt(0.1 * 20)) = 1), i.e. coordinate search on the signs of a linear margin, which
  # reaches the optimal vertex once each misaligned pixel has been drawn (~20 ln 20 = 60 draws).
  # Observed: every example fooled by query ~530 at 1.02 x.
  x_adv, success, queries = _run(p.predict, x, y, eps, n_queries=1000, seed=seeds)
  assert _in_ball('Linf', x_adv, x, eps)
  above = which < 2
  assert success[above].all() and not success[~above].any()
  assert np.all(np.argmax(p.predict(x_adv).numpy(), 1)[above] != y[above])
  # A vertex search: every pixel of a fooling point sits at x +- eps (the box is far here).
  d = np.abs(x_adv - x)[above]
  np.testing.assert_allclose(d.max((1, 2, 3)), eps[above], rtol=1e-5)
  np.testing.assert_allclose(d.min((1, 2, 3)), eps[above], rtol=1e-5)
  assert queries[above].max() <= 1000
  np.testing.assert_array_equal(x_adv[~above], x[~above])  # failures return x, as the reference
  np.testing.assert_array_equal(queries[~above], 1001)  # the initial point counts one


@pytest.mark.parametrize('num_classes', [2, 10])
def test_l2_succeeds_above_the_margin_and_never_below(num_classes):
  p = LinearProblem('L2', num_classes)
  # L2 Square proposes a fixed-shape pattern over >= 3x3 windows and moves whole windows of mass,
  # so on an unstructured linear model it stalls short of the optimal direction: on 4x5 images
  # it reaches a cosine of ~0.8 (we measured: nothing fooled at 1.1 x in 5000 queries, 20-30%
  # at 1.2 x, > 60% at 1.3 x). At 2 x the margin (cosine 0.5) every example fell within 120
  # queries, so 1000 queries leaves a wide safety margin across seeds.
  x, y, eps, seeds, which = _replicated(p, (2.0, 0.98), seeds=(0, 1, 2))
  x_adv, success, _ = _run(p.predict, x, y, eps, norm='L2', n_queries=1000, seed=seeds)
  assert _in_ball('L2', x_adv, x, eps)
  above = which == 0
  assert success[above].all() and not success[~above].any()
  assert np.all(np.argmax(p.predict(x_adv).numpy(), 1)[above] != y[above])
  # The perturbation is renormalised to exactly eps; only the box clip can shorten it.
  inside = above & ((x_adv > 0) & (x_adv < 1)).all((1, 2, 3))
  assert inside.sum() >= above.sum() // 2
  np.testing.assert_allclose(norms.L2Norm.norm(x_adv - x).numpy()[inside], eps[inside],
                             rtol=1e-5)


def test_masked_gradients_do_not_stop_square():
  p = LinearProblem('Linf', 2)
  # A quantiser in front of the model: its input gradient is exactly zero, so gradient attacks
  # cannot move. Inputs on the 1/255 grid, so x + delta quantises to x + round(255*delta)/255:
  # eps = 1.05 x margin still reaches the margin when 0.05 x margin > 0.5/255, i.e. margin > 0.04.
  x = np.round(p.x * 255) / 255
  z = x.reshape(len(x), -1) @ p.w
  d = p.w[:, 1 - p.y] - p.w[:, p.y]  # column i: w_other - w_y of example i
  margin = ((z[np.arange(len(x)), p.y] - z[np.arange(len(x)), 1 - p.y]) / np.abs(d).sum(0))
  keep = margin > 0.04
  x, y, margin = x[keep].astype(np.float32), p.y[keep], margin[keep].astype(np.float32)
  assert len(y) >= 5
  quantised = lambda v: p.predict(tf.round(v * 255) / 255)
  grad = input_gradient(quantised, lambda z, y: tf.reduce_sum(z, 1), tf.constant(x), y)
  assert np.all(grad.numpy() == 0)
  stuck = pgd(quantised, x, y, margin * 1.05, nb_iter=20, rand_init=False).numpy()
  np.testing.assert_array_equal(stuck, x)  # PGD never leaves x
  x_adv, success, _ = _run(quantised, x, y, margin * 1.05, n_queries=1000, seed=4)
  assert success.all()
  assert np.all(np.argmax(quantised(x_adv).numpy(), 1) != y)
  assert _in_ball('Linf', x_adv, x, margin * 1.05)


# ------------------------------------------------------------------------------------ invariants

@pytest.mark.parametrize('norm', NORMS)
def test_invariants_on_images(norm, rng):
  _, predict = small_cnn_predict(input_shape=(8, 8, 3))
  x, _ = _cnn_batch(rng, batch=12)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)  # all correct at x
  y[0] = (y[0] + 1) % 10  # except example 0
  x_before = x.copy()
  scale = 1.0 if norm == 'Linf' else 6.0
  eps = rng.uniform(0.02, 0.3, len(y)).astype(np.float32) * scale
  eps[1] = 0.0  # left alone
  seeds = example_seeds(7, np.arange(len(y)))
  short = _run(predict, x, y, eps, norm=norm, n_queries=60, seed=seeds)
  x_adv, success, queries = _run(predict, x, y, eps, norm=norm, n_queries=250, seed=seeds)
  np.testing.assert_array_equal(x, x_before)
  assert _in_ball(norm, x_adv, x, eps)
  np.testing.assert_array_equal(success, np.argmax(predict(x_adv).numpy(), 1) != y)
  # Misclassified at x: returned as x, success, no queries. eps 0: x, no queries.
  assert success[0] and queries[0] == 0 and queries[1] == 0
  np.testing.assert_array_equal(x_adv[:2], x[:2])
  assert 3 <= success.sum() < len(y)  # a real mix of fooled and robust examples
  np.testing.assert_array_equal(x_adv[~success], x[~success])
  assert np.all(queries[2:] >= 1) and queries.max() <= 251
  # A fooled example stops changing: the longer run keeps what the short one found, at the
  # same query count; robust examples spent every query.
  fooled = short[1] & (short[2] > 0)
  np.testing.assert_array_equal(x_adv[fooled], short[0][fooled])
  np.testing.assert_array_equal(queries[fooled], short[2][fooled])
  np.testing.assert_array_equal(queries[2:][~success[2:]], 251)
  # Same seed reproduces, another seed differs.
  again = _run(predict, x, y, eps, norm=norm, n_queries=250, seed=seeds)
  for a, b in zip(again, (x_adv, success, queries)):
    np.testing.assert_array_equal(a, b)
  other = _run(predict, x, y, eps, norm=norm, n_queries=250, seed=example_seeds(8, np.arange(12)))
  assert np.any(other[2] != queries)


@pytest.mark.parametrize('norm', NORMS)
def test_an_example_alone_in_a_batch_and_padded_gives_the_same_result(norm, rng):
  _, predict = small_cnn_predict(input_shape=(8, 8, 3))
  x, _ = _cnn_batch(rng, batch=8)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)
  eps = np.float32(0.1 if norm == 'Linf' else 1.0)
  seeds = example_seeds(5, np.arange(8))
  kw = dict(norm=norm, n_queries=80, seed=seeds)
  full = _run(predict, x, y, np.full(8, eps), **kw)
  pad_x = np.concatenate([x, np.zeros((3,) + x.shape[1:], np.float32)])
  pad_y = np.concatenate([y, np.zeros(3, np.int32)])
  pad_eps = np.concatenate([np.full(8, eps), np.zeros(3)]).astype(np.float32)
  pad_seeds = example_seeds(5, np.concatenate([np.arange(8), 100 + np.arange(3)]))
  padded = _run(predict, pad_x, pad_y, pad_eps, norm=norm, n_queries=80, seed=pad_seeds)
  for a, b in zip(full, padded):
    np.testing.assert_allclose(a, b[:8], atol=1e-6)
  alone = _run(predict, x[3:4], y[3:4], np.full(1, eps), norm=norm, n_queries=80,
               seed=seeds[3:4])
  for a, b in zip(alone, full):
    np.testing.assert_allclose(a[0], b[3], atol=1e-6)


# ------------------------------------------------------------------------------ graph modes

@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
@pytest.mark.parametrize('norm', NORMS)
def test_eager_function_and_xla_agree(norm, rng):
  _, predict = small_cnn_predict(input_shape=(8, 8, 3))
  x, _ = _cnn_batch(rng, batch=6)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)
  eps = tf.constant(0.08 if norm == 'Linf' else 0.8)
  seed = tf.constant([1, 2], tf.int64)

  calls = []

  def counting_predict(v):
    calls.append(1)
    return predict(v)

  # 30 queries cross the p boundary at iteration 10.
  attack = lambda x, y, eps, seed: square(counting_predict, x, y, eps, norm=norm, n_queries=30,
                                          seed=seed)
  eager = attack(tf.constant(x), tf.constant(y), eps, seed)
  # Eagerly the loop runs in Python: one forward per iteration plus clean, initial and final
  # checks, and the loop stops when the last example is fooled.
  iterations = int(eager[2].numpy().max()) - 1
  assert len(calls) == 3 + iterations
  for compiled in (tf.function(attack)(x, y, eps, seed),
                   tf.function(attack, jit_compile=True)(x, y, eps, seed)):
    np.testing.assert_allclose(eager[0], compiled[0], atol=1e-5)
    np.testing.assert_array_equal(eager[1], compiled[1])
    np.testing.assert_array_equal(eager[2], compiled[2])


def test_early_exit_when_every_example_is_fooled():
  p = LinearProblem('Linf', 2)
  calls = tf.Variable(0)

  def counting_predict(v):  # counts executed forwards, also inside the compiled loop
    with tf.control_dependencies([calls.assign_add(1)]):
      return tf.identity(p.predict(v))

  # 1.1 x: the box stays out of the way and every example falls well within the budget.
  x_adv, success, queries = _run(counting_predict, p.x, p.y, p.margin * 1.1, n_queries=3000)
  assert success.all() and queries.max() < 3000
  assert calls.numpy() == 3 + queries.max() - 1


@pytest.mark.parametrize('norm', NORMS)
def test_a_run_continued_to_more_queries_is_the_longer_run_bit_for_bit(norm):
  """An n-query search resumed to N queries from its state (through the host, as the evaluator
  carries it) gives exactly one N-query run: points broken before n, between n and N, never."""
  p = LinearProblem(norm, 10, batch=16)
  eps = (p.margin * np.linspace(0.8, 2.5, 16)).astype(np.float32)
  n, full = 50, 200
  kw = dict(norm=norm, seed=example_seeds(3, np.arange(16)))
  one = [t.numpy() for t in tf.function(
      lambda: square(p.predict, p.x, p.y, eps, n_queries=full, **kw))()]
  short = tf.function(lambda: square_lib.square_search(p.predict, p.x, p.y, eps, n_queries=n,
                                                       **kw))()
  state = square_lib.SquareState(*[t.numpy() for t in short])
  resumed = [t.numpy() for t in tf.function(lambda: square_lib.square_outcome(
      p.predict, p.x, p.y, square_lib.square_search(p.predict, p.x, p.y, eps, n_queries=full,
                                                    resume=(n, state), **kw)))()]
  for want, got in zip(one, resumed):
    np.testing.assert_array_equal(got, want)
  _, success, queries = one
  assert (success & (queries <= n + 1)).any() and (success & (queries > n + 1)).any()
  assert (~success).any() and np.all(queries[~success] == full + 1)


@pytest.mark.parametrize('norm', NORMS)
def test_inside_strategy_run_matches_one_device(norm, rng, two_cpu_strategy):
  strategy = two_cpu_strategy
  with strategy.scope():
    _, predict = small_cnn_predict(input_shape=(8, 8, 3))
  x, _ = _cnn_batch(rng, batch=8)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)
  eps = 0.08 if norm == 'Linf' else 0.8
  index = np.arange(8)
  expected = _run(predict, x, y, np.full(8, eps), norm=norm, n_queries=40,
                  seed=example_seeds(9, index))
  dataset = tf.data.Dataset.from_tensor_slices((x, y, index)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def run(batch):
    def replica(x, y, index):
      out = square(predict, x, y, eps, norm=norm, n_queries=40, seed=example_seeds(9, index))
      return [tf.cast(t, tf.float32) for t in out]  # gather takes no bool
    return [strategy.gather(t, axis=0) for t in strategy.run(replica, args=batch)]

  got = run(batch)
  np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
  np.testing.assert_array_equal(got[1], expected[1])
  np.testing.assert_array_equal(got[2], expected[2])


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize('call, match', [
    (lambda p, x, y: square(p, x.reshape(len(y), -1), y, 0.1), r'NHWC images \[B, H, W, C\]'),
    (lambda p, x, y: square(p, x[:, :, :, 0], y, 0.1), r'NHWC images'),
    (lambda p, x, y: square(p, x[..., None], y, 0.1), r'NHWC images'),
    (lambda p, x, y: square(p, x * 255, y, 0.1), r'Inputs must lie in \[0.0, 1.0\]'),
    (lambda p, x, y: square(p, x, y, -0.1), 'eps must be finite and >= 0'),
    (lambda p, x, y: square(p, x, y, np.array([0.1, -0.1] * 4)), 'eps must be finite and >= 0'),
    (lambda p, x, y: square(p, x, y, 0.1, norm='L1'), 'Unknown norm'),
    (lambda p, x, y: square(p, x, y, 0.1, n_queries=-1), 'n_queries must be'),
    (lambda p, x, y: square(p, x, y, 0.1, p_init=1.5), r'p_init must be in \(0, 1\]'),
    (lambda p, x, y: square_lib.square_search(p, x, y, 0.1, n_queries=10, resume=(
        20, (x, np.ones(len(y)), np.ones(len(y))))), 'beyond n_queries=10'),
    (lambda p, x, y: square_lib.square_search(p, x, y, 0.1, n_queries=10, resume=(
        -1, (x, np.ones(len(y)), np.ones(len(y))))), 'resume iterations must be an int'),
])
def test_bad_input_is_a_clear_value_error(call, match, rng):
  calls = []
  x, y = _cnn_batch(rng)
  with pytest.raises(ValueError, match=match):
    call(lambda v: calls.append(1) or tf.zeros([tf.shape(v)[0], 10]), x, y)
  assert not calls, 'the error must come before the model is run'

"""PGD and AN-PGD: analytic margins, invariants, graph modes and bad input."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, small_cnn_predict
from mma_tf import norms
from mma_tf.attacks import (anpgd, anpgd_test, apgd, apgd_targeted, example_seeds, fab,
                            fab_targeted, pgd, square)

NORMS = ['Linf', 'L2']


# ---------------------------------------------------------------- analytic margins (linear models)

@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('num_classes', [2, 10])
@pytest.mark.parametrize('loss', ['ce', 'slm', 'lm', 'cw'])
def test_pgd_succeeds_just_above_the_margin_and_fails_below(norm, num_classes, loss):
  p = LinearProblem(norm, num_classes)
  # L2 uses the paper's evaluation step eps/4: from advertorch's random start on the sphere, the
  # default 2.5*eps/nb_iter turns toward the optimal direction too slowly for a 2% test.
  kw = dict(norm=norm, nb_iter=100, loss=loss, seed=1, rel_step_size=0.25 if norm == 'L2' else None)
  above = pgd(p.predict, p.x, p.y, p.margin * 1.02, **kw)
  below = pgd(p.predict, p.x, p.y, p.margin * 0.98, **kw)
  assert not p.is_correct(above).any(), 'PGD must cross a boundary 2% away'
  assert p.is_correct(below).all(), 'no perturbation inside the margin can cross it'


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('num_classes', [2, 10])
@pytest.mark.parametrize('rand_init', [True, False])
def test_anpgd_recovers_the_analytic_margin(norm, num_classes, rand_init):
  p = LinearProblem(norm, num_classes)
  maxeps = 0.5
  # Start below the margin for half the examples and above it for the other half.
  eps0 = np.where(np.arange(len(p.y)) % 2 == 0, 0.5, 1.5) * p.margin
  _, eps_hat = anpgd(p.predict, p.x, p.y, eps0, maxeps=maxeps, norm=norm, nb_iter=40,
                     rand_init=rand_init, seed=3)
  # The bracket holds the margin and shrinks to maxeps / 2^9; the midpoint is within half of it.
  tol = maxeps / 2**10 + 1e-6
  if norm == 'L2' and rand_init:
    # From the random start on the sphere, 40 steps of 2.5*eps0/40 end a few degrees off the
    # optimal direction, so the search along it overestimates (never underestimates) the margin.
    assert np.all(eps_hat.numpy() >= p.margin - tol)
    assert np.all(eps_hat.numpy() <= p.margin * 1.06 + tol)
  else:
    np.testing.assert_allclose(eps_hat, p.margin, atol=tol)


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('quirks', [True, False])
def test_anpgd_test_variant_recovers_the_analytic_margin(norm, quirks):
  p = LinearProblem(norm, 10)
  maxeps = 0.4
  # test_eps = maxeps / 2 makes the released first-update quirk harmless (docs/paper_notes.md 2.5).
  x_adv, eps_hat = anpgd_test(p.predict, p.x, p.y, test_eps=maxeps / 2, maxeps=maxeps, norm=norm,
                              nb_iter=40, rand_init=False, released_quirks=quirks)
  np.testing.assert_allclose(eps_hat, p.margin, atol=maxeps / 2**10 + 1e-6)
  if not quirks:  # the smallest scale known to succeed: the returned point is adversarial
    assert not p.is_correct(x_adv).any()
    assert np.all(eps_hat.numpy() >= p.margin - 1e-6)


def test_released_quirks_unclipped_result_and_never_successful_limit():
  p = LinearProblem('Linf', 2, max_margin=0.3)
  maxeps = 0.05  # below every margin: the search never succeeds
  eps0 = np.full(len(p.y), 0.02, np.float32)
  x_adv, eps_hat = anpgd(p.predict, p.x, p.y, eps0, maxeps=maxeps, nb_iter=10)
  expected = maxeps - (maxeps - eps0) / 2**10
  np.testing.assert_allclose(eps_hat, expected, rtol=1e-5)
  # A pixel that PGD pushed onto the box boundary is scaled beyond it (x_adv not clipped).
  x = np.full((1, 2, 2, 1), 0.99, np.float32)
  predict = lambda v: tf.concat([tf.zeros([tf.shape(v)[0], 1]),
                                 tf.reduce_sum(tf.reshape(v, [-1, 4]), 1, keepdims=True) - 4.2], 1)
  x_adv, eps_hat = anpgd(predict, x, [0], 0.05, maxeps=1.0, nb_iter=10, rand_init=False)
  assert x_adv.numpy().max() > 1.0 and eps_hat.numpy()[0] > 0.05
  x_clipped, _ = anpgd(predict, x, [0], 0.05, maxeps=1.0, nb_iter=10, rand_init=False,
                       released_quirks=False)
  assert x_clipped.numpy().max() <= 1.0


# ------------------------------------------------------------------------------------- invariants

def _cnn_batch(rng, batch=12):
  x = rng.uniform(0, 1, (batch, 8, 8, 1)).astype(np.float32)
  y = rng.randint(0, 10, batch).astype(np.int32)
  return x, y


@pytest.mark.parametrize('norm', NORMS)
def test_pgd_invariants(norm, rng):
  _, predict = small_cnn_predict()
  x, y = _cnn_batch(rng)
  x_before = x.copy()
  eps = rng.uniform(0.05, 0.5, len(y)).astype(np.float32) * (1 if norm == 'Linf' else 4)
  seeds = example_seeds(7, np.arange(len(y)))
  adv = pgd(predict, x, y, eps, norm=norm, nb_iter=10, seed=seeds).numpy()
  np.testing.assert_array_equal(x, x_before)  # inputs untouched
  geometry = norms.get_norm(norm)
  assert np.all(geometry.norm(adv - x).numpy() <= eps * (1 + 1e-5) + 1e-6)  # norm ball
  assert adv.min() >= 0.0 and adv.max() <= 1.0  # box
  assert np.any(np.abs(adv - x) > 0)  # it moved
  # eps = 0 returns x, for a scalar and for an example inside a vector.
  np.testing.assert_array_equal(pgd(predict, x, y, 0.0, norm=norm, nb_iter=5), x)
  eps_masked = eps.copy()
  eps_masked[3] = 0
  masked = pgd(predict, x, y, eps_masked, norm=norm, nb_iter=10, seed=seeds).numpy()
  np.testing.assert_array_equal(masked[3], x[3])
  # A batch gives each example's own result (per-example seeds).
  for i in (0, 5):
    alone = pgd(predict, x[i:i + 1], y[i:i + 1], eps[i:i + 1], norm=norm, nb_iter=10,
                seed=seeds[i:i + 1]).numpy()
    np.testing.assert_allclose(alone[0], adv[i], atol=1e-5)
  # A scalar eps equals the vector of that eps; a seed reproduces; another seed differs.
  a = pgd(predict, x, y, 0.1, norm=norm, nb_iter=5, seed=4).numpy()
  b = pgd(predict, x, y, np.full(len(y), 0.1, np.float32), norm=norm, nb_iter=5, seed=4).numpy()
  c = pgd(predict, x, y, 0.1, norm=norm, nb_iter=5, seed=5).numpy()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize('norm', NORMS)
def test_anpgd_mask_and_batch_invariance(norm, rng):
  _, predict = small_cnn_predict()
  x, y = _cnn_batch(rng)
  mask = np.arange(len(y)) % 3 != 0
  seeds = example_seeds(11, np.arange(len(y)))
  eps0 = np.full(len(y), 0.1 if norm == 'Linf' else 0.5, np.float32)
  maxeps = 0.6 if norm == 'Linf' else 3.0
  x_adv, eps_hat = anpgd(predict, x, y, eps0, maxeps=maxeps, norm=norm, nb_iter=8, seed=seeds,
                         mask=mask)
  np.testing.assert_array_equal(x_adv.numpy()[~mask], x[~mask])
  np.testing.assert_array_equal(eps_hat.numpy()[~mask], 0)
  assert np.all(eps_hat.numpy()[mask] > 0) and np.all(eps_hat.numpy() <= maxeps)
  idx = np.flatnonzero(mask)
  sub_adv, sub_eps = anpgd(predict, x[idx], y[idx], eps0[idx], maxeps=maxeps, norm=norm,
                           nb_iter=8, seed=tf.gather(seeds, idx))
  np.testing.assert_allclose(sub_eps, eps_hat.numpy()[idx], atol=1e-5)
  np.testing.assert_allclose(sub_adv, x_adv.numpy()[idx], atol=1e-5)


# ----------------------------------------------------------------------------- graph modes, tracing

@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
@pytest.mark.parametrize('norm', NORMS)
def test_eager_function_and_xla_agree_and_trace_once(norm, rng):
  _, predict = small_cnn_predict()
  x, y = _cnn_batch(rng)
  eps = 0.2 if norm == 'Linf' else 1.0

  def attack(x, y, seed):
    x_adv, eps_hat = anpgd(predict, x, y, tf.fill([tf.shape(x)[0]], eps / 2), maxeps=2 * eps,
                           norm=norm, nb_iter=5, seed=seed)
    return pgd(predict, x, y, eps, norm=norm, nb_iter=5, seed=seed), x_adv, eps_hat

  seed = tf.constant([1, 2], tf.int64)
  eager = attack(tf.constant(x), tf.constant(y), seed)
  graph_fn = tf.function(attack)
  xla_fn = tf.function(attack, jit_compile=True)
  for compiled in (graph_fn(x, y, seed), xla_fn(x, y, seed)):
    for a, b in zip(eager, compiled):
      np.testing.assert_allclose(a, b, atol=2e-4)
  for _ in range(3):  # new data of the same shape: no retracing
    x2, y2 = _cnn_batch(rng)
    graph_fn(tf.constant(x2), tf.constant(y2), seed + 1)
  assert graph_fn.experimental_get_tracing_count() == 1


def test_pgd_inside_strategy_run_matches_one_device(rng, two_cpu_strategy):
  strategy = two_cpu_strategy
  with strategy.scope():
    _, predict = small_cnn_predict()
  x, y = _cnn_batch(rng, batch=8)
  index = np.arange(8)
  expected = pgd(predict, x, y, 0.2, nb_iter=5, seed=example_seeds(9, index)).numpy()
  dataset = tf.data.Dataset.from_tensor_slices((x, y, index)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def run(batch):
    def replica(x, y, index):
      return pgd(predict, x, y, 0.2, nb_iter=5, seed=example_seeds(9, index))
    return strategy.gather(strategy.run(replica, args=batch), axis=0)

  np.testing.assert_allclose(run(batch), expected, atol=1e-5)


# -------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('call, match', [
    (lambda p, x, y: pgd(p, x, y, -0.1), 'eps must be finite and >= 0'),
    (lambda p, x, y: pgd(p, x, y, 0.1, norm='L3'), 'Unknown norm'),
    (lambda p, x, y: pgd(p, x, y, 0.1, loss='hinge'), 'Unknown loss'),
    (lambda p, x, y: pgd(p, x * 255, y, 0.1), r'Inputs must lie in \[0.0, 1.0\]'),
    (lambda p, x, y: pgd(p, x, y[:3], 0.1), 'x has 12 examples but y has 3'),
    (lambda p, x, y: pgd(p, x, y, np.ones(5) * 0.1), 'one value per example'),
    (lambda p, x, y: pgd(p, x, y[:, None], 0.1), r'labels of shape \[B\]'),
    (lambda p, x, y: pgd(p, x, y, 0.1, step_size=0.01, rel_step_size=0.1), 'not both'),
    (lambda p, x, y: anpgd(p, x, y, 0.5, maxeps=0.3), 'must not exceed maxeps'),
    (lambda p, x, y: anpgd(p, x, y, 0.1, maxeps=0.0), 'maxeps must be > 0'),
    (lambda p, x, y: anpgd_test(p, x, y, test_eps=-1.0, maxeps=0.3), 'test_eps must be'),
])
def test_bad_input_is_a_clear_value_error(call, match, rng):
  calls = []
  x, y = _cnn_batch(rng)
  with pytest.raises(ValueError, match=match):
    call(lambda v: calls.append(1) or tf.zeros([tf.shape(v)[0], 10]), x, y)
  assert not calls, 'the error must come before the model is run'


@pytest.mark.parametrize('attack, name, minimum', [
    (lambda p, x, y, n: pgd(p, x, y, 0.1, nb_iter=n), 'nb_iter', 0),
    (lambda p, x, y, n: anpgd(p, x, y, 0.1, maxeps=0.5, num_search_steps=n), 'num_search_steps',
     1),
    (lambda p, x, y, n: apgd(p, x, y, 0.1, nb_iter=n), 'nb_iter', 0),
    (lambda p, x, y, n: apgd(p, x, y, 0.1, n_restarts=n), 'n_restarts', 1),
    (lambda p, x, y, n: apgd_targeted(p, x, y, 0.1, n_target_classes=n), 'n_target_classes', 1),
    (lambda p, x, y, n: fab(p, x, y, 0.1, nb_iter=n), 'nb_iter', 0),
    (lambda p, x, y, n: fab_targeted(p, x, y, 0.1, n_target_classes=n), 'n_target_classes', 1),
    (lambda p, x, y, n: square(p, x, y, 0.1, n_queries=n), 'n_queries', 0),
])
def test_every_attack_takes_counts_by_one_rule(attack, name, minimum, rng):
  """Counts shape the graph: a float (even 2.0) or a bool is refused, never truncated, and so is
  a count below the minimum; NumPy integers are accepted."""
  x = rng.uniform(0, 1, (4, 4, 4, 1)).astype(np.float32)
  y = np.zeros(4, np.int32)
  predict = lambda v: tf.reshape(v, [tf.shape(v)[0], -1])[:, :5]
  for bad in (2.0, 2.5, True, minimum - 1):
    with pytest.raises(ValueError, match=f'{name} must be an int >= {minimum}; got {bad!r}'):
      attack(predict, x, y, bad)
  attack(predict, x, y, np.int64(minimum + 1))

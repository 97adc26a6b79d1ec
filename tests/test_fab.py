"""FAB / FAB-T: exact behaviour on affine models, the projection, the contract, modes, bad input."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import DIM, IMAGE_SHAPE, LinearProblem, MulticlassAffine, dual_norm, small_cnn_predict
from mma_tf import norms
from mma_tf.attacks.fab_attack import fab, fab_targeted, project_onto_hyperplane_in_box

NORMS = ['Linf', 'L2']


def affine_ratio(nb_iter, alpha_max=0.1, eta=1.05, beta=0.9):
  """min_norm / margin that FAB must return on an affine model when the box does not bind.

  Every iterate then stays on the segment from x toward its projection onto the boundary, so the
  run is a 1-D recursion in s = (distance from x) / margin (the boundary is at s = 1).
  """
  s, best = 0.0, np.inf
  for _ in range(nb_iter):
    a_cur, a_orig = abs(1 - s), 1.0
    alpha = min(max(a_cur / (a_cur + a_orig), 0.0), alpha_max)
    s = (1 - alpha) * (s + eta * (1 - s)) + alpha * eta
    if s > 1:  # misclassified: record, then step back toward x
      best = min(best, s)
      s *= beta
  return best


def assert_contract(predict, x, y, eps, x_adv, success, min_norm, norm):
  x_adv, success, min_norm = np.asarray(x_adv), np.asarray(success), np.asarray(min_norm)
  eps = np.broadcast_to(eps, success.shape)
  dist = norms.get_norm(norm).norm(x_adv - x).numpy()
  assert np.all(dist <= eps * (1 + 1e-6) + 1e-7), 'x_adv must lie in the eps ball'
  assert x_adv.min() >= 0 and x_adv.max() <= 1, 'x_adv must lie in the box'
  pred = np.argmax(predict(tf.constant(x_adv)).numpy(), 1)
  np.testing.assert_array_equal(success, pred != y)
  np.testing.assert_array_equal(x_adv[~success], x[~success])
  assert not np.any(success & (min_norm > eps)), 'a result above eps is never accepted'
  np.testing.assert_allclose(dist[success], min_norm[success], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ affine models, analytic

@pytest.mark.parametrize('norm', NORMS)
def test_fab_follows_the_exact_affine_dynamics_and_brackets_the_margin(norm):
  p = LinearProblem(norm, 10)  # the nearest class is the runner-up (rank 2) for every example
  nb_iter = 20
  attack = tf.function(lambda eps: fab(p.predict, p.x, p.y, eps, norm=norm, nb_iter=nb_iter))
  x_adv, success, min_norm = attack(p.margin * 1.02)
  ratio = affine_ratio(nb_iter)
  assert 1.003 < ratio < 1.01  # FAB-T ends 0.5% above the boundary on affine models
  np.testing.assert_allclose(min_norm, ratio * p.margin, rtol=2e-5)
  assert np.all(min_norm.numpy() >= p.margin * (1 - 1e-6)), 'nothing is misclassified inside'
  assert success.numpy().all() and not p.is_correct(x_adv).any()
  assert_contract(p.predict, p.x, p.y, p.margin * 1.02, x_adv, success, min_norm, norm)
  x_adv, success, min_norm_below = attack(p.margin * 0.98)
  assert not success.numpy().any() and p.is_correct(x_adv).all()
  np.testing.assert_array_equal(x_adv, p.x)
  np.testing.assert_array_equal(min_norm_below, min_norm)  # eps only decides acceptance


@pytest.mark.parametrize('norm', NORMS)
def test_fab_targeted_finds_the_multiclass_affine_margin(norm):
  p = MulticlassAffine(norm)
  assert not p.nearest_is_runner_up.all(), 'the problem must need targets beyond rank 2'
  nb_iter = 12

  @tf.function
  def attack(eps, all_targets):
    return fab_targeted(p.predict, p.x, p.y, eps, norm=norm, nb_iter=nb_iter,
                        all_targets=all_targets)

  _, _, min_norm = attack(p.margin * 1.02, True)
  min_norm = min_norm.numpy()
  # The nearest class's run follows the affine recursion; other targets may only find points
  # farther away than the margin (or, crossing another class first, anything in between).
  assert np.all(min_norm >= p.margin * (1 - 1e-6))
  assert np.all(min_norm <= affine_ratio(nb_iter) * p.margin * (1 + 2e-5))
  _, _, rank2 = fab(p.predict, p.x, p.y, 1.0, norm=norm, nb_iter=nb_iter)
  # The same rank-2 run, compiled apart (eager here): equal up to float rounding.
  assert np.all(min_norm <= rank2.numpy() * (1 + 1e-5))
  assert np.any(min_norm < rank2.numpy() * 0.99), 'later targets must tighten the estimate'

  x_adv, success, robust_norm = attack(p.margin * 1.02, False)
  assert success.numpy().all() and not p.is_correct(x_adv).any()
  assert np.all(robust_norm.numpy() >= min_norm)  # later targets skip examples already fooled
  assert_contract(p.predict, p.x, p.y, p.margin * 1.02, x_adv, success, robust_norm, norm)
  x_adv, success, below_norm = attack(p.margin * 0.98, False)
  assert not success.numpy().any()
  np.testing.assert_array_equal(x_adv, p.x)
  np.testing.assert_array_equal(below_norm, min_norm)  # nothing fooled: every target ran


# ------------------------------------------------------------------------------------ projection

def reference_projection(t, w, b, norm, lo=0.0, hi=1.0):
  """NumPy: bisection on lam for G(lam) = c (docs/autoattack.md 3.2), one row at a time."""
  c = w @ t - b
  # Move against sign(w) when c > 0, along it when c < 0.
  s = np.sign(c) * np.sign(w)
  room = np.where(s > 0, t - lo, hi - t)
  room = np.where(w != 0, room, 0)

  def move(lam):
    return np.minimum(lam * (np.abs(w) if norm == 'L2' else 1.0), room)

  gain = lambda lam: np.abs(w) @ move(lam)
  if abs(c) >= gain(1e9):
    return -s * room
  low, high = 0.0, 1e9  # L2's lam reaches room / |w|
  for _ in range(200):
    mid = (low + high) / 2
    low, high = (mid, high) if gain(mid) < abs(c) else (low, mid)
  return -s * move(high)


@pytest.mark.parametrize('norm', NORMS)
def test_projection_onto_hyperplane_and_box(norm, rng):
  n, dim = 40, 12
  t = rng.uniform(0, 1, (n, dim))
  t[:, :3] = rng.choice([0.0, 1.0], (n, 3))  # points on the box faces
  w = rng.randn(n, dim)
  w[:, 3] = 0.0  # a coordinate the hyperplane ignores
  gap = rng.uniform(-1, 1, n) * np.abs(w).sum(1) * rng.choice([0.05, 0.3, 1.5], n)
  b = (w * t).sum(1) - gap  # random sign of c; the largest gaps cannot be reached in the box
  w[0], b[0] = 0.0, 1.0  # zero w: no move
  b[1] = w[1] @ t[1]  # already on the hyperplane: no move
  d = project_onto_hyperplane_in_box(t, w, b, norm).numpy()
  want = np.stack([reference_projection(t[i], w[i], b[i], norm) for i in range(n)])
  np.testing.assert_allclose(d, want, atol=1e-6)
  np.testing.assert_array_equal(d[:2], 0)
  assert np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)
  room = np.where(np.sign(gap)[:, None] * w > 0, t, 1 - t) * (w != 0)
  reachable = np.abs(gap) < (np.abs(w) * room).sum(1)
  assert reachable.sum() > n // 2 and (~reachable).sum() > 3
  np.testing.assert_allclose(((t + d) * w).sum(1)[reachable], b[reachable], atol=1e-8)
  # Infeasible rows go to the box corner that moves <w, .> furthest toward b.
  np.testing.assert_allclose(np.abs(d[~reachable]), room[~reachable], atol=1e-12)
  d32 = project_onto_hyperplane_in_box(t.astype(np.float32), w.astype(np.float32),
                                       b.astype(np.float32), norm).numpy()
  np.testing.assert_allclose(d32, d, atol=2e-4)


@pytest.mark.parametrize('norm', NORMS)
def test_projection_is_exact_where_newton_needs_many_steps_or_meets_ties(norm, rng):
  # Image-like rows: most coordinates on a face (many equal breakpoints), and rows whose weights
  # fall geometrically (1 to 1e-6, above L2's 1e-8 cut) over evenly spaced points, where each
  # Newton step crosses few breakpoints: up to 16 (Linf) or 23 (L2) steps before the root.
  n, dim = 6, 784
  t = np.where(rng.uniform(size=(n, dim)) < 0.8, rng.choice([0.0, 1.0], (n, dim)),
               rng.uniform(0, 1, (n, dim)))
  w = rng.randn(n, dim)
  t[3:] = np.arange(1, dim + 1) / dim
  w[3:] = 10 ** -np.linspace(0, 6, dim)
  reach = (np.abs(w) * np.where(w > 0, t, 1 - t)).sum(1)
  b = (w * t).sum(1) - reach * np.array([0.3, 0.9, 0.999, 0.5, 0.99, 0.999999])
  d = project_onto_hyperplane_in_box(t, w, b, norm).numpy()
  want = np.stack([reference_projection(t[i], w[i], b[i], norm) for i in range(n)])
  np.testing.assert_allclose(d, want, atol=1e-9)
  np.testing.assert_allclose(((t + d) * w).sum(1), b, rtol=1e-9)


@pytest.mark.parametrize('norm', NORMS)
def test_box_that_binds_keeps_results_inside_and_adversarial(norm):
  # Two classes, z_1 - z_0 = <v, x> + bias: most pixels sit near the top face and v points out of
  # the box there, so the unconstrained nearest boundary point lies outside [0, 1].
  rng = np.random.RandomState(3)
  v = rng.uniform(0.5, 1.5, DIM).astype(np.float32)
  v[:4] = -rng.uniform(0.5, 1.5, 4)  # a few coordinates can help only by decreasing
  x = rng.uniform(0.97, 0.995, (8, DIM)).astype(np.float32)
  x[:, :4] = rng.uniform(0.3, 0.6, (8, 4))
  bias = -np.float32(x @ v).max() - 0.4
  w = np.stack([np.zeros(DIM, np.float32), v], 1)
  predict = lambda u: tf.matmul(tf.reshape(u, [tf.shape(u)[0], -1]), w) + [0.0, bias]
  y = np.zeros(8, np.int32)
  gap = x @ v + bias  # < 0: all correct
  assert np.all(gap < 0)
  free = -gap / dual_norm(v[:, None], norm)[0]
  dist_in_box = norms.get_norm(norm).norm(np.stack([
      reference_projection(x[i].astype(np.float64), v.astype(np.float64), -bias, norm)
      for i in range(8)])).numpy()
  assert np.all(dist_in_box > free * 1.1), 'the box must bind'
  x_img = x.reshape((8,) + IMAGE_SHAPE)
  eps = dist_in_box * 1.1
  x_adv, success, min_norm = fab(predict, x_img, y, eps, norm=norm, nb_iter=30)
  assert_contract(predict, x_img, y, eps, x_adv, success, min_norm, norm)
  assert success.numpy().all()
  assert np.all(min_norm.numpy() >= dist_in_box * (1 - 1e-5)), 'nothing closer exists in the box'


def numpy_fab_run(params, x, y, target, norm, nb_iter, alpha_max=0.1, eta=1.05, beta=0.9):
  """One FAB run written out in NumPy (docs/autoattack.md 3.3) for a tanh MLP, one example at a
  time."""
  w1, b1, w2, b2 = params
  dist = lambda v: np.abs(v).max() if norm == 'Linf' else np.linalg.norm(v)
  best = np.full(len(y), np.inf)
  for i in range(len(y)):
    x0 = cur = x[i]
    for _ in range(nb_iter):
      h = np.tanh(cur @ w1 + b1)
      gap = (h @ w2 + b2)[target[i]] - (h @ w2 + b2)[y[i]]
      grad = w1 @ ((w2[:, target[i]] - w2[:, y[i]]) * (1 - h**2))
      plane = grad @ cur - gap
      d_cur = reference_projection(cur, grad, plane, norm)
      d_orig = reference_projection(x0, grad, plane, norm)
      n_cur, n_orig = max(dist(d_cur), 1e-8), max(dist(d_orig), 1e-8)
      alpha = min(max(n_cur / (n_cur + n_orig), 0), alpha_max)
      cur = np.clip((1 - alpha) * (cur + eta * d_cur) + alpha * (x0 + eta * d_orig), 0, 1)
      if np.argmax(np.tanh(cur @ w1 + b1) @ w2 + b2) != y[i]:
        best[i] = min(best[i], dist(cur - x0))
        cur = x0 + beta * (cur - x0)
  return best


@pytest.mark.parametrize('norm', NORMS)
def test_fab_matches_a_numpy_transcription_on_a_nonlinear_model(norm):
  rng = np.random.RandomState(5)
  params = (rng.randn(DIM, 16) * 0.8, rng.randn(16) * 0.3, rng.randn(16, 5), rng.randn(5) * 0.3)
  w1, b1, w2, b2 = (tf.constant(v) for v in params)
  predict = lambda u: tf.tanh(tf.reshape(u, [tf.shape(u)[0], -1]) @ w1 + b1) @ w2 + b2
  x = rng.uniform(0, 1, (10, DIM))  # float64 end to end: the two runs agree to rounding
  z = np.tanh(x @ params[0] + params[1]) @ params[2] + params[3]
  y = np.argmax(z, 1)
  for rank in (2, 3):
    target = np.argsort(-z, axis=1, kind='stable')[:, rank - 1]
    want = numpy_fab_run(params, x, y, target, norm, nb_iter=15)
    _, _, got = fab(predict, x.reshape((10,) + IMAGE_SHAPE), y, 0.1, norm=norm, nb_iter=15,
                    target_rank=rank)
    assert np.isfinite(want).sum() >= 8
    np.testing.assert_allclose(got, want, rtol=1e-7)


# ------------------------------------------------------------------ contract, invariance, modes

def _cnn_problem(rng, batch=8):
  _, predict = small_cnn_predict()
  x = rng.uniform(0, 1, (batch, 8, 8, 1)).astype(np.float32)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)
  y[1] = (y[1] + 1) % 10  # one example misclassified already
  return predict, x, y


@pytest.mark.parametrize('norm', NORMS)
def test_contract_determinism_and_batch_invariance(norm, rng):
  predict, x, y = _cnn_problem(rng)
  x_before = x.copy()
  eps = np.full(len(y), 0.02 if norm == 'Linf' else 0.1, np.float32)
  kw = dict(norm=norm, nb_iter=6, n_target_classes=2)
  x_adv, success, min_norm = (v.numpy() for v in fab_targeted(predict, x, y, eps, **kw))
  np.testing.assert_array_equal(x, x_before)
  assert_contract(predict, x, y, eps, x_adv, success, min_norm, norm)
  assert min_norm[1] == 0 and success[1] and np.array_equal(x_adv[1], x[1])
  assert success[np.arange(len(y)) != 1].any() and not success.all()
  again = fab_targeted(predict, x, y, eps, **kw)  # no randomness
  for a, b in zip((x_adv, success, min_norm), again):
    np.testing.assert_array_equal(a, b)
  for i in (1, 4):
    alone = fab_targeted(predict, x[i:i + 1], y[i:i + 1], eps[i:i + 1], **kw)
    np.testing.assert_allclose(alone[2][0], min_norm[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[0][0], x_adv[i], atol=1e-6)
    assert alone[1][0] == success[i]


@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
@pytest.mark.parametrize('norm', NORMS)
def test_eager_function_and_xla_agree_and_trace_once(norm, rng):
  predict, x, y = _cnn_problem(rng)
  eps = 0.02 if norm == 'Linf' else 0.1

  def attack(x, y):  # `fab` runs the same loop: one target, fixed rank
    return fab_targeted(predict, x, y, eps, norm=norm, nb_iter=5, n_target_classes=2)

  eager = attack(tf.constant(x), tf.constant(y))
  graph_fn = tf.function(attack)
  for compiled in (graph_fn(x, y), tf.function(attack, jit_compile=True)(x, y)):
    for a, b in zip(eager, compiled):
      np.testing.assert_allclose(a, b, atol=1e-5)
  graph_fn(tf.constant(np.clip(x + 0.01, 0, 1)), tf.constant(y))
  assert graph_fn.experimental_get_tracing_count() == 1


def test_inside_strategy_run_matches_one_device(rng, two_cpu_strategy):
  strategy = two_cpu_strategy
  with strategy.scope():
    predict, x, y = _cnn_problem(rng)
  kw = dict(norm='L2', nb_iter=5, n_target_classes=2, all_targets=True)
  expected = fab_targeted(predict, x, y, 0.1, **kw)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def run(batch):
    def replica(x, y):
      x_adv, success, min_norm = fab_targeted(predict, x, y, 0.1, **kw)
      return x_adv, tf.cast(success, tf.int32), min_norm  # gather takes no bool
    return [strategy.gather(v, axis=0) for v in strategy.run(replica, args=batch)]

  for a, b in zip(run(batch), expected):
    np.testing.assert_allclose(a, np.asarray(b, np.asarray(a).dtype), atol=1e-6)


# -------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('call, match', [
    (lambda p, x, y: fab(p, x * 255, y, 0.1), r'Inputs must lie in \[0.0, 1.0\]'),
    (lambda p, x, y: fab(p, x, y, -0.1), 'eps must be finite and >= 0'),
    (lambda p, x, y: fab(p, x, y, 0.1, norm='L1'), 'Unknown norm'),
    (lambda p, x, y: fab(p, x, y, 0.1, target_rank=1), r'target_rank must be in \[2, K\]'),
    (lambda p, x, y: fab(p, x, y[:3], 0.1), 'x has 8 examples but y has 3'),
    (lambda p, x, y: fab(p, x, y, 0.1, beta=0.0), 'beta'),
    (lambda p, x, y: fab(p, x, y, 0.1, alpha_max=2.0), 'alpha_max'),
    (lambda p, x, y: fab(p, x, y, 0.1, nb_iter=-1), 'nb_iter'),
    (lambda p, x, y: fab_targeted(p, x, y, 0.1, n_target_classes=0), 'n_target_classes'),
])
def test_bad_input_is_a_clear_value_error_before_the_model_runs(call, match, rng):
  calls = []
  x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
  y = np.zeros(8, np.int32)
  with pytest.raises(ValueError, match=match):
    call(lambda v: calls.append(1) or tf.zeros([tf.shape(v)[0], 10]), x, y)
  assert not calls, 'the error must come before the model is run'


@pytest.mark.parametrize('num_classes, call, match', [
    (1, lambda p, x, y: fab(p, x, y, 0.1), '>= 2 classes'),
    (1, lambda p, x, y: fab_targeted(p, x, y, 0.1), '>= 2 classes'),
    (10, lambda p, x, y: fab(p, x, y, 0.1, target_rank=11), r'target_rank must be in \[2, K = 10'),
])
def test_bad_class_count_or_rank_is_a_value_error(num_classes, call, match, rng):
  x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    call(lambda v: tf.zeros([tf.shape(v)[0], num_classes]), x, np.zeros(8, np.int32))


def test_fab_takes_no_seed(rng):
  """The standard FAB-T has no randomness: a seed would be ignored, so none is accepted."""
  x = rng.uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
  for attack in (fab, fab_targeted):
    with pytest.raises(TypeError, match='seed'):
      attack(lambda v: tf.zeros([tf.shape(v)[0], 10]), x, np.zeros(2, np.int32), 0.1, seed=0)

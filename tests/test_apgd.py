"""APGD / APGD-T: schedule, DLR losses, parity with a NumPy transcription of the reference loop,
analytic margins of linear models, invariants, graph modes, replicas and bad input."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import DIM, IMAGE_SHAPE, LinearProblem
from mma_tf import losses, norms
from mma_tf.attacks import apgd_attack as apgd_lib
from mma_tf.attacks.apgd_attack import apgd, apgd_checkpoints, apgd_schedule, apgd_targeted
from mma_tf.attacks.common import example_seeds

NORMS = ['Linf', 'L2']


class MLP:
  """A tiny tanh network with a hand-written NumPy forward/backward, for the parity test."""

  def __init__(self, num_classes=5, hidden=8, seed=0):
    rng = np.random.RandomState(seed)
    self.w1 = rng.randn(DIM, hidden).astype(np.float32)
    self.b1 = (0.1 * rng.randn(hidden)).astype(np.float32)
    self.w2 = rng.randn(hidden, num_classes).astype(np.float32)
    self.b2 = (0.1 * rng.randn(num_classes)).astype(np.float32)

  def predict(self, x):
    h = tf.tanh(tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), self.w1) + self.b1)
    return tf.matmul(h, self.w2) + self.b2

  def np_forward(self, x):
    h = np.tanh(x.reshape(len(x), -1) @ self.w1 + self.b1)
    return h, h @ self.w2 + self.b2

  def np_input_grad(self, h, dz, shape):
    return (((dz @ self.w2.T) * (1 - h * h)) @ self.w1.T).reshape(shape)

  def data(self, batch, seed=1):
    x = np.random.RandomState(seed).uniform(0.2, 0.8, (batch,) + IMAGE_SHAPE).astype(np.float32)
    return x, np.argmax(self.np_forward(x)[1], 1).astype(np.int32)  # all clean-correct


def np_loss_and_dz(z, y, loss, t=None):
  """Per-example loss and its gradient w.r.t. the logits (docs/autoattack.md 2.1)."""
  r = np.arange(len(z))
  dz = np.zeros_like(z)
  if loss == 'ce':
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz += p
    dz[r, y] -= 1
    return -np.log(p[r, y]), dz
  o = np.argsort(-z, 1, kind='stable')
  top = z[r[:, None], o]
  other = t if loss == 'dlr_targeted' else np.where(o[:, 0] == y, o[:, 1], o[:, 0])
  num = z[r, y] - z[r, other]
  if loss == 'dlr':
    den = top[:, 0] - top[:, 2] + 1e-12
    dz[r, o[:, 2]] -= num / den**2
  else:
    den = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    dz[r, o[:, 2]] -= 0.5 * num / den**2
    dz[r, o[:, 3]] -= 0.5 * num / den**2
  dz[r, y] -= 1 / den
  dz[r, other] += 1 / den
  dz[r, o[:, 0]] += num / den**2
  return -num / den, dz


def reference_run(model, x, y, eps, x0, loss, norm, n_iter, t=None, rho=0.75):
  """A line-by-line NumPy transcription of the reference `attack_single_run` (Linf/L2), with its
  history buffer and wrap-around indexing, started from the given x0."""
  e = eps.reshape((-1,) + (1,) * (x.ndim - 1))

  def l2(v):
    return np.sqrt((v**2).reshape(len(v), -1).sum(1)).reshape(e.shape)

  def project(v):
    if norm == 'Linf':
      return np.clip(np.minimum(np.maximum(v, x - e), x + e), 0, 1)
    return np.clip(x + (v - x) / (l2(v - x) + 1e-12) * np.minimum(e, l2(v - x)), 0, 1)

  def evaluate(point):
    h, z = model.np_forward(point)
    value, dz = np_loss_and_dz(z, y, loss, t)
    return np.argmax(z, 1) == y, value, model.np_input_grad(h, dz, point.shape)

  x_adv = np.clip(x0, 0, 1)
  acc, loss_best, grad = evaluate(x_adv)
  x_best, x_best_adv, grad_best = x_adv.copy(), x_adv.copy(), grad.copy()
  step = 2 * e * np.ones_like(e)
  x_adv_old = x_adv.copy()
  k, n_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(
      0.03 * n_iter), 1)
  loss_steps = np.zeros([n_iter, len(x)], np.float32)
  loss_best_last_check, reduced_last_check, counter3 = loss_best.copy(), np.ones(len(x)), 0
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    if norm == 'Linf':
      x1 = project(x_adv + step * np.sign(grad))
    else:
      x1 = project(x_adv + step * grad / (l2(grad) + 1e-12))
    x_adv = project(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
    pred, y1, grad = evaluate(x_adv)
    acc = np.minimum(acc, pred)
    x_best_adv[~pred] = x_adv[~pred]
    loss_steps[i] = y1
    ind = y1 > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], y1[ind]
    counter3 += 1
    if counter3 == k:
      ups = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(float) for c in range(k))
      no_gain = (1 - reduced_last_check) * (loss_best_last_check >= loss_best)
      fl = np.maximum(ups <= k * rho, no_gain)
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      fl = fl > 0
      step[fl] /= 2
      x_adv[fl], grad[fl] = x_best[fl], grad_best[fl]
      k = max(k - size_decr, n_min)
      counter3 = 0
  return dict(x_out=x_best_adv, fooled=~acc, x_best=x_best, loss_best=loss_best,
              step=step.reshape(-1))


# ------------------------------------------------------------------------------------ schedule

def test_checkpoint_schedule():
  assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert apgd_schedule(100)[1] == [22, 19, 16, 13, 10, 7, 6, 6]
  # N = 20 by hand: first window int(4.4) = 4, shrink by max(int(0.6), 1) = 1, floor
  # max(int(1.2), 1) = 1: windows 4, 3, 2, 1, 1, ...: checks after 4, 7, 9, then every iteration.
  assert apgd_checkpoints(20) == [4, 7, 9] + list(range(10, 21))
  assert apgd_checkpoints(1) == [1] and apgd_checkpoints(0) == []


# -------------------------------------------------------------------------------------- losses

def test_dlr_losses_match_formulas_and_are_shift_scale_invariant(rng):
  z = rng.randn(6, 7).astype(np.float32) * 3
  y = rng.randint(0, 7, 6)
  y[0] = np.argmax(z[0])  # the true class on top: the numerator uses the runner-up
  y[1] = np.argsort(z[1])[-3]
  t = (y + 1 + rng.randint(0, 6, 6)) % 7
  s = np.sort(z, 1)[:, ::-1]
  r = np.arange(6)
  best_other = np.max(np.where(np.eye(7)[y] > 0, -np.inf, z), 1)
  dlr = -(z[r, y] - best_other) / (s[:, 0] - s[:, 2] + 1e-12)
  tdlr = -(z[r, y] - z[r, t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)
  np.testing.assert_allclose(losses.dlr_loss(z, y), dlr, rtol=1e-5)
  np.testing.assert_allclose(losses.targeted_dlr_loss(z, y, t), tdlr, rtol=1e-5)
  assert losses.dlr_loss(z, y).numpy()[0] < 0  # correctly classified: negative
  for a, b in ((2.5, -4.0), (0.1, 7.0)):
    np.testing.assert_allclose(losses.dlr_loss(a * z + b, y), dlr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses.targeted_dlr_loss(a * z + b, y, t), tdlr, rtol=1e-4,
                               atol=1e-5)
  logits = np.array([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 6.0, -2.0]], np.float32)
  np.testing.assert_array_equal(losses.target_by_rank(logits, 1), [1, 2])
  np.testing.assert_array_equal(losses.target_by_rank(logits, 2), [3, 0])
  np.testing.assert_array_equal(losses.target_by_rank(logits, 4), [2, 3])


# ---------------------------------------------------------------- parity with the reference loop

@pytest.mark.parametrize('norm, loss, nb_iter', [
    ('Linf', 'ce', 100), ('L2', 'dlr_targeted', 100), ('Linf', 'dlr', 4)])
def test_single_run_matches_a_transcription_of_the_reference(norm, loss, nb_iter):
  model = MLP()
  x, y = model.data(12)
  eps = np.linspace(0.02, 0.12, 12).astype(np.float32) * (1 if norm == 'Linf' else 5)
  seeds = example_seeds(3, np.arange(12))
  targets = np.argsort(-model.np_forward(x)[1], 1, kind='stable')[:, 2]  # rank 3
  if loss == 'ce':
    loss_fn = lambda z: losses.cross_entropy(z, y)
  elif loss == 'dlr':
    loss_fn = lambda z: losses.dlr_loss(z, y)
  else:
    loss_fn = lambda z: losses.targeted_dlr_loss(z, y, targets)
  direction = apgd_lib._normalize(norm, apgd_lib._random_direction(norm, seeds, tf.constant(x)))
  x0 = np.clip(x + eps[:, None, None, None] * direction.numpy(), 0, 1)
  run = tf.function(lambda: apgd_lib._single_run(model.predict, loss_fn, tf.constant(x), y, eps,
                                                 seeds, norm, nb_iter, 0.75, 0.0, 1.0))
  got = {k: v.numpy() for k, v in run().items()}
  want = reference_run(model, x, y, eps, x0, loss, norm, nb_iter, targets)
  np.testing.assert_array_equal(got['fooled'], want['fooled'])
  # Exact where the point stays robust (the step drives the verdict). On a fooled point the run
  # goes on, and a halving check on two nearly equal losses can go either way with another
  # rounding (seen once with TF's oneDNN kernels on an AVX-512 CPU): within one halving there.
  robust = ~want['fooled']
  np.testing.assert_allclose(got['step'][robust], want['step'][robust], rtol=1e-6)
  ratio = np.log2(got['step'][~robust] / want['step'][~robust])
  assert np.all(np.abs(ratio - np.round(ratio)) < 1e-5) and np.abs(ratio).max() <= 1, ratio
  # Targeted DLR explodes where its denominator gets small (fooled points): there the value is
  # ill-conditioned and float32 rounding moves it by a few percent (2.3% with oneDNN on AVX2,
  # 10% on AVX-512), so exploded losses are only required to explode in both.
  tight = np.abs(want['loss_best']) < 5
  np.testing.assert_allclose(got['loss_best'][tight], want['loss_best'][tight], rtol=1e-4,
                             atol=1e-5)
  exploded = got['loss_best'][~tight], want['loss_best'][~tight]
  assert np.all(np.abs(exploded[0]) >= 5) and np.all(np.sign(exploded[0]) == np.sign(exploded[1]))
  # Untargeted DLR is exactly 1 once the true class ranks 3rd or lower: its gradient is zero up
  # to rounding noise, whose sign then steers Linf steps. Those points are compared by loss only.
  plateau = (want['loss_best'] > 1 - 1e-6) if loss == 'dlr' else np.zeros(12, bool)
  for key in ('x_out', 'x_best'):
    # Per example: most runs agree to float rounding; on a few, a near-zero gradient coordinate
    # takes the other sign late in the run (TF and NumPy round differently) and they drift apart.
    diff = np.abs(got[key] - want[key]).reshape(12, -1).max(1)[~plateau]
    assert np.median(diff) < 1e-5 and diff.max() < 5e-3, (key, diff)
  assert 0 < got['fooled'].sum() < 12, 'the radii should leave some examples robust'
  halvings = np.round(np.log2(2 * eps / got['step']))
  assert halvings.min() >= 0 and halvings.max() >= 1, 'the test must exercise step halving'
  if nb_iter == 4:
    # Windows of 1: C1 compares the first loss with 0 (the reference's zero history row); DLR is
    # negative on clean-correct points, so every example still robust halves at the 1st check.
    assert np.all(halvings[~got['fooled']] >= 1)


# ------------------------------------------------------------------------------ analytic margins

@pytest.mark.parametrize('norm', NORMS)
def test_succeeds_just_above_the_margin_and_fails_just_below(norm):
  """Each example twice in one batch: radius 1.02 x margin and 0.98 x margin (mixed radii)."""
  p = LinearProblem(norm, 10)
  both = lambda v: np.concatenate([v, v])
  x, y, eps = both(p.x), both(p.y), np.concatenate([1.02 * p.margin, 0.98 * p.margin])

  @tf.function
  def attacks():
    # Rank 2 is the class of the margin (LinearProblem): the losses of few-class models too.
    return {
        'apgd-ce': apgd(p.predict, x, y, eps, norm=norm, loss='ce'),
        'apgd-dlr': apgd(p.predict, x, y, eps, norm=norm, loss='dlr'),
        'apgd-t': apgd_targeted(p.predict, x, y, eps, norm=norm),
        'apgd-lm': apgd(p.predict, x, y, eps, norm=norm, loss='lm'),
        'apgd-ce-targeted': apgd(p.predict, x, y, eps, norm=norm, loss='ce_targeted',
                                 target_rank=2),
    }

  n = len(p.y)
  for name, (x_adv, success) in attacks().items():
    x_adv, success = x_adv.numpy(), success.numpy()
    assert success[:n].all() and not p.is_correct(x_adv[:n]).any(), name
    assert not success[n:].any() and p.is_correct(x_adv[n:]).all(), name
    dist = norms.get_norm(norm).norm(x_adv - both(p.x)).numpy()
    assert np.all(dist[:n] <= 1.02 * p.margin * (1 + 1e-6) + 1e-7), name


def test_eot_on_a_deterministic_model_takes_the_same_linf_steps():
  """The mean of equal gradients has their sign: EOT changes nothing on a deterministic model
  (Linf), and each of its passes is a real forward-backward pass."""
  p = LinearProblem('Linf', 10)
  calls = []

  def counted(v):
    calls.append(1)
    return p.predict(v)

  eps = np.float32(np.median(p.margin))
  one = apgd(counted, p.x, p.y, eps, nb_iter=10, seed=3)
  traced_one = len(calls)
  three = apgd(counted, p.x, p.y, eps, nb_iter=10, eot_iter=3, seed=3)
  for a, b in zip(one, three):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Eager: 1 clean pass, then the start and 10 steps, each 1 or 3 passes.
  assert traced_one == 1 + 11 and len(calls) - traced_one == 1 + 3 * 11


# ------------------------------------------------------------------------------------ invariants

def _fixture_batch(model, norm, rng, batch=10):
  x, y = model.data(batch, seed=5)
  eps = rng.uniform(0.01, 0.15, batch).astype(np.float32) * (1 if norm == 'Linf' else 2)
  eps[2] = 0.0                         # radius 0: left alone
  y[3] = (y[3] + 1) % 5                # clean-misclassified: returned as x, success True
  return x, y, eps


@pytest.mark.parametrize('norm', NORMS)
def test_feasible_per_example_and_batch_independent(norm, rng):
  model = MLP()
  x, y, eps = _fixture_batch(model, norm, rng)
  x_before = x.copy()
  spec = [tf.TensorSpec([None] + list(IMAGE_SHAPE)), tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([None]), tf.TensorSpec([None, 2], tf.int64)]
  run = tf.function(lambda x, y, eps, seeds: apgd(model.predict, x, y, eps, norm=norm,
                                                  loss='dlr', nb_iter=20, seed=seeds,
                                                  n_restarts=2 if norm == 'Linf' else 1),
                    input_signature=spec)
  seeds = example_seeds(7, np.arange(len(y)))
  x_adv, success = [v.numpy() for v in run(x, y, eps, seeds)]
  np.testing.assert_array_equal(x, x_before)
  dist = norms.get_norm(norm).norm(x_adv - x).numpy()
  assert np.all(dist <= eps * (1 + 1e-6) + 1e-7) and x_adv.min() >= 0 and x_adv.max() <= 1
  np.testing.assert_array_equal(success, np.argmax(model.predict(x_adv), 1) != y)
  np.testing.assert_array_equal(x_adv[2], x[2])
  np.testing.assert_array_equal(x_adv[3], x[3])
  assert success[3] and not success[2]
  assert 1 < success.sum() < len(y) - 1, 'radii should give a mix of successes and failures'
  # Alone, in a batch and padded: the same result; the same seed: the same result.
  for i in (0, 4, 7):
    alone = run(x[i:i + 1], y[i:i + 1], eps[i:i + 1], seeds[i:i + 1])
    np.testing.assert_allclose(alone[0].numpy()[0], x_adv[i], atol=1e-6)
    assert alone[1].numpy()[0] == success[i]
  pad = lambda v, w: np.concatenate([v, w])
  padded = run(pad(x, x[:3] * 0), pad(y, y[:3]), pad(eps, eps[:3]),
               tf.concat([seeds, example_seeds(8, np.arange(3))], 0))
  np.testing.assert_allclose(padded[0].numpy()[:len(y)], x_adv, atol=1e-6)
  np.testing.assert_array_equal(padded[1].numpy()[:len(y)], success)
  again = run(x, y, eps, seeds)
  np.testing.assert_array_equal(again[0], x_adv)
  other = run(x, y, eps, example_seeds(8, np.arange(len(y))))[0].numpy()
  assert np.abs(other - x_adv).max() > 1e-3, 'another seed starts elsewhere'


def test_targeted_equals_rank_by_rank_with_compaction(rng):
  """The evaluator's route: `apgd(loss='dlr_targeted', target_rank=r)` on the still-robust
  examples only, rank after rank, with their per-example seeds."""
  model = MLP()
  x, y, eps = _fixture_batch(model, 'Linf', rng)
  seeds = example_seeds(5, np.arange(len(y)))
  kw = dict(norm='Linf', nb_iter=10, seed=seeds)
  x_t, s_t = apgd_targeted(model.predict, x, y, eps, n_target_classes=3, **kw)
  x_adv, success = x.copy(), np.argmax(model.np_forward(x)[1], 1) != y
  for rank in (2, 3, 4):
    idx = np.flatnonzero(~success)
    x_r, s_r = apgd(model.predict, x[idx], y[idx], eps[idx], loss='dlr_targeted',
                    target_rank=rank, **dict(kw, seed=tf.gather(seeds, idx)))
    x_adv[idx[s_r.numpy()]] = x_r.numpy()[s_r.numpy()]
    success[idx] |= s_r.numpy()
  np.testing.assert_array_equal(s_t, success)
  np.testing.assert_allclose(x_t, x_adv, atol=1e-6)
  assert 1 < success.sum() < len(y) - 1


@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
def test_eager_function_and_xla_agree():
  model = MLP()
  x, y = model.data(8, seed=2)
  eps_inf = np.linspace(0.03, 0.15, 8).astype(np.float32)

  def attack(x, y, seed):
    a = apgd_targeted(model.predict, x, y, eps_inf, norm='Linf', nb_iter=8, n_target_classes=2,
                      seed=seed)
    b = apgd(model.predict, x, y, 5 * eps_inf, norm='L2', loss='ce', nb_iter=8, seed=seed)
    return a + b

  seed = tf.constant([1, 2], tf.int64)
  eager = attack(tf.constant(x), tf.constant(y), seed)
  for compiled in (tf.function(attack)(x, y, seed), tf.function(attack, jit_compile=True)(x, y,
                                                                                         seed)):
    for k in (0, 2):
      np.testing.assert_allclose(eager[k], compiled[k], atol=1e-4)
      np.testing.assert_array_equal(eager[k + 1], compiled[k + 1])
  assert 0 < eager[1].numpy().sum() < 8 and 0 < eager[3].numpy().sum() < 8


def test_inside_strategy_run_matches_one_device(two_cpu_strategy):
  strategy = two_cpu_strategy
  model = MLP()
  x, y = model.data(8, seed=3)
  eps = np.linspace(0.03, 0.15, 8).astype(np.float32)
  index = np.arange(8)
  def attack(x, y, eps, index):
    x_adv, success = apgd(model.predict, x, y, eps, loss='dlr', nb_iter=10,
                          seed=example_seeds(9, index))
    return x_adv, tf.cast(success, tf.int32)  # strategy.gather takes no bools

  expected = attack(x, y, eps, index)
  dataset = tf.data.Dataset.from_tensor_slices((x, y, eps, index)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def run(batch):
    result = strategy.run(attack, args=batch)
    return [strategy.gather(v, axis=0) for v in result]

  got = run(batch)
  np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
  np.testing.assert_array_equal(got[1], expected[1])


# -------------------------------------------------------------------------------------- bad input

def _counting_model(num_classes, calls):
  return lambda v: calls.append(1) or tf.zeros([tf.shape(v)[0], num_classes]) + tf.range(
      num_classes, dtype=tf.float32)


@pytest.mark.parametrize('classes, call, match', [
    (2, lambda p, x, y: apgd(p, x, y, 0.1, loss='dlr'), "at least 3 classes.*loss='ce'"),
    (3, lambda p, x, y: apgd(p, x, y, 0.1, loss='dlr_targeted', target_rank=2),
     "at least 4 classes.*loss='ce_targeted'"),
    (3, lambda p, x, y: apgd(p, x, y, 0.1, loss='ce_targeted', target_rank=4),
     r'target_rank must lie in \[2, 3\]'),
    (3, lambda p, x, y: apgd_targeted(p, x, y, 0.1), 'at least 4 classes'),
    (10, lambda p, x, y: apgd(p, x, y, 0.1, loss='dlr_targeted', target_rank=11),
     r'target_rank must lie in \[2, 10\]'),
    (10, lambda p, x, y: apgd(p, x, y, 0.1, loss='dlr_targeted', target_rank=1),
     r'target_rank must lie in \[2, 10\]'),
])
def test_too_few_classes_or_bad_rank(classes, call, match, rng):
  calls = []
  x = rng.uniform(0, 1, (4,) + IMAGE_SHAPE).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    call(_counting_model(classes, calls), x, np.zeros(4, np.int32))
  assert len(calls) <= 1, 'at most the clean forward pass may run before the error'


@pytest.mark.parametrize('call, match', [
    (lambda p, x, y: apgd(p, x * 255, y, 0.1), r'Inputs must lie in \[0.0, 1.0\]'),
    (lambda p, x, y: apgd_targeted(p, x - 0.5, y, 0.1), r'Inputs must lie in \[0.0, 1.0\]'),
    (lambda p, x, y: apgd(p, x, y, -0.1), 'eps must be finite and >= 0'),
    (lambda p, x, y: apgd(p, x, y, 0.1, loss='dlr_targeted'), 'needs target_rank'),
    (lambda p, x, y: apgd(p, x, y, 0.1, target_rank=2), 'only applies to'),
    (lambda p, x, y: apgd(p, x, y, 0.1, loss='cw'), 'Unknown APGD loss'),
    (lambda p, x, y: apgd(p, x, y, 0.1, norm='L1'), 'Unknown norm'),
    (lambda p, x, y: apgd(p, x, y, 0.1, n_restarts=0), 'n_restarts must be'),
    (lambda p, x, y: apgd(p, x, y, 0.1, eot_iter=0), 'eot_iter must be an int >= 1'),
    (lambda p, x, y: apgd(p, x, y, 0.1, loss='ce_targeted'), 'needs target_rank'),
    (lambda p, x, y: apgd_targeted(p, x, y, 0.1, n_target_classes=0), 'n_target_classes'),
])
def test_bad_input_is_a_clear_value_error(call, match, rng):
  calls = []
  x = rng.uniform(0, 1, (4,) + IMAGE_SHAPE).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    call(_counting_model(10, calls), x, np.zeros(4, np.int32))
  assert not calls, 'the error must come before the model is run'

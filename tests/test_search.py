"""AN-PGD's opt-in boundary search (--search=illinois) and the passes of a training step: analytic
margins in few counted forwards, the bracket on a nonlinear model, the flag's rules, and replica
parity; OMMA's clean pass without a backward pass is the same step."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, small_cnn_predict, tiny_config, warm_start
from mma_tf import configs, losses, objectives
from mma_tf import trainer as trainer_lib
from mma_tf.attacks import anpgd, example_seeds
from mma_tf.attacks.anpgd_attack import OVERSHOOT, illinois_search

QUIET = lambda m: None


class Counted:
  """A predict function that counts its calls (eager: one call is one forward of the batch)."""

  def __init__(self, predict):
    self.predict, self.calls = predict, 0

  def __call__(self, x):
    self.calls += 1
    return self.predict(x)


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
@pytest.mark.parametrize('num_classes', [2, 10])
def test_illinois_finds_the_analytic_margin_in_3_counted_forwards(norm, num_classes):
  """On LinearProblem the margin along the PGD direction is linear in the scale: from below
  (eps0 = half the margin) and from above (1.5x), 3 forwards after the one at the PGD point give
  the margin to float precision, where the released 10-step bisection is within maxeps / 2^10."""
  p = LinearProblem(norm, num_classes)
  eps0 = np.where(np.arange(len(p.y)) % 2 == 0, 0.5, 1.5) * p.margin
  search = Counted(p.predict)
  _, eps_hat = anpgd(p.predict, p.x, p.y, eps0, maxeps=0.5, norm=norm, nb_iter=40,
                     rand_init=False, search='illinois', num_search_steps=3,
                     search_predict=search, zero_margin=losses.soft_logit_margin(
                         p.predict(tf.constant(p.x)), p.y))
  assert search.calls == 1 + 3  # the PGD point, then the 3 search forwards
  # Linf PGD's sign steps end a hair off the optimal vertex, so its direction's margin is a
  # hair above the analytic one; bisection's error is ~15x this tolerance.
  np.testing.assert_allclose(eps_hat, p.margin, atol=1e-4 if norm == 'Linf' else 1e-6)
  _, bisected = anpgd(p.predict, p.x, p.y, eps0, maxeps=0.5, norm=norm, nb_iter=40,
                      rand_init=False)
  assert np.abs(bisected - p.margin).max() > 5 * np.abs(eps_hat - p.margin).max()


def test_without_a_zero_margin_illinois_computes_it_with_one_more_forward():
  p = LinearProblem('L2', 2)
  search = Counted(p.predict)
  _, eps_hat = anpgd(p.predict, p.x, p.y, 0.5 * p.margin, maxeps=0.5, norm='L2', nb_iter=20,
                     rand_init=False, search='illinois', num_search_steps=3,
                     search_predict=search)
  assert search.calls == 1 + 1 + 3
  np.testing.assert_allclose(eps_hat, p.margin, atol=1e-6)


def test_illinois_beyond_maxeps_and_without_released_quirks():
  """Never successful up to maxeps: the scale is maxeps (out of the hinge, as the released
  search's maxeps - (maxeps - eps0) / 2^10). released_quirks=False: the smallest scale known to
  succeed, so the returned point is on or past the boundary: on it where the exact chord's root
  rounds to a success, else (regula falsi stalls within float precision of the root) the first
  overshoot, 10% past it."""
  p = LinearProblem('Linf', 2)
  eps0 = np.full(len(p.y), 0.005, np.float32)
  _, eps_hat = anpgd(p.predict, p.x, p.y, eps0, maxeps=0.009, nb_iter=10, search='illinois',
                     num_search_steps=3)  # every margin is above 0.01
  np.testing.assert_array_equal(eps_hat, np.full(len(p.y), 0.009, np.float32))
  x_adv, eps_hat = anpgd(p.predict, p.x, p.y, eps0, maxeps=0.5, nb_iter=10, search='illinois',
                         num_search_steps=3, released_quirks=False)
  assert np.all(losses.soft_logit_margin(p.predict(x_adv), p.y).numpy() >= 0)
  # Which examples' roots round to a success depends on the CPU's kernels (one of 16 did not on
  # an AVX-512 CPU, none on an AVX2 one); most do.
  on_boundary = np.abs(eps_hat - p.margin) <= 1e-4
  overshoot = eps0 + (1 + OVERSHOOT) * (p.margin - eps0)
  assert np.all(on_boundary | (np.abs(eps_hat - overshoot) <= 1e-4)), eps_hat - p.margin
  assert on_boundary.sum() >= 12


@pytest.mark.parametrize('first_succeeds', [False, True])
def test_illinois_keeps_a_bracket_of_the_boundary_on_a_nonlinear_model(first_succeeds, rng):
  """A tanh CNN: the margin along the ray is not linear. Whatever the shape, the returned lower
  end fails, the upper end succeeds, and the estimate lies between them (the logit margin: the
  search takes any margin that is < 0 at the start)."""
  _, predict = small_cnn_predict()
  x = rng.uniform(0.2, 0.8, (24, 8, 8, 1)).astype(np.float32)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)
  u = np.sign(rng.randn(*x.shape)).astype(np.float32)
  margin_fn = lambda images: losses.logit_margin(predict(images), y)
  at = lambda scale: margin_fn(tf.clip_by_value(x + scale[:, None, None, None] * u, 0, 1)).numpy()
  zero = margin_fn(tf.constant(x))
  first = np.full(24, 0.8 if first_succeeds else 0.01, np.float32)
  estimate, lower, upper = illinois_search(margin_fn, tf.constant(x), tf.constant(u),
                                           tf.constant(first), at(first), zero, 1.0, 4)
  bracketed = estimate.numpy() < 1.0
  assert bracketed.sum() >= 12
  lower, upper, estimate = lower.numpy(), upper.numpy(), estimate.numpy()
  assert np.all(at(lower)[bracketed] < 0) and np.all(at(upper)[bracketed] >= 0)
  assert np.all((lower <= estimate) & (estimate <= upper))


# ------------------------------------------------------------------------------ the flag
def test_the_search_flag_defaults_its_forwards_and_keeps_the_validation_bisection():
  c = configs.resolve('mnist', 'Linf', dict(search='illinois'))
  assert (c.num_search_steps, c.validation_search_steps) == (configs.ILLINOIS_SEARCH_STEPS, 10)
  c = configs.resolve('mnist', 'Linf', dict(search='illinois', num_search_steps=5))
  assert (c.num_search_steps, c.validation_search_steps) == (5, 10)
  # A recorded configuration rebuilds as it was (the switch's defaults do not apply again).
  assert configs.build(configs.flat_record(c.to_dict())) == c
  c = configs.resolve('mnist', 'Linf', dict(search='illinois', test_num_search_steps=7))
  assert (c.num_search_steps, c.validation_search_steps) == (3, 7)
  default = configs.resolve('mnist', 'Linf')
  assert (default.search, default.num_search_steps, default.validation_search_steps) == (
      'bisection', 10, 10)
  assert '"search": "illinois"' in configs.resolve('mnist', 'Linf',
                                                   dict(search='illinois')).to_json()
  with pytest.raises(ValueError, match='--search has no effect here.*pgd_at'):
    configs.resolve('mnist', 'Linf', dict(objective='pgd_at', search='illinois'))
  with pytest.raises(ValueError, match='--search must be one of'):
    configs.resolve('mnist', 'Linf', dict(search='secant')).validate()
  with pytest.raises(ValueError, match="zero_margin is the illinois search's"):
    p = LinearProblem('Linf', 2)
    anpgd(p.predict, p.x, p.y, 0.1, maxeps=0.5, zero_margin=np.zeros(len(p.y), np.float32))


def test_a_config_json_without_the_search_resumes_as_bisection():
  saved = configs.resolve('mnist_5k', 'Linf').to_dict()
  del saved['settings']['search']  # written before the field existed
  assert configs.resume_conflicts(saved, configs.resolve('mnist_5k', 'Linf')) == []
  conflicts = configs.resume_conflicts(saved, configs.resolve('mnist_5k', 'Linf',
                                                              dict(search='illinois')))
  assert any(c.startswith('search:') for c in conflicts)


def _search_config(**overrides):
  return tiny_config(**dict(dict(model='small_cnn', batch_size=16, optimizer='sgd',
                                 learning_rate=0.05, momentum=0.9, search='illinois'),
                            **overrides))


# With the memory (CI: --runslow): the default tier proves the memory on two replicas
# (test_perturbation_memory.py::test_two_replicas_keep_the_memory_of_one_device).
@pytest.mark.parametrize('memory', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_replicas_train_as_one_device_with_the_illinois_search(memory, data8, warm_weights,
                                                                   tmp_path, two_cpu_strategy):
  config = _search_config(perturbation_memory=memory, nb_iter=2)
  one = trainer_lib.Trainer(config, str(tmp_path / 'one'), data=data8, log=QUIET)
  two = trainer_lib.Trainer(config, str(tmp_path / 'two'), two_cpu_strategy, data=data8,
                            log=QUIET)
  warm_start([one, two], warm_weights)
  outs = []
  for trainer in (one, two):
    iterator = iter(trainer.task.train_batches(0))
    outs.append([trainer.task.train_step(iterator) for _ in range(3)])
  for a, b in zip(*outs):
    np.testing.assert_allclose(float(a['total_loss']), float(b['total_loss']), rtol=1e-5)
  eps_one, eps_two = one.task.eps_memory.numpy(), two.task.eps_memory.numpy()
  assert np.count_nonzero(eps_one) > 16
  np.testing.assert_allclose(eps_one, eps_two, atol=1e-5)
  for a, b in zip(one.task.model.get_weights(), two.task.model.get_weights()):
    np.testing.assert_allclose(a, b, atol=config.learning_rate * 1e-5)


# ------------------------------------------------------------------------------ the passes
class RecordedCleanPassMMA(objectives.OBJECTIVES['omma']):
  """OMMA as it was: the clean pass recorded on the tape although its loss has weight 0."""

  def clean_pass(self, model, x, stop_recording):
    return self.logits(model, x, True)


def test_ommas_clean_pass_without_a_backward_pass_is_the_same_step(data8, warm_weights,
                                                                   tmp_path):
  config = tiny_config(objective='omma', model='small_cnn', batch_size=16, nb_iter=2)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  warm_start([trainer], warm_weights)
  model = trainer.task.model
  batch = next(iter(trainer.task.train_batches(0)))
  x, y = batch['image'], batch['label']
  seeds = example_seeds([0, 1], batch['index'])
  eps0 = np.zeros(len(y), np.float32)
  grads = []
  for objective in (objectives.build_objective(config), RecordedCleanPassMMA(config)):
    with tf.GradientTape() as tape:
      out = objective(model, x, y, eps0, seeds, tape.stop_recording)
      loss = tf.reduce_mean(out.loss)
    grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
  assert any(np.abs(g).max() > 0 for g in grads[0])
  for a, b in zip(*grads):
    np.testing.assert_array_equal(a, b)

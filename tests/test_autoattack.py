"""The AutoAttack ensemble in the evaluator: analytic curves, worst-case accounting, invariance to
batching and devices, gradient masking caught by Square, custom attacks, bad input."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, radii_between, small_cnn_predict
from mma_tf import evaluation
from mma_tf.attacks.registry import ATTACKS, Attack, register

# Small budgets keep the tests fast; the analytic problems need no more.
QUICK = dict(apgd_nb_iter=20, fab_nb_iter=20, n_target_classes=3, square_queries=300,
             margin_estimates=())


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_ensemble_matches_the_analytic_curve_of_a_linear_model(norm):
  p = LinearProblem(norm, 10, batch=16, max_margin=0.3 if norm == 'Linf' else 0.8)
  eps = radii_between(p.margin)
  config = evaluation.EvalConfig(norm=norm, eps=eps, batch_size=16, **QUICK)
  results, per_example = evaluation.evaluate(p.predict, p.x, p.y, config)
  aa = results['protocols']['autoattack']
  assert aa['attacks'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  for e in eps:
    assert results['robust_acc'][f'{e:g}'] == pytest.approx(np.mean(p.margin > e))
  # On a linear model the first attack already finds every breakable point.
  broken_by = per_example['autoattack_broken_by']
  assert set(np.unique(broken_by)) <= {-1, 0}
  # The reported perturbation norm of every broken point lies between its margin and eps.
  for e_i, e in enumerate(eps):
    hit = broken_by[e_i] == 0
    d = per_example['autoattack_adv_norm'][e_i][hit]
    assert np.all(d <= e * (1 + 1e-5)) and np.all(d >= p.margin[hit] * (1 - 1e-4))


def _random_points(predict, n, rng, shape=(8, 8, 1)):
  x = rng.uniform(0, 1, (n,) + shape).astype(np.float32)
  return x, np.argmax(predict(x).numpy(), 1).astype(np.int32)  # all clean-correct


def test_ensemble_is_the_pointwise_worst_case(rng):
  _, predict = small_cnn_predict()
  x, y = _random_points(predict, 24, rng)
  eps = (0.01, 0.03)
  base = dict(norm='Linf', eps=eps, batch_size=24, nb_iter=10, nb_restart=2, rel_step=0.25,
              **QUICK)
  both, per_example = evaluation.evaluate(predict, x, y, evaluation.EvalConfig(protocol='all',
                                                                               **base))
  singles = {}
  for name in ('apgd-ce', 'apgd-t', 'fab-t', 'square', 'pgd'):
    r, pe = evaluation.evaluate(predict, x, y, evaluation.EvalConfig(attacks=(name,), **base))
    singles[name] = pe['robust']
  aa = per_example['autoattack_robust']
  # Robust only where every attack failed, and compaction changes nothing: each attack gives a
  # point the same answer whether it runs alone or on what the earlier attacks left.
  np.testing.assert_array_equal(aa, np.logical_and.reduce([singles[n]
                                                           for n in evaluation.AUTOATTACK]))
  assert np.array_equal(per_example['paper_robust'], singles['pgd'])
  assert np.array_equal(per_example['robust'], aa & per_example['paper_robust'])
  for key in both['robust_acc']:
    assert both['robust_acc'][key] <= both['protocols']['paper']['robust_acc'][key]
    assert both['robust_acc'][key] <= both['protocols']['autoattack']['robust_acc'][key]
    after = both['protocols']['autoattack']['acc_after'][key]
    accs = [after[a] for a in evaluation.AUTOATTACK]
    assert accs == sorted(accs, reverse=True)  # robust flags only go from true to false
  assert both['robust_acc']['0.03'] < 1  # the attacks did something


def test_results_do_not_depend_on_batch_size_or_devices(rng, two_cpu_strategy):
  _, predict = small_cnn_predict()
  x, y = _random_points(predict, 20, rng)
  base = dict(norm='L2', eps=(0.2, 0.5), **dict(QUICK, margin_estimates=('anpgd', 'fab')))
  runs = [evaluation.evaluate(predict, x, y, evaluation.EvalConfig(batch_size=bs, **base),
                              strategy=strategy)[1]
          for bs, strategy in ((20, None), (8, None), (8, two_cpu_strategy))]
  for other in runs[1:]:
    for key in ('robust', 'autoattack_broken_by'):
      np.testing.assert_array_equal(runs[0][key], other[key], err_msg=key)
    for key in ('margin_anpgd', 'margin_fab'):  # float rounding differs with the batch shape
      np.testing.assert_allclose(runs[0][key], other[key], rtol=1e-5, err_msg=key)
  assert 0 < runs[0]['robust'].mean() < 1


def test_xla_on_two_devices_gives_the_default_result(rng, two_cpu_strategy):
  with two_cpu_strategy.scope():  # mirrored weights, as the CLI loads a SavedModel
    _, predict = small_cnn_predict()
  x, y = _random_points(predict, 16, rng)
  base = dict(norm='Linf', eps=(0.03,), batch_size=8, **dict(
      QUICK, apgd_nb_iter=10, fab_nb_iter=5, n_target_classes=2, square_queries=50,
      margin_estimates=('anpgd',), margin_nb_iter=5, search_steps=3))
  default = evaluation.evaluate(predict, x, y, evaluation.EvalConfig(**base))[1]
  xla = evaluation.evaluate(predict, x, y, evaluation.EvalConfig(jit_compile=True, **base),
                            strategy=two_cpu_strategy)[1]
  np.testing.assert_array_equal(default['robust'], xla['robust'])
  np.testing.assert_allclose(default['margin_anpgd'], xla['margin_anpgd'], rtol=1e-5)
  assert 0 < default['robust'].mean() < 1


def test_square_breaks_masked_gradients_and_the_report_says_so():
  p = LinearProblem('Linf', 10, batch=12)
  masked = lambda images: p.predict(tf.stop_gradient(images))  # zero input gradients
  eps = (float(np.max(p.margin) * 1.05),)  # every point is breakable
  config = evaluation.EvalConfig(norm='Linf', eps=eps, batch_size=12,
                                 **dict(QUICK, square_queries=1000))
  results, per_example = evaluation.evaluate(masked, p.x, p.y, config)
  after = results['protocols']['autoattack']['acc_after'][f'{eps[0]:g}']
  assert after['apgd-ce'] == after['apgd-t'] == after['fab-t'] == 1.0  # blind gradient attacks
  assert after['square'] == 0.0
  warnings = ' '.join(results['sanity']['warnings'])
  assert 'Square (no gradients) broke 100.0%' in warnings
  assert 'all-zero input gradient' in warnings


@dataclasses.dataclass
class _OutsideTheBall(Attack):
  """A broken attack: steps twice the radius toward the boundary."""

  def run_stage(self, predict, x, y, eps, seeds, stage):
    x_adv = tf.clip_by_value(x + 2 * eps[:, None, None, None], 0.0, 1.0)
    return x_adv, tf.ones_like(y, tf.bool)


def test_a_new_attack_is_one_registration_and_its_points_are_checked():
  if 'test-outside-the-ball' not in ATTACKS:
    register('test-outside-the-ball')(_OutsideTheBall)
  p = LinearProblem('Linf', 10, batch=8)
  config = evaluation.EvalConfig(eps=(0.1,), attacks=('test-outside-the-ball',), batch_size=8,
                                 margin_estimates=())
  with pytest.raises(RuntimeError, match='outside the Linf ball of radius 0.1'):
    evaluation.evaluate(p.predict, p.x, p.y, config)


def test_bad_input_is_refused_before_any_attack():
  p = LinearProblem('Linf', 3, batch=8)
  with pytest.raises(ValueError, match='apgd-t needs a classifier with at least 4 classes'):
    evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(eps=(0.1,), **QUICK))
  p10 = LinearProblem('Linf', 10, batch=8)
  with pytest.raises(ValueError, match='cannot take images of shape'):
    evaluation.evaluate(p10.predict, np.zeros((8, 3, 3, 1), np.float32), p10.y,
                        evaluation.EvalConfig(eps=(0.1,), **QUICK))
  with pytest.raises(ValueError, match=r'Labels must lie in \[0, 10\)'):
    evaluation.evaluate(p10.predict, p10.x, p10.y + 10, evaluation.EvalConfig(eps=(0.1,),
                                                                             **QUICK))
  with pytest.raises(ValueError, match='Inputs must lie in'):
    evaluation.evaluate(p10.predict, p10.x * 3, p10.y, evaluation.EvalConfig(eps=(0.1,), **QUICK))

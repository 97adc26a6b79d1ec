"""The AutoAttack ensemble in the evaluator: analytic curves, worst-case accounting, invariance to
batching and devices, few classes, the rand version, gradient masking caught by Square (and only
above its threshold), what counts as standard, custom attacks, bad input."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, NoisyLinearProblem, radii_between, small_cnn_predict
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
  both, per_example = evaluation.evaluate(
      predict, x, y, evaluation.EvalConfig(protocol='autoattack,paper', **base))
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


# Slow (CI: --runslow): two whole ensembles with two margin estimates, one on two replicas. The
# default tier proves each attack's batch invariance and strategy parity (test_apgd.py,
# test_fab.py, test_attacks.py, test_square.py: *batch*, *inside_strategy_run*).
@pytest.mark.slow
def test_results_do_not_depend_on_batch_size_or_devices(rng, two_cpu_strategy):
  _, predict = small_cnn_predict()
  x, y = _random_points(predict, 20, rng)
  base = dict(norm='L2', eps=(0.2, 0.5), **dict(QUICK, margin_estimates=('anpgd', 'fab')))
  # One batch of 20 on one device against batches of 8, 8 and 4 split over two replicas.
  one, other = [evaluation.evaluate(predict, x, y, evaluation.EvalConfig(batch_size=bs, **base),
                                    strategy=strategy)[1]
                for bs, strategy in ((20, None), (8, two_cpu_strategy))]
  for key in ('robust', 'autoattack_broken_by'):
    np.testing.assert_array_equal(one[key], other[key], err_msg=key)
  for key in ('margin_anpgd', 'margin_fab'):  # float rounding differs with the batch shape
    np.testing.assert_allclose(one[key], other[key], rtol=1e-5, err_msg=key)
  assert 0 < one['robust'].mean() < 1


@pytest.mark.slow  # XLA-compiles every attack for each of two replicas (CI: --runslow)
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
  assert 'Square (no gradients) broke 12 of the 12 points the gradient attacks left robust' \
      in warnings
  assert 'all-zero input gradient' in warnings


def _partly_masked(p, hidden):
  """(predict, images): p's problem with a second channel marking the examples at `hidden` (1,
  else 0), which no eps < 0.5 can flip; the model ignores it, but gives marked examples zero
  input gradients."""
  marker = np.zeros_like(p.x)
  marker[hidden] = 1
  def predict(images):
    marked = tf.reduce_mean(images[..., 1], axis=[1, 2]) > 0.5
    first = images[..., :1]
    return p.predict(tf.where(marked[:, None, None, None], tf.stop_gradient(first), first))
  return predict, np.concatenate([p.x, marker], -1)


@pytest.mark.parametrize('masked_breakable', [5, 1])
def test_square_warning_counts_the_points_left_robust_and_has_a_threshold(masked_breakable):
  """Square's share is of the points the gradient attacks left robust (not of all points), and
  one point Square adds (what ordinary models show) stays below the threshold."""
  p = LinearProblem('Linf', 10, batch=16)
  eps = float(np.median(p.margin))
  # 8 points within eps, 8 robust; the gradient attacks cannot see the hidden ones, Square can.
  hidden = np.sort(np.argsort(p.margin)[:masked_breakable])
  config = evaluation.EvalConfig(norm='Linf', eps=(eps,), batch_size=16,
                                 **dict(QUICK, square_queries=1000))
  predict, x = _partly_masked(p, hidden)
  results, _ = evaluation.evaluate(predict, x, p.y, config)
  square = results['sanity']['square']['autoattack'][f'{eps:g}']
  assert square == {'broke': masked_breakable, 'indices': hidden.tolist(),
                    'left_robust': 8 + masked_breakable}
  warnings = ' '.join(results['sanity']['warnings'])
  if masked_breakable == 5:
    assert (f'broke 5 of the 13 points the gradient attacks left robust (38.5%; threshold: more '
            f'than {evaluation.sanity.SQUARE_SHARE:.0%} and at least '
            f'{evaluation.sanity.SQUARE_MIN_POINTS} points)') in warnings
  else:
    assert 'Square' not in warnings, warnings


# Slow (CI: --runslow): the default tier runs the same adaptions on two classes through the CLI
# (test_evaluation.py::test_cli_evaluates_a_two_class_model).
@pytest.mark.slow
@pytest.mark.parametrize('num_classes', [2, 3])
def test_few_classes_run_the_adapted_ensemble_and_say_so(num_classes):
  p = LinearProblem('Linf', num_classes, batch=12)
  eps = radii_between(p.margin, 2)
  log = []
  results, _ = evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(
      norm='Linf', eps=eps, batch_size=12, **QUICK), progress=log.append)
  for e in eps:
    assert results['robust_acc'][f'{e:g}'] == pytest.approx(np.mean(p.margin > e))
  aa = results['protocols']['autoattack']
  targets = '1 target class (the other one)' if num_classes == 2 else \
      '2 target classes (all the others)'
  for change in ("apgd-t: targeted cross-entropy (the reference code's ce-targeted loss) instead "
                 'of targeted DLR, which needs 4 classes', f'apgd-t: {targets} instead of 3',
                 f'fab-t: {targets} instead of 3'):
    assert change in aa['changes']
    assert any(change in line for line in log)  # the console says it before the attacks run
    assert change in evaluation.markdown_table(results, 'few classes')
  assert aa['label'] == 'AutoAttack-like (not standard AutoAttack)'
  assert aa['attack_config'][1].startswith('apgd-t(nb_iter=20, n_target_classes=3, '
                                           'loss=ce_targeted')
  assert not results['standard_autoattack']


def test_standard_means_the_standard_attacks_at_standard_budgets_unchanged():
  assert evaluation.EvalConfig().is_standard_autoattack()
  assert evaluation.EvalConfig(protocol='all').is_standard_autoattack()
  for kw in (dict(protocol='paper'), dict(protocol='rand'), dict(attacks=('apgd-ce',)),
             dict(attacks=evaluation.AUTOATTACK), dict(apgd_nb_iter=99), dict(eot_iter=2),
             dict(square_queries=50)):
    assert not evaluation.EvalConfig(**kw).is_standard_autoattack(), kw
  # Full budgets stay cheap when APGD-CE breaks every point: the later attacks have nothing left.
  for num_classes in (10, 3):
    p = LinearProblem('Linf', num_classes, batch=6)
    config = evaluation.EvalConfig(eps=(float(p.margin.max() * 1.1),), batch_size=6,
                                   margin_estimates=())
    results, _ = evaluation.evaluate(p.predict, p.x, p.y, config)
    assert results['robust_acc'] == {f'{config.eps[0]:g}': 0.0}
    assert results['standard_autoattack'] == (num_classes == 10)
    assert results['protocols']['autoattack']['label'] == (
        'standard AutoAttack' if num_classes == 10 else
        'AutoAttack-like (not standard AutoAttack)')
  custom, _ = evaluation.evaluate(p.predict, p.x, p.y, dataclasses.replace(
      config, attacks=('apgd-ce',)))
  assert not custom['standard_autoattack']
  assert 'a custom attack list (not standard AutoAttack)' in evaluation.markdown_table(custom, 'c')


def test_rand_version_finds_with_eot_what_single_draws_miss():
  """A model with randomness at inference whose single-call gradients are noise: the rand
  version's EOT attacks break the points within eps, single-draw APGD none."""
  tf.random.set_seed(0)  # the model's own noise
  p = NoisyLinearProblem('Linf', 10, batch=12)
  m = np.sort(p.margin)
  eps = (float(m[6] + m[7]) / 2,)  # 7 of 12 points within eps; the nearest margins 3.5% away
  base = dict(norm='Linf', eps=eps, protocol='rand', apgd_nb_iter=10, batch_size=12,
              margin_estimates=())
  truth = np.mean(p.margin > eps[0])
  eot, _ = evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(**base))
  single, _ = evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(eot_iter=1, **base))
  rand = eot['protocols']['rand']
  assert rand['attacks'] == ['apgd-ce', 'apgd-dlr']
  assert all('eot_iter=20' in c for c in rand['attack_config'])
  assert rand['changes'] == ['10 APGD iterations instead of 100']
  # The noise moves logits a little: a point close to eps may go either way at the recount.
  assert eot['robust_acc'][f'{eps[0]:g}'] <= truth + 1 / 12
  assert single['robust_acc'][f'{eps[0]:g}'] >= truth + 4 / 12
  assert not any("protocol='rand'" in w for w in eot['sanity']['warnings'])
  # Any other protocol: the randomness check recommends the rand version by name.
  paper, _ = evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(
      norm='Linf', eps=eps, protocol='paper', nb_iter=1, nb_restart=1, batch_size=12,
      margin_estimates=()))
  assert any("AutoAttack's rand version (APGD with EOT): protocol='rand'" in w
             for w in paper['sanity']['warnings'])


def _evaluate_registered(name, attack_class):
  """evaluate() with only `attack_class`, registered as `name`, at Linf 0.1 on 8 linear points."""
  if name not in ATTACKS:
    register(name)(attack_class)
  p = LinearProblem('Linf', 10, batch=8)
  config = evaluation.EvalConfig(eps=(0.1,), attacks=(name,), batch_size=8, margin_estimates=())
  return evaluation.evaluate(p.predict, p.x, p.y, config)


@dataclasses.dataclass
class _OutsideTheBall(Attack):
  """A broken attack: steps twice the radius toward the boundary."""

  def run_stage(self, predict, x, y, eps, seeds, stage):
    x_adv = tf.clip_by_value(x + 2 * eps[:, None, None, None], 0.0, 1.0)
    return x_adv, tf.ones_like(y, tf.bool)


def test_a_new_attack_is_one_registration_and_its_points_are_checked():
  with pytest.raises(RuntimeError, match='outside the Linf ball of radius 0.1'):
    _evaluate_registered('test-outside-the-ball', _OutsideTheBall)


@dataclasses.dataclass
class _ClaimsEverything(Attack):
  """A lying attack: returns the clean point and claims success."""

  def run_stage(self, predict, x, y, eps, seeds, stage):
    return x, tf.ones_like(y, tf.bool)


def test_an_attack_that_claims_success_on_a_correct_point_breaks_nothing():
  results, per_example = _evaluate_registered('test-claims-everything', _ClaimsEverything)
  assert results['robust_acc'] == {'0.1': 1.0} and per_example['robust'].all()
  assert results['protocols']['custom']['unconfirmed'] == {'0.1': {'test-claims-everything': 8}}
  assert any('test-claims-everything claimed 8 success(es) that a fresh forward pass did not '
             'confirm' in w for w in results['sanity']['warnings'])


@dataclasses.dataclass
class _NeedsFiveClasses(Attack):
  min_classes = 5


def test_bad_input_is_refused_before_any_attack():
  if 'test-needs-five-classes' not in ATTACKS:
    register('test-needs-five-classes')(_NeedsFiveClasses)
  p = LinearProblem('Linf', 3, batch=8)
  # The Python API names its arguments, not the command line's flags.
  with pytest.raises(ValueError, match=r'at least 5 classes; this one has 3\. Remove it from '
                     r'attacks\.$'):
    evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(
        eps=(0.1,), attacks=('test-needs-five-classes',), **QUICK))
  with pytest.raises(ValueError, match=r'1 logit per example.*return \[0, z\]'):
    evaluation.evaluate(lambda v: p.predict(v)[:, :1], p.x, p.y * 0,
                        evaluation.EvalConfig(eps=(0.1,), **QUICK))
  with pytest.raises(ValueError, match=r'^apgd_nb_iter must be >= 1'):
    evaluation.EvalConfig(apgd_nb_iter=0).validate((4, 5, 1))
  p10 = LinearProblem('Linf', 10, batch=8)
  with pytest.raises(ValueError, match='cannot take images of shape'):
    evaluation.evaluate(p10.predict, np.zeros((8, 3, 3, 1), np.float32), p10.y,
                        evaluation.EvalConfig(eps=(0.1,), **QUICK))
  with pytest.raises(ValueError, match=r'Labels must lie in \[0, 10\)'):
    evaluation.evaluate(p10.predict, p10.x, p10.y + 10, evaluation.EvalConfig(eps=(0.1,),
                                                                             **QUICK))
  with pytest.raises(ValueError, match='Inputs must lie in'):
    evaluation.evaluate(p10.predict, p10.x * 3, p10.y, evaluation.EvalConfig(eps=(0.1,), **QUICK))

"""The fast protocol: MALT's target ranking, its verdict against AutoAttack's on analytic problems,
Square's budget rule, the protocol list and the report's labels."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

import in_process
from helpers import LinearProblem, MulticlassAffine, radii_between, small_cnn_predict
from mma_tf import evaluation
from mma_tf.attacks.malt import malt_order, malt_scores, probe
from mma_tf.attacks.registry import get_attack
from mma_tf.attacks.square_attack import square_search
from mma_tf.evaluation.common import stream_example_seeds
from mma_tf.evaluation.runner import Runner, run_attacks

NORMS = ['Linf', 'L2']
QUICK = dict(apgd_nb_iter=20, fab_nb_iter=20, square_queries=300, fast_square_queries=100,
             margin_estimates=())


# A fast stage is proved by rerunning the AutoAttack runs it stands for, which makes those proofs
# slow (CI runs them: --runslow); the default tier proves the protocol's result
# (test_fast_breaks_exactly_what_autoattack_breaks_on_affine_models[Linf]).
stage_proof = pytest.mark.slow


@pytest.mark.parametrize('norm', NORMS)
def test_malt_ranks_the_exact_nearest_class_first_on_affine_models(norm):
  p = MulticlassAffine(norm, batch=16)
  assert not p.nearest_is_runner_up.all(), 'the logit order must get some examples wrong'
  scores = malt_scores(p.predict, p.x, p.y, norm).numpy()
  np.testing.assert_allclose(scores.min(1), p.margin, rtol=1e-5)  # the exact distances
  assert np.all(scores[np.arange(len(p.y)), p.y] == np.inf)
  order = tf.function(lambda x, y: malt_order(p.predict, x, y, norm), jit_compile=True)
  got = order(p.x, p.y).numpy()
  np.testing.assert_array_equal(got[:, 0], p.nearest)
  np.testing.assert_array_equal(got[:, -1], p.y)  # the label last
  # Per example: alone, each gets the row it gets in the batch.
  for i in (0, 5):
    np.testing.assert_array_equal(malt_order(p.predict, p.x[i:i + 1], p.y[i:i + 1], norm)[0],
                                  got[i])


def test_malt_ranks_through_models_whose_gradient_updates_state():
  """A model that counts its backward passes in a variable (as bench_autoattack's counter does):
  the ranking must not depend on vectorising its gradient."""
  p = MulticlassAffine('Linf', batch=8)
  backward_passes = tf.Variable(0, dtype=tf.int64)

  @tf.custom_gradient
  def counted(x):
    def grad(dy):
      with tf.control_dependencies([backward_passes.assign_add(1)]):
        return tf.identity(dy)
    return tf.identity(x), grad

  order = tf.function(lambda x, y: malt_order(lambda v: p.predict(counted(v)), x, y))
  np.testing.assert_array_equal(order(p.x, p.y), malt_order(p.predict, p.x, p.y))
  assert backward_passes.numpy() > 0


def test_malt_falls_back_to_the_logit_order_without_gradients():
  p = LinearProblem('Linf', 10, batch=8)
  masked = lambda images: p.predict(tf.stop_gradient(images))
  by_logit = np.argsort(-p.predict(p.x).numpy(), 1, kind='stable')
  np.testing.assert_array_equal(malt_order(masked, p.x, p.y)[:, :-1], by_logit[:, 1:])


# L2: the same protocol code with the other norm's attacks (CI: --runslow).
@pytest.mark.parametrize('norm', ['Linf', pytest.param('L2', marks=pytest.mark.slow)])
def test_fast_breaks_exactly_what_autoattack_breaks_on_affine_models(norm):
  p = MulticlassAffine(norm, batch=16)
  eps = radii_between(p.margin, count=4)
  expected = np.stack([p.margin > e for e in eps])
  # One bucket shape (batch_size / 8 >= 16 points): every function traces once.
  config = evaluation.EvalConfig(norm=norm, eps=eps, batch_size=128, protocol='autoattack,fast',
                                 **QUICK)
  results, per_example = evaluation.evaluate(p.predict, p.x, p.y, config)
  np.testing.assert_array_equal(per_example['autoattack_robust'], expected)
  np.testing.assert_array_equal(per_example['fast_robust'], expected)
  assert all(c['same'] for c in results['protocols']['fast']['vs_autoattack'].values())


@stage_proof
@pytest.mark.parametrize('norm', NORMS)
def test_one_malt_target_breaks_what_one_logit_target_misses_on_affine_models(norm):
  """The ranking is what makes fast's few targets enough: at every radius between two margins,
  one MALT target breaks every breakable point; one target by logit misses some."""
  p = MulticlassAffine(norm, batch=16)
  eps = radii_between(p.margin, count=len(p.y))
  one = dict(QUICK, fast_n_target_classes=1, n_target_classes=1)
  robust = {name: evaluation.evaluate(p.predict, p.x, p.y, evaluation.EvalConfig(
      norm=norm, eps=eps, batch_size=128, attacks=(name,), **one))[1]['robust']
            for name in ('apgd-t-malt', 'apgd-t')}
  expected = np.stack([p.margin > e for e in eps])
  np.testing.assert_array_equal(robust['apgd-t-malt'], expected)
  assert (robust['apgd-t'] & ~expected).any()


def _random_points(rng, eps):
  """A tiny CNN, 16 random images labelled by it, their indices and a radius."""
  _, predict = small_cnn_predict()
  x = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
  return predict, x, np.argmax(predict(x).numpy(), 1).astype(np.int32), np.arange(
      16, dtype=np.int32), eps


def _chosen_and_logit_order(attack, predict, x, y, eps):
  """The attack's stage choice [16, 9] and each point's other classes by logit (stage s: the
  class of rank s + 2)."""
  chosen = attack.select_stages(predict, x, y, tf.fill([16], eps), 9).numpy()
  return chosen, np.argsort(-predict(x).numpy(), 1, kind='stable')[:, 1:]


@stage_proof
def test_fast_apgd_t_reruns_autoattacks_runs_for_the_classes_malt_picks(rng):
  """apgd-t-malt breaks a point iff AutoAttack's APGD-T run toward one of the point's MALT
  classes (k nearest at x, k at the probe point) breaks it: the same runs, fewer of them."""
  predict, x, y, index, eps = _random_points(rng, 0.04)
  fast_t = get_attack('apgd-t-malt', 'Linf', nb_iter=10, n_target_classes=2)
  chosen, by_logit = _chosen_and_logit_order(fast_t, predict, x, y, eps)
  at_probe = probe(predict, x, y, eps, 'Linf')
  nearest = np.concatenate([malt_order(predict, x, y).numpy()[:, :2],
                            malt_order(predict, at_probe, y).numpy()[:, :2]], 1)
  np.testing.assert_array_equal(chosen, (by_logit[:, :, None] == nearest[:, None]).any(2))
  assert 2 <= chosen.sum(1).min() and chosen.sum(1).max() <= 4 and chosen.sum(1).max() > 2
  standard = get_attack('apgd-t', 'Linf', nb_iter=10)
  runs = np.stack([standard.run_stage(predict, x, y, tf.fill([16], eps), stream_example_seeds(
      0, 'apgd-t', index, s), s)[1].numpy() for s in range(9)], 1)
  got = run_attacks(Runner(8), predict, [fast_t], x, y, index, eps, np.ones(16, bool), 0, 10)
  np.testing.assert_array_equal(~got['robust'], (runs & chosen).any(1))
  assert 0 < (~got['robust']).sum() < 16 and (runs & ~chosen).any()  # runs left out mattered


@stage_proof
def test_fast_fab_t_reruns_autoattacks_runs_for_the_classes_malt_ranks_nearest_at_x(rng):
  """fab-t-malt breaks a point iff AutoAttack's FAB-T run toward one of the k classes MALT ranks
  nearest at x breaks it."""
  predict, x, y, index, eps = _random_points(rng, 0.03)
  fast_fab = get_attack('fab-t-malt', 'Linf', nb_iter=10, n_target_classes=2)
  chosen, by_logit = _chosen_and_logit_order(fast_fab, predict, x, y, eps)
  nearest = malt_order(predict, x, y).numpy()[:, :2]
  np.testing.assert_array_equal(chosen, (by_logit[:, :, None] == nearest[:, None]).any(2))
  assert np.all(chosen.sum(1) == 2)
  standard = get_attack('fab-t', 'Linf', nb_iter=10)
  runs = np.stack([standard.run_stage(predict, x, y, tf.fill([16], eps), None, s)[1].numpy()
                   for s in range(9)], 1)
  got = run_attacks(Runner(8), predict, [fast_fab], x, y, index, eps, np.ones(16, bool), 0, 10)
  np.testing.assert_array_equal(~got['robust'], (runs & chosen).any(1))
  assert 0 < (~got['robust']).sum() < 16 and (runs & ~chosen).any()  # runs left out mattered


def _checks(signs):
  """Model checks (sanity.model_checks) that flag the given signs of masking."""
  return {'zero_gradient_fraction': 0.0, 'nondeterministic': 'the outputs are random' in signs,
          'looks_like_probabilities': False}


def _square_alone(p, predict, eps, short, full, signs):
  """(the fast protocol's Square alone, with its report facts; AutoAttack's full Square) on the
  same points."""
  runner = Runner(len(p.y))
  args = (p.x, p.y, np.arange(len(p.y), dtype=np.int32), eps, np.ones(len(p.y), bool), 0, 10)
  got = run_attacks(runner, predict, [get_attack('square', 'Linf', n_queries=short,
                                                 full_queries=full)], *args,
                    checks=_checks(signs))
  got.update(got['facts'][0])
  return got, run_attacks(runner, predict, [get_attack('square', 'Linf', n_queries=full)], *args)


@stage_proof
def test_square_continues_to_the_full_budget_when_the_short_run_breaks_a_point():
  p = LinearProblem('Linf', 10, batch=12)
  masked = lambda images: p.predict(tf.stop_gradient(images))  # only Square breaks anything
  eps = float(np.median(p.margin) * 1.2)
  short = run_attacks(Runner(12), masked, [get_attack('square', 'Linf', n_queries=100)], p.x, p.y,
                      np.arange(12, dtype=np.int32), eps, np.ones(12, bool), 0, 10)
  got, standard = _square_alone(p, masked, eps, 100, 300, signs=[])
  assert 0 < (~short['robust']).sum() < (~standard['robust']).sum()  # the full run does more
  assert got['square_queries'] == 300 and 'broke' in got['square_reason']
  # The short run is a prefix of the full one: exactly AutoAttack's Square verdict.
  np.testing.assert_array_equal(got['robust'], standard['robust'])
  np.testing.assert_array_equal(got['broken_by'], standard['broken_by'])
  assert got['acc_after'] == standard['acc_after']
  # Signs of masking give the full budget from the start.
  flagged, _ = _square_alone(p, masked, eps, 100, 300, signs=['the outputs are random'])
  assert flagged['square_queries'] == 300 and flagged['square_reason'] == 'the outputs are random'
  np.testing.assert_array_equal(flagged['robust'], standard['robust'])
  # Nothing broken by the short run: the short budget stands.
  below, _ = _square_alone(p, masked, float(p.margin.min() * 0.6), 100, 300, signs=[])
  assert below['square_queries'] == 100 and below['square_reason'] is None


@stage_proof
def test_square_continues_only_the_points_still_closing_in():
  """Nothing broken by the short run and no sign of masking: the points whose margin fell to
  continue_below of its start or lower go on to the full budget (with the full run's verdict),
  the others keep the short run's."""
  p = LinearProblem('Linf', 10, batch=16)
  masked = lambda images: p.predict(tf.stop_gradient(images))
  eps, index = float(np.median(p.margin) * 1.2), np.arange(16, dtype=np.int32)
  seeds = stream_example_seeds(0, 'square', index, 0)
  short = square_search(masked, p.x, p.y, eps, n_queries=100, seed=seeds)
  full = square_search(masked, p.x, p.y, eps, n_queries=300, seed=seeds)
  left = short.margin.numpy() > 0  # the points the short run leaves: start from these alone
  ratio = short.margin.numpy() / short.start_margin.numpy()
  below = float(np.median(ratio[left]))
  closing_in = left & (ratio <= below)
  got = run_attacks(Runner(16), masked, [get_attack('square', 'Linf', n_queries=100,
                                                   full_queries=300, continue_below=below)],
                    p.x, p.y, index, eps, left, 0, 10, checks=_checks([]))
  facts = got['facts'][0]
  assert facts['continued_points'] == closing_in.sum() > 0 and (left & ~closing_in).any()
  assert facts['square_queries'] == 100 and 'of its start or lower' in facts['square_reason']
  broken_in_full = full.margin.numpy() <= 0
  assert (closing_in & broken_in_full).any()  # the continuation mattered
  np.testing.assert_array_equal(got['robust'], left & ~(closing_in & broken_in_full))


@stage_proof
def test_the_continued_square_does_not_repeat_the_short_runs_queries():
  """Gradients that point the wrong way: the gradient attacks break nothing, the short Square run
  breaks some points, so fast continues it. The continuation resumes each point's search, so fast
  costs a single full-budget Square's forward passes (plus the continuation's final check and
  the evaluator's confirmation of it), not the short run's again, and gives its verdict."""
  p = LinearProblem('Linf', 10, batch=12)
  calls = tf.Variable(0, dtype=tf.int64)
  examples = tf.Variable(0, dtype=tf.int64)

  @tf.custom_gradient
  def reversed_gradient(x):
    return tf.identity(x), lambda dy: -dy

  def counted(images):  # in the graph: passes inside tf.while_loop count too
    with tf.control_dependencies([calls.assign_add(1),
                                  examples.assign_add(tf.cast(tf.shape(images)[0], tf.int64))]):
      return p.predict(reversed_gradient(images))

  def fast_run(short):
    calls.assign(0), examples.assign(0)
    config = evaluation.EvalConfig(norm='Linf', eps=(float(np.median(p.margin) * 1.2),),
                                   batch_size=12, protocol='fast',
                                   **dict(QUICK, fast_square_queries=short))
    results, per_example = evaluation.evaluate(counted, p.x, p.y, config)
    return results['protocols']['fast'], per_example, int(calls.numpy()), int(examples.numpy())

  continued, per_example, calls_continued, examples_continued = fast_run(100)
  full, full_per_example, calls_full, examples_full = fast_run(300)  # one 300-query run
  assert continued['acc_after'][next(iter(continued['acc_after']))]['fab-t-malt'] == 1.0
  assert 'the 100-query run broke' in next(iter(continued['square_reason'].values()))
  assert list(continued['square_queries'].values()) == [300]
  assert 0 < per_example['fast_robust'].sum() < 12
  for k in ('fast_robust', 'fast_broken_by', 'fast_adv_norm'):
    np.testing.assert_array_equal(per_example[k], full_per_example[k])
  assert calls_continued - calls_full <= 2  # re-running 100 queries would add 100 and more
  assert examples_continued < examples_full  # the continuation runs on the points left


@stage_proof
def test_zero_gradients_give_square_its_full_budget_and_the_report_says_why():
  p = LinearProblem('Linf', 10, batch=12)
  masked = lambda images: p.predict(tf.stop_gradient(images))
  eps = (float(np.median(p.margin) * 1.2),)
  config = evaluation.EvalConfig(norm='Linf', eps=eps, batch_size=12, protocol='autoattack,fast',
                                 **QUICK)
  results, per_example = evaluation.evaluate(masked, p.x, p.y, config)
  r = results['protocols']['fast']
  assert r['square_queries'] == {f'{eps[0]:g}': 300}
  assert 'all-zero input gradient' in r['square_reason'][f'{eps[0]:g}']
  # Square's verdict with AutoAttack's (here: QUICK's) full budget; the short one misses some.
  np.testing.assert_array_equal(per_example['fast_robust'], per_example['autoattack_robust'])
  short = evaluation.evaluate(masked, p.x, p.y, dataclasses.replace(
      config, protocol='fast', fast_square_queries=100, square_queries=100))[1]['fast_robust']
  assert short.sum() > per_example['fast_robust'].sum() >= (p.margin > eps[0]).sum()


def test_protocol_lists():
  names = lambda protocol: list(evaluation.EvalConfig(protocol=protocol).protocol_attacks())
  assert names('all') == ['autoattack', 'paper', 'fast']
  assert names('autoattack,fast') == ['autoattack', 'fast']
  assert names('fast') == ['fast']
  attacks = evaluation.EvalConfig(protocol='fast', fast_n_target_classes=2,
                                  fast_square_queries=700).protocol_attacks()['fast']
  assert [a.describe() for a in attacks] == [
      'apgd-ce(nb_iter=100, loss=ce, eot_iter=1)',
      'apgd-t-malt(nb_iter=100, n_target_classes=2, loss=dlr_targeted)',
      'fab-t-malt(nb_iter=100, n_target_classes=3)',
      'square(n_queries=700, p_init=0.8, full_queries=5000, continue_below=0.3)']
  for protocol, match in (('autoattack,pgd', "Unknown protocol 'pgd'"),
                          ('fast,fast', 'names one twice'), (('fast',), 'must be a string')):
    with pytest.raises(ValueError, match=match):
      evaluation.EvalConfig(protocol=protocol).validate((28, 28, 1))
  with pytest.raises(ValueError, match='fast_square_queries must be >= 1'):
    evaluation.EvalConfig(fast_square_queries=0).validate((28, 28, 1))
  with pytest.raises(ValueError, match=r'fast_square_continue_below .* must be in \[0, 1\]'):
    evaluation.EvalConfig(fast_square_continue_below=1.5).validate((28, 28, 1))


def test_cli_runs_autoattack_and_fast_side_by_side_and_labels_fast(tmp_path):
  import keras
  _, predict = small_cnn_predict(input_shape=(28, 28, 1))
  model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(predict)])
  model.export(str(tmp_path / 'export'), verbose=False)
  out = tmp_path / 'report'
  result = in_process.run_main('mma_tf.cli.evaluate', [
      f'--saved_model={tmp_path}/export', '--num_examples=12', '--eps=0.02',
      '--protocol=autoattack,fast', '--apgd_nb_iter=5', '--fab_nb_iter=5', '--n_target_classes=2',
      '--square_queries=20', '--margins=', '--batch_size=12', f'--output_dir={out}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert '(fast: not standard AutoAttack)' in result.stdout
  assert '**fast is not standard AutoAttack' in result.stdout
  assert 'fast: eps 0.02 apgd-t-malt' in result.stdout  # progress lines name their protocol
  results = json.loads((out / 'results.json').read_text())
  assert list(results['protocols']) == ['autoattack', 'fast']
  comparison = results['protocols']['fast']['vs_autoattack']['0.02']
  per_example = np.load(out / 'per_example.npz')
  aa, f = per_example['autoattack_robust'][0], per_example['fast_robust'][0]
  assert comparison['broken_only_by_autoattack'] == np.flatnonzero(~aa & f).tolist()
  assert comparison['same'] == bool(np.array_equal(aa, f))

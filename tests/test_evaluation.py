"""mma-evaluate and mma_tf.evaluation: analytic curves, restarts, transfer, sanity checks, few
classes, the validation split of a training run, bad input."""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import in_process
from helpers import LinearProblem, small_cnn_predict
from mma_tf import data as data_lib
from mma_tf import evaluation, export
from mma_tf.evaluation import sanity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linear_keras(problem, sign=1.0, name=None):
  model = keras.Sequential([keras.Input(problem.x.shape[1:]), keras.layers.Flatten(),
                            keras.layers.Dense(problem.w.shape[1])], name=name)
  model.layers[-1].set_weights([sign * problem.w, sign * problem.b])
  return model


def _export_linear(problem, path):
  _linear_keras(problem).export(str(path), format='tf_saved_model', verbose=False)
  return export.load_classifier(str(path))[0]


# Slow (CI: --runslow): the default tier proves the analytic curves on the Python model
# (test_autoattack.py::test_ensemble_matches_the_analytic_curve_of_a_linear_model), a
# SavedModel's evaluation through the CLI (test_cli_evaluates_a_plain_keras_export) and the
# SavedModel round trip (test_trainer.py::test_training_raises_the_margin_and_exports_...).
@pytest.mark.slow
@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_linear_savedmodel_matches_analytic_curve_and_margins(norm, tmp_path):
  p = LinearProblem(norm, 10, batch=24, max_margin=0.3 if norm == 'Linf' else 0.8)
  predict = _export_linear(p, tmp_path / 'linear')
  # Radii between the sorted margins, at least 1.5% away from each.
  m = np.sort(p.margin)
  gaps = [float((a + b) / 2) for a, b in zip(m[:-1], m[1:]) if b > a * 1.03]
  eps = gaps[::max(len(gaps) // 3, 1)][:3]
  assert len(eps) >= 2
  config = evaluation.EvalConfig(norm=norm, eps=tuple(eps), protocol='paper', nb_iter=40,
                                 nb_restart=2, rel_step=0.25, batch_size=16,
                                 margin_maxeps=float(1.2 * m[-1]), fab_nb_iter=20)
  results, per_example = evaluation.evaluate(predict, p.x, p.y, config)
  assert results['clean_acc'] == 1.0
  for e in eps:
    assert results['robust_acc'][f'{e:g}'] == pytest.approx(np.mean(p.margin > e))
  resolution = config.maxeps / 2**10
  np.testing.assert_allclose(per_example['margin_pgd_bisection'], p.margin, atol=2 * resolution)
  np.testing.assert_allclose(per_example['margin_anpgd'], p.margin, atol=2 * resolution)
  # FAB approaches the boundary from outside: an upper bound, within 1% after 20 iterations.
  assert np.all(per_example['margin_fab'] >= p.margin * (1 - 1e-4))
  np.testing.assert_allclose(per_example['margin_fab'], p.margin, rtol=1e-2)
  np.testing.assert_allclose(per_example['margin_min'], p.margin, atol=2 * resolution)
  assert results['margin']['pgd_bisection']['mean'] == pytest.approx(p.margin.mean(), abs=1e-3)
  assert not results['sanity']['warnings'], results['sanity']['warnings']


def test_restarts_and_iterations_only_lower_robust_accuracy(rng):
  _, predict = small_cnn_predict()
  x = rng.uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)
  y = np.argmax(predict(x).numpy(), 1).astype(np.int32)  # all clean-correct
  def run(**kw):
    config = evaluation.EvalConfig(norm='Linf', eps=(0.02, 0.05), protocol='paper',
                                   batch_size=20, margin_estimates=(), **kw)
    return evaluation.evaluate(predict, x, y, config)[1]['robust']
  one, four = run(nb_iter=10, nb_restart=1), run(nb_iter=10, nb_restart=4)
  assert np.all(four <= one)  # restart 0 is shared, so this is per example
  assert four.sum() < one.sum()  # and the extra restarts found something


def _masked_linear():
  """A linear problem, its model with zero input gradients, and a radius that half its points
  are within."""
  p = LinearProblem('Linf', 10, batch=12)
  masked = lambda images: p.predict(tf.stop_gradient(images))
  return p, masked, float(np.median(p.margin))


def test_transfer_from_a_differentiable_source_breaks_what_masked_gradients_hide():
  p, masked, eps = _masked_linear()
  config = evaluation.EvalConfig(eps=(eps,), protocol='paper', nb_iter=20, nb_restart=1,
                                 rel_step=0.25, batch_size=12, margin_estimates=())
  results, _ = evaluation.evaluate(masked, p.x, p.y, config, source_predict=p.predict)
  paper = results['protocols']['paper']
  assert paper['attacks'] == ['pgd', 'transfer']
  after = paper['acc_after'][f'{eps:g}']
  # White-box PGD is blind here; PGD on the same weights without the mask breaks every point
  # within eps, and its points transfer.
  assert after['pgd'] > 0.9
  assert after['transfer'] == results['robust_acc'][f'{eps:g}'] == np.mean(p.margin > eps)


def test_transfer_sources_with_the_same_name_are_not_confused():
  """A runner reused across evaluate() calls (same target, same config) must not reuse the
  compiled transfer stage of another source model, even one with the same Keras name."""
  p, masked, eps = _masked_linear()
  config = evaluation.EvalConfig(eps=(eps,), protocol='paper', nb_iter=20, nb_restart=1,
                                 rel_step=0.25, batch_size=12, margin_estimates=())
  good, bad = _linear_keras(p, name='src'), _linear_keras(p, sign=-1.0, name='src')
  robust = lambda source, runner=None: evaluation.evaluate(
      masked, p.x, p.y, config, source_predict=source, runner=runner)[0]['robust_acc']
  assert robust(good) == {f'{eps:g}': np.mean(p.margin > eps)}
  fresh = robust(bad, runner=evaluation.Runner(config.batch_size))
  assert robust(bad) == fresh == {f'{eps:g}': 1.0}  # gradients pointing away from the boundary


def test_noise_check_draws_its_own_count_whatever_the_paper_restarts(monkeypatch):
  """The noise check's draw count is its own (sanity.NOISE_DRAWS), not the paper protocol's
  nb_restart: changing the restarts leaves the noise check as it is."""
  p, masked, eps = _masked_linear()
  draws, noise_fn = [], sanity.noise_fn
  monkeypatch.setattr(sanity, 'noise_fn', lambda *args: draws.append(args[-1]) or noise_fn(*args))
  noise_acc = []
  for nb_restart in (1, 10):
    config = evaluation.EvalConfig(eps=(eps,), protocol='paper', nb_iter=1, nb_restart=nb_restart,
                                   batch_size=12, margin_estimates=())
    noise_acc.append(evaluation.evaluate(masked, p.x, p.y, config)[0]['sanity']['random_noise_acc'])
  assert draws == [sanity.NOISE_DRAWS] * 2
  assert noise_acc[0] == noise_acc[1]


def test_masked_gradients_and_probabilities_trigger_warnings(tmp_path, rng):
  class Masked(tf.Module):
    def __init__(self):
      self.w = tf.Variable(rng.randn(64, 10).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    def __call__(self, images):
      return tf.matmul(tf.reshape(tf.stop_gradient(images), [-1, 64]), self.w)

  module = Masked()
  tf.saved_model.save(module, str(tmp_path / 'masked'),
                      signatures=module.__call__.get_concrete_function())
  masked, _ = export.load_classifier(str(tmp_path / 'masked'))
  x = rng.uniform(0, 1, (20, 8, 8, 1)).astype(np.float32)
  y = np.argmax(masked(x).numpy(), 1).astype(np.int32)
  config = evaluation.EvalConfig(eps=(0.05, 0.3), protocol='paper', nb_iter=10, nb_restart=2,
                                 batch_size=20, margin_nb_iter=3, search_steps=2,
                                 margin_estimates=('anpgd',))
  warnings = ' '.join(evaluation.evaluate(masked, x, y, config)[0]['sanity']['warnings'])
  assert 'all-zero input gradient' in warnings
  assert 'random noise' in warnings  # noise finds what the blind gradient attack cannot

  model, _ = small_cnn_predict()
  softmax = keras.Sequential([model, keras.layers.Softmax()])
  y = np.argmax(softmax(x).numpy(), 1).astype(np.int32)
  warnings = ' '.join(evaluation.evaluate(lambda v: softmax(v), x, y, config)[0]['sanity']
                      ['warnings'])
  assert 'look like probabilities' in warnings


def test_bad_savedmodels_are_clear_errors(tmp_path):
  with pytest.raises(export.SavedModelError, match='No SavedModel directory'):
    export.load_classifier(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(export.SavedModelError, match='no saved_model.pb'):
    export.load_classifier(str(tmp_path / 'empty'))
  (tmp_path / 'corrupt').mkdir()
  (tmp_path / 'corrupt' / 'saved_model.pb').write_bytes(b'garbage')
  with pytest.raises(export.SavedModelError, match='Cannot load'):
    export.load_classifier(str(tmp_path / 'corrupt'))

  class NotAnImageModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def __call__(self, v):
      return {'a': v, 'b': v}

  module = NotAnImageModel()
  tf.saved_model.save(module, str(tmp_path / 'vector'),
                      signatures=module.__call__.get_concrete_function())
  with pytest.raises(export.SavedModelError, match='image classifier takes one float tensor'):
    export.load_classifier(str(tmp_path / 'vector'))


def test_eval_config_rejects_bad_eps():
  for eps, match in (((0.0,), 'outside'), ((1.5,), 'outside'), ((),  'at least one')):
    with pytest.raises(ValueError, match=match):
      evaluation.EvalConfig(norm='Linf', eps=eps).validate((28, 28, 1))
  evaluation.EvalConfig(norm='L2', eps=(3.0,)).validate((28, 28, 1))
  with pytest.raises(ValueError, match='write 8/255, not 8'):  # one unit: nothing is rescaled
    evaluation.EvalConfig(norm='Linf', eps=(8.0,)).validate((32, 32, 3))
  for kw, match in ((dict(protocol='pgd'), 'Unknown protocol'),
                    (dict(attacks=('apgd-ce', 'cw')), "Unknown attack 'cw'"),
                    (dict(margin_estimates=('deepfool',)), 'Unknown margin estimate'),
                    (dict(square_queries=0), 'square_queries must be >= 1')):
    with pytest.raises(ValueError, match=match):
      evaluation.EvalConfig(**kw).validate((28, 28, 1))


def _evaluate_script(*flags):
  """bin/evaluate.py in a new process, as a user runs it."""
  return subprocess.run([sys.executable, os.path.join(ROOT, 'bin', 'evaluate.py'), *flags],
                        capture_output=True, text=True, timeout=300)


def _evaluate_cli(*flags):
  """The same command line in this process (tests/in_process.py)."""
  return in_process.run_main('mma_tf.cli.evaluate', flags)


@pytest.fixture(scope='module')
def keras_export(tmp_path_factory):
  """A model this project never built: a plain Keras CNN written by keras.Model.export()."""
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2),
                            keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(10)])
  path = tmp_path_factory.mktemp('keras') / 'export'
  model.export(str(path), verbose=False)
  return path


@pytest.mark.slow  # every attack and margin estimate of protocol 'all', twice (CI: --runslow)
def test_a_savedmodel_evaluates_chunks_of_one_example_as_any_other(tmp_path):
  """A SavedModel's logits and input gradients have an unknown batch size; a leftover chunk of
  one example (3 correct examples, batch 2) must still run every attack and margin estimate,
  with the same per-example results as one batch of 3. (Few examples: every chunk size an
  attack's compaction leaves is traced for each function.)"""
  p = LinearProblem('Linf', 10, batch=3)
  predict = _export_linear(p, tmp_path / 'linear')
  outputs = []
  for batch_size in (2, 3):
    config = evaluation.EvalConfig(
        norm='Linf', eps=(float(np.median(p.margin)),), protocol='all', nb_iter=3, nb_restart=2,
        apgd_nb_iter=3, fab_nb_iter=3, n_target_classes=2, square_queries=10, margin_nb_iter=3,
        margin_estimates=('anpgd', 'pgd_bisection', 'fab'), batch_size=batch_size)
    outputs.append(evaluation.evaluate(predict, p.x, p.y, config)[1])
  for key in ('robust', 'autoattack_broken_by', 'paper_broken_by', 'margin_min'):
    np.testing.assert_allclose(outputs[0][key], outputs[1][key], atol=1e-6)


def test_cli_evaluates_a_plain_keras_export(keras_export, tmp_path):
  out = tmp_path / 'report'
  result = _evaluate_script(f'--saved_model={keras_export}', '--num_examples=20', '--nb_iter=5',
                            '--nb_restart=2', '--margin_nb_iter=3', '--batch_size=10',
                            '--eps=0.05,0.1', f'--output_dir={out}', '--protocol=paper',
                            '--margins=anpgd,pgd_bisection')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| paper | pgd |' in result.stdout
  files = sorted(os.listdir(out))
  assert files == ['margins.png', 'per_example.npz', 'results.json', 'results.md',
                   'robust_accuracy.png']
  results = json.loads((out / 'results.json').read_text())
  assert results['num_examples'] == 20 and set(results['robust_acc']) == {'0.05', '0.1'}
  # A second run does not overwrite the report.
  again = _evaluate_cli(f'--saved_model={keras_export}', f'--output_dir={out}')
  assert again.returncode != 0 and 'already holds a report' in again.stderr


@pytest.mark.parametrize('flags, message', [
    (['--eps=0'], 'outside (0, 1]'),
    (['--eps=8/0'], "'8/0' is not a number or a fraction"),
    (['--attacks=apgd-ce,cw'], "Unknown attack 'cw'"),
    (['--protocol=autoattack,quick'], "Unknown protocol 'quick'"),
    (['--norm=L2', '--eps=40'], 'outside (0, 28]'),
    (['--dataset=cifar10'], 'takes images of shape (28, 28, 1)'),
    (['--num_examples=0'], '--num_examples must be >= 1'),
    (['--apgd_nb_iter=0'], '--apgd_nb_iter must be >= 1'),  # flags, not Python argument names
])
def test_cli_bad_input_writes_nothing(keras_export, tmp_path, flags, message):
  out = tmp_path / 'report'
  result = in_process.run_main('mma_tf.cli.evaluate', [f'--saved_model={keras_export}',
                                                       f'--output_dir={out}', *flags])
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not out.exists() and not (tmp_path / 'report.tmp').exists()
  assert 'Traceback' not in result.stderr


def test_cli_missing_savedmodel(tmp_path):
  result = in_process.run_main('mma_tf.cli.evaluate', [f'--saved_model={tmp_path / "nope"}'])
  assert result.returncode != 0 and 'No SavedModel directory' in result.stderr


@pytest.mark.parametrize('protocol, change', [
    ('autoattack', "apgd-t: targeted cross-entropy (the reference code's ce-targeted loss) "
                   'instead of targeted DLR, which needs 4 classes'),
    ('rand', "apgd-dlr: the logit margin (DLR's numerator) instead of DLR, which needs 3 classes"),
])
def test_cli_evaluates_a_two_class_model(tmp_path, protocol, change):
  p = LinearProblem('Linf', 2, batch=8)
  _export_linear(p, tmp_path / 'export')
  # The problem's points are all of one class; the training labels name both.
  np.savez(tmp_path / 'binary.npz', x_train=np.concatenate([p.x] * 2), y_train=np.concatenate(
      [p.y, 1 - p.y]), x_test=p.x, y_test=p.y)
  out = tmp_path / 'report'
  result = _evaluate_cli(f'--saved_model={tmp_path / "export"}', f'--dataset=npz:{tmp_path}/'
                         'binary.npz', f'--protocol={protocol}', f'--eps={np.median(p.margin)}',
                         '--apgd_nb_iter=5', '--fab_nb_iter=5', '--square_queries=20',
                         '--eot_iter=2', '--margins=', '--batch_size=8', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert change in result.stdout  # as the run starts, and in the table at the end
  results = json.loads((out / 'results.json').read_text())
  assert change in results['protocols'][protocol]['changes']
  assert results['protocols'][protocol]['label'].startswith('AutoAttack-like')
  assert not results['standard_autoattack']
  assert change in (out / 'results.md').read_text()


def test_cli_validation_split_is_the_training_runs(keras_export, tmp_path):
  """--split=validation takes num_validation and the split rule from the run's config.json next
  to the export, and says so."""
  run = tmp_path / 'run'
  shutil.copytree(keras_export, run / 'export')
  record = {'dataset': 'mnist_5k', 'data': {'name': 'mnist_5k', 'num_validation': 40}}
  (run / 'config.json').write_text(json.dumps(record))
  fast = ['--split=validation', '--attacks=apgd-ce', '--apgd_nb_iter=1', '--margins=',
          '--eps=0.1', '--batch_size=50']
  result = _evaluate_cli(f'--saved_model={run / "export"}', f'--output_dir={tmp_path / "a"}',
                         *fast)
  assert result.returncode == 0, result.stderr[-3000:]
  said = f'the first 40 training images (from {run / "config.json"})'
  assert said in result.stdout
  results = json.loads((tmp_path / 'a' / 'results.json').read_text())
  assert results['num_examples'] == 40 and said in results['split_images']

  clash = _evaluate_cli(f'--saved_model={run / "export"}', f'--output_dir={tmp_path / "b"}',
                        '--num_validation=500', *fast)
  assert clash.returncode == 2 and '--num_validation=500, but the run trained with 40' in \
      clash.stderr

  # npz data validates on a recorded random selection; a record without one on the first images.
  digits = data_lib.load('mnist_5k')
  npz = tmp_path / 'digits.npz'
  np.savez(npz, x_train=digits.train_images[:300], y_train=digits.train_labels[:300])
  for rule in ('random:0', None):
    record = {'dataset': f'npz:{npz}', 'data': {'num_validation': 30}}
    if rule:
      record['data']['validation_split'] = rule
    (run / 'config.json').write_text(json.dumps(record))
    out = tmp_path / f'npz-{rule}'
    result = _evaluate_cli(f'--saved_model={run / "export"}', f'--dataset=npz:{npz}',
                           f'--output_dir={out}', *fast)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = data_lib.from_npz(str(npz), 30, validation_split=rule or 'first')
    np.testing.assert_array_equal(np.load(out / 'per_example.npz')['labels'],
                                  expected.eval_split('validation')[1])
    assert ('a fixed random selection (random:0) of 30' if rule else 'the first 30') in \
        result.stdout


def test_an_attack_list_run_with_protocol_rand_keeps_its_eot():
  """--protocol=rand --attacks=...: the attacks of the list get rand's 20 EOT passes (the
  --eot_iter default there), as without the list; 1 under the other protocols."""
  (rand_attack,) = evaluation.EvalConfig(protocol='rand', attacks=('apgd-ce',)).protocol_attacks()[
      'custom']
  (standard_attack,) = evaluation.EvalConfig(attacks=('apgd-ce',)).protocol_attacks()['custom']
  assert rand_attack.eot_iter == 20 and standard_attack.eot_iter == 1


def test_a_random_model_evaluated_with_rand_is_not_told_to_use_rand():
  def told_to_use_rand(protocols):
    results = {'protocol': ','.join(protocols), 'num_examples': 10, 'robust_acc': {},
               'margin': {}, 'protocols': {p: {'unconfirmed': {}} for p in protocols},
               'sanity': {'zero_gradient_fraction': 0.0, 'nondeterministic': True,
                          'nondeterminism': 0.5, 'looks_like_probabilities': False,
                          'noise_only': {}, 'square': {}}}
    return any("AutoAttack's rand version" in w for w in sanity.warnings_for(results))

  assert told_to_use_rand(['autoattack']) and told_to_use_rand(['autoattack', 'fast'])
  assert not told_to_use_rand(['rand']) and not told_to_use_rand(['autoattack', 'rand'])

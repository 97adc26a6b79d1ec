"""The MMA loss against a direct re-computation of docs/paper_notes.md 2.3 on a tiny batch, and
what OMMA's missing clean term changes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, tiny_config
from mma_tf import configs, objectives
from mma_tf import trainer as trainer_lib
from mma_tf.attacks import anpgd, example_seeds


def _np_ce(z, y):
  m = z.max(1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
  return lse - z[np.arange(len(y)), y]


def _np_slm(z, y):
  others = np.where(np.eye(z.shape[1])[y] > 0, -np.inf, z)
  m = others.max(1, keepdims=True)
  return (m + np.log(np.exp(others - m).sum(1, keepdims=True)))[:, 0] - z[np.arange(len(y)), y]


def _linear_keras_model(problem):
  model = keras.Sequential([keras.Input(problem.x.shape[1:]), keras.layers.Flatten(),
                            keras.layers.Dense(problem.w.shape[1])])
  model.layers[-1].set_weights([problem.w, problem.b])
  return model


def test_mma_loss_matches_a_direct_recomputation():
  p = LinearProblem('Linf', 10, batch=16)
  y = p.y.copy()
  y[:4] = 7  # four misclassified examples (class 7's logit is ~40 below): SLM >= 0
  model = _linear_keras_model(p)
  d_max = float(np.median(p.margin))  # about half of the correct examples reach d_max
  config = configs.resolve('mnist_5k', 'Linf', dict(hinge_maxeps=d_max, attack_mineps=0.01,
                                                    nb_iter=20))
  objective = objectives.build_objective(config)
  seeds = example_seeds([0, 5], np.arange(16))
  eps0 = np.zeros(16, np.float32)  # first visit: the floor attack_mineps applies
  x = tf.constant(p.x)
  with tf.GradientTape() as tape:
    out = objective(model, x, y, eps0, seeds, tape.stop_recording)
    loss = tf.reduce_sum(out.loss) / 16  # the trainer's reduction over the global batch
  grads = tape.gradient(loss, model.trainable_variables)
  eps_out = out.eps

  # Direct re-computation from docs/paper_notes.md 2.3.
  z_clean = model(x).numpy()
  correct = _np_slm(z_clean, y) < 0
  assert correct.sum() == 12 and not correct[:4].any()
  x_adv, eps_hat = anpgd(lambda v: model(v, training=False), x, y, np.full(16, 0.01, np.float32),
                         maxeps=1.05 * d_max, nb_iter=20, seed=seeds, mask=correct)
  eps_hat = eps_hat.numpy()
  in_hinge = correct & (eps_hat < d_max)
  assert 0 < in_hinge.sum() < correct.sum(), 'the batch must exercise both sides of the hinge'
  x_mix = np.where(correct[:, None, None, None], x_adv.numpy(), p.x)
  ce_mix = _np_ce(model(x_mix).numpy(), y)
  mma = (ce_mix[in_hinge].sum() + ce_mix[~correct].sum()) / 16  # divided by the FULL batch
  c = 1 / 3
  expected = c * _np_ce(z_clean, y).mean() + (1 - c) * mma
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # Memory semantics: eps_hat for correct examples, 0 for misclassified ones.
  np.testing.assert_allclose(eps_out, np.where(correct, eps_hat, 0), rtol=1e-6)

  # Gradient mix: (1 - c) grad(L_mma) + c grad(L_clean).
  with tf.GradientTape(persistent=True) as t2:
    ce_clean = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(tf.constant(x_mix)))
    l_mma = tf.reduce_sum(tf.where(in_hinge | ~correct, per, 0.0)) / 16
  g_clean = t2.gradient(ce_clean, model.trainable_variables)
  g_mma = t2.gradient(l_mma, model.trainable_variables)
  for g, gc, gm in zip(grads, g_clean, g_mma):
    np.testing.assert_allclose(g, c * gc + (1 - c) * gm, rtol=1e-4, atol=1e-6)


def _run_objective(config, model, x, y, seeds):
  with tf.GradientTape() as tape:
    out = objectives.build_objective(config)(
        model, x, y, np.zeros(len(y), np.float32), seeds, tape.stop_recording)
    loss = tf.reduce_mean(out.loss)
  return loss, out.eps, out.stats, tape.gradient(loss, model.trainable_variables)


def test_omma_differs_from_mma_by_exactly_the_clean_term():
  """L_mma = c CE_clean + (1 - c) M and L_omma = M with the same margin term M (same batch, seeds
  and eps0, a BN-free model), so L_mma - (1 - c) L_omma is the clean term c CE_clean: in the loss,
  in the per-example statistics and in the gradient."""
  p = LinearProblem('Linf', 10, batch=12)
  y = p.y.copy()
  y[:3] = 7  # three misclassified examples: clean CE is large for them, so the term matters
  model = _linear_keras_model(p)
  seeds = example_seeds([0, 9], np.arange(12))
  x = tf.constant(p.x)
  mma_config = configs.resolve('mnist_5k', 'Linf', dict(objective='mma', nb_iter=5,
                                                        hinge_maxeps=0.2, attack_mineps=0.02))
  omma_config = configs.resolve('mnist_5k', 'Linf', dict(objective='omma', nb_iter=5,
                                                         hinge_maxeps=0.2, attack_mineps=0.02))
  c = mma_config.clean_loss_coeff
  assert c == pytest.approx(1 / 3) and omma_config.clean_loss_coeff == 0
  mma_loss, mma_eps, mma_stats, mma_grads = _run_objective(mma_config, model, x, y, seeds)
  omma_loss, omma_eps, omma_stats, omma_grads = _run_objective(omma_config, model, x, y, seeds)
  np.testing.assert_array_equal(mma_eps, omma_eps)  # the same attack, so the same margin term

  with tf.GradientTape() as tape:
    clean_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x))
    clean_term = c * tf.reduce_mean(clean_ce)
  clean_grads = tape.gradient(clean_term, model.trainable_variables)
  assert float(clean_term) > 0.5  # a real difference, not rounding
  assert abs(float(mma_loss) - float(omma_loss)) > 0.1
  np.testing.assert_allclose(float(mma_loss) - (1 - c) * float(omma_loss), float(clean_term),
                             rtol=1e-5)
  np.testing.assert_allclose(mma_stats['loss'] - (1 - c) * omma_stats['loss'], c * clean_ce,
                             rtol=1e-5, atol=1e-6)
  for gm, go, gc in zip(mma_grads, omma_grads, clean_grads):
    np.testing.assert_allclose(gm - (1 - c) * go.numpy(), gc, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name, overrides', [
    ('omma', {}), ('pgd_at', dict(pgd_eps=0.05)), ('trades', dict(pgd_eps=0.05)),
    ('standard', {})])
def test_other_objectives_run_and_sum_their_statistics(name, overrides):
  p = LinearProblem('Linf', 10, batch=8)
  model = _linear_keras_model(p)
  seeds = example_seeds(0, np.arange(8))
  config = configs.resolve('mnist_5k', 'Linf', dict(objective=name, nb_iter=5, **overrides))
  loss, eps_out, stats, grads = _run_objective(config, model, tf.constant(p.x), p.y, seeds)
  objective = objectives.build_objective(config)
  assert np.isfinite(float(loss))
  assert (eps_out is not None) == objective.uses_eps_memory == (name == 'omma')
  assert eps_out is None or eps_out.shape == (8,)
  assert all(g is not None for g in grads)
  np.testing.assert_allclose(float(loss) * 8, stats['loss'].numpy().sum(), rtol=1e-5)


@pytest.mark.parametrize('objective', ['pgd_at', 'trades', 'standard'])
def test_objectives_without_an_eps_memory_train_through_the_loop(objective, tmp_path):
  """Trainer.train() runs loops of several steps (the CLI's path) for every objective; those
  without an eps memory used to fail tracing the loop (a None carried through tf.range)."""
  from helpers import tiny_data  # pylint: disable=import-outside-toplevel
  data = tiny_data(num_train=60, num_validation=20, num_test=20, size=8)
  config = tiny_config(objective=objective, model='small_cnn', batch_size=20, train_steps=4,
                       steps_per_loop=2, log_every=4, checkpoint_every=4, nb_iter=1)
  summary = trainer_lib.Trainer(config, str(tmp_path), data=data, log=lambda m: None).train()
  assert summary['step'] == 4 and np.isfinite(summary['validation']['clean_acc'])

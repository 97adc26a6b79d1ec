"""The MMA loss against a direct re-computation of PAPER.md 2.3 on a tiny batch."""
import keras
import numpy as np
import tensorflow as tf

from helpers import LinearProblem
from mma_tf import configs, objectives
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
    loss, eps_out, _ = objective(model, x, y, eps0, seeds, tape, global_batch_size=16)
  grads = tape.gradient(loss, model.trainable_variables)

  # Direct re-computation from PAPER.md 2.3.
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


def test_omma_has_no_clean_term_and_other_objectives_run():
  p = LinearProblem('Linf', 10, batch=8)
  model = _linear_keras_model(p)
  seeds = example_seeds(0, np.arange(8))
  x = tf.constant(p.x)
  omma = configs.resolve('mnist_5k', 'Linf', dict(objective='omma', nb_iter=5))
  assert omma.clean_loss_coeff == 0
  for name in ('omma', 'pgd_at', 'standard'):
    config = configs.resolve('mnist_5k', 'Linf', dict(objective=name, nb_iter=5, pgd_eps=0.05))
    with tf.GradientTape() as tape:
      loss, eps_out, stats = objectives.build_objective(config)(
          model, x, p.y, np.zeros(8, np.float32), seeds, tape, 8)
    assert np.isfinite(float(loss)) and eps_out.shape == (8,)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    np.testing.assert_allclose(float(loss) * 8, stats['loss'].numpy().sum(), rtol=1e-5)

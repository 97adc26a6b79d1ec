"""TRADES (Zhang et al., ICML 2019), a baseline through the same loop as MMA.

loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), with x_adv maximising the same
KL within the pgd_eps ball, from x + 0.001 N(0, 1), by nb_iter steps of size
eps_iter_scale * pgd_eps / nb_iter (sign steps in Linf, L2-normalised steps in L2), the model in
inference mode during the search as the reference code's `model.eval()`.

Differences from the reference `trades.py`, on purpose: the clean train-mode logits are computed
once and used in both terms (the reference runs the clean batch through the model twice, which
moves BatchNorm statistics twice); the L2 search is our PGD with normalised steps, not the
reference's SGD on delta with renorm. With pgd_eps 0.3, 40 steps, step 0.01 and beta 1 or 6
(MNIST), or 8/255, 10 steps, step 0.007 and beta 6 (CIFAR-10), the attack is the reference's
(eps_iter_scale = step * nb_iter / pgd_eps: 1.33 and 2.2).
"""
import tensorflow as tf

from mma_tf import configs, losses, norms
from mma_tf.attacks import pgd
from mma_tf.objectives import Objective, ObjectiveOutput, compiled, correct, register

START_STDDEV = 0.001  # the reference's x + 0.001 * randn start


def kl_divergence(target_logits, logits):
  """Per-example KL(softmax(target_logits) || softmax(logits)), in float32."""
  target_logits = tf.cast(target_logits, tf.float32)
  p = tf.nn.softmax(target_logits)
  return tf.reduce_sum(p * (tf.nn.log_softmax(target_logits)
                            - tf.nn.log_softmax(tf.cast(logits, tf.float32))), axis=-1)


def trades_attack(predict, x, y, eps, *, norm, nb_iter, rel_step_size, seed, warm_start=None):
  """The TRADES inner maximisation: PGD on KL(f(x) || f(x')) from a small Gaussian start (or a
  remembered perturbation, see `pgd`'s warm_start)."""
  clean_logits = tf.stop_gradient(predict(x))
  start = lambda x, seeds: norms.normal_per_example(seeds, x, START_STDDEV)
  return pgd(predict, x, y, eps, norm=norm, nb_iter=nb_iter, rel_step_size=rel_step_size,
             loss=lambda logits, _: kl_divergence(clean_logits, logits), rand_init=start,
             seed=seed, warm_start=warm_start)


@register
class Trades(Objective):
  name = 'trades'
  settings = configs.TradesSettings

  def __call__(self, model, x, y, eps0, seeds, stop_recording, warm_start=None):
    c = self.config
    with stop_recording():
      x_adv = compiled(trades_attack, c)(self.attack_predictor(model, False), x, y, c.pgd_eps,
                                         norm=c.norm, nb_iter=c.nb_iter,
                                         rel_step_size=c.eps_iter_scale / c.nb_iter, seed=seeds,
                                         warm_start=warm_start)
    clean_logits = self.logits(model, x, True)
    adv_logits = self.logits(model, x_adv, True)
    natural = losses.cross_entropy(clean_logits, y)
    robust = kl_divergence(clean_logits, adv_logits)
    loss = natural + c.trades_beta * robust
    return ObjectiveOutput(loss, None, {'loss': loss, 'natural_loss': natural,
                                        'robust_kl': robust,
                                        'clean_correct': correct(clean_logits, y),
                                        'adv_correct': correct(adv_logits, y)},
                           perturbation=x_adv - x)

"""What a training step minimises: MMA / OMMA, PGD adversarial training and standard training.

An objective runs inside one replica under the trainer's GradientTape; it knows nothing about
strategies, checkpoints or files. It returns the replica's share of the global-batch loss, the
per-example eps to remember, and per-example statistics that the trainer sums across replicas.
Attacks run under `tape.stop_recording()`, so their inner gradients are never recorded.
"""
import tensorflow as tf

from mma_tf import losses
from mma_tf.attacks import anpgd, pgd
from mma_tf.evaluation.common import is_correct


def _predict(model, training):
  return lambda images: model(images, training=training)


def _compiled(attack, config):
  """The attack XLA-compiled when --jit_compile (it holds no cross-replica ops, so it compiles
  inside strategy.run); plain graph otherwise, which is faster on CPU (BUILD.md)."""
  return tf.function(attack, jit_compile=True) if config.jit_compile else attack


def _average(per_example, global_batch_size):
  return tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)


class Standard:
  """Cross-entropy on clean images."""
  uses_eps_memory = False

  def __init__(self, config):
    self.config = config

  def __call__(self, model, x, y, eps0, seeds, tape, global_batch_size):
    logits = model(x, training=True)
    ce = losses.cross_entropy(logits, y)
    stats = {'loss': ce, 'clean_correct': _correct(logits, y)}
    return _average(ce, global_batch_size), tf.zeros_like(eps0), stats


class PGDAdversarial:
  """Madry et al.: cross-entropy at a PGD point of fixed radius `pgd_eps` (attack in eval mode,
  step eps_iter_scale * eps / nb_iter, random start), the baseline the paper compares with."""
  uses_eps_memory = False

  def __init__(self, config):
    self.config = config

  def __call__(self, model, x, y, eps0, seeds, tape, global_batch_size):
    c = self.config
    with tape.stop_recording():
      x_adv = _compiled(pgd, c)(_predict(model, False), x, y, c.pgd_eps, norm=c.norm,
                                nb_iter=c.nb_iter, rel_step_size=c.eps_iter_scale / c.nb_iter,
                                loss='ce', rand_init=True, seed=seeds)
    logits = model(x_adv, training=True)
    ce = losses.cross_entropy(logits, y)
    stats = {'loss': ce, 'adv_correct': _correct(logits, y)}
    return _average(ce, global_batch_size), tf.zeros_like(eps0), stats


class MMA:
  """MMA (clean_loss_coeff c = 1/3) and OMMA (c = 0), as `trainer.py::train_one_batch` (docs/paper_notes.md 2.3).

  loss = c * mean CE(clean) + (1 - c) * [sum_{correct, eps_hat < d_max} CE(x + delta_hat)
                                         + sum_{wrong} CE(x)] / B
  "correct" means SLM < 0 (p_y > 1/2) on the clean train-mode pass; AN-PGD runs on those only,
  starting from max(attack_mineps, remembered eps); wrong examples are remembered as 0.

  BatchNorm, as the released code: passes (a) clean and (d) mixed run in train mode, the PGD
  iterations in eval mode, and the 1 + num_search_steps bisection forwards in the mode
  `search_bn_mode` ('train' as released). Every train-mode forward normalises with its own batch
  statistics and moves the moving statistics once, so a step moves them 2 + 1 + num_search_steps
  times with 'train' and 2 times with 'eval' (tests/test_bn_sgd.py); the train-mode search also
  mixes the unattacked examples into its batch statistics. Under several replicas those
  statistics are per replica unless the model is built with sync_batchnorm.
  """
  uses_eps_memory = True

  def __init__(self, config):
    self.config = config

  def __call__(self, model, x, y, eps0, seeds, tape, global_batch_size):
    c = self.config
    clean_logits = model(x, training=True)  # (a) clean pass: BN batch statistics, updates them
    clean_ce = losses.cross_entropy(clean_logits, y)
    correct = losses.soft_logit_margin(clean_logits, y) < 0  # (b) the SLM split
    eps0 = tf.maximum(eps0, c.attack_mineps)
    with tape.stop_recording():  # (c) AN-PGD on the correct examples
      x_mix, eps_hat = _compiled(anpgd, c)(
          _predict(model, False), x, y, eps0, maxeps=c.maxeps, norm=c.norm, nb_iter=c.nb_iter,
          eps_iter_scale=c.eps_iter_scale, num_search_steps=c.num_search_steps, rand_init=True,
          seed=seeds, mask=correct, search_predict=_predict(model, c.search_bn_mode == 'train'),
          released_quirks=c.released_quirks)
    mix_ce = losses.cross_entropy(model(x_mix, training=True), y)  # (d) one pass, mixed batch
    in_hinge = tf.logical_and(correct, eps_hat < c.hinge_maxeps)
    margin_terms = tf.where(tf.logical_or(in_hinge, tf.logical_not(correct)), mix_ce, 0.0)
    loss = (c.clean_loss_coeff * _average(clean_ce, global_batch_size)
            + (1 - c.clean_loss_coeff) * _average(margin_terms, global_batch_size))
    correct_f = tf.cast(correct, tf.float32)
    stats = {
        'loss': c.clean_loss_coeff * clean_ce + (1 - c.clean_loss_coeff) * margin_terms,
        'clean_correct': _correct(clean_logits, y),
        'slm_correct': correct_f,
        'eps_hat': eps_hat,  # 0 for wrong examples: the memory semantics of the released code
        'at_dmax': correct_f * tf.cast(eps_hat >= c.hinge_maxeps, tf.float32),
    }
    return loss, eps_hat, stats


def _correct(logits, y):
  return tf.cast(is_correct(logits, y), tf.float32)


OBJECTIVES = {'mma': MMA, 'omma': MMA, 'pgd_at': PGDAdversarial, 'standard': Standard}


def build_objective(config):
  return OBJECTIVES[config.objective](config)

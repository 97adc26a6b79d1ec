"""MMA and OMMA: the margin-maximising loss of Ding et al. at AN-PGD's shortest perturbation."""
import tensorflow as tf

from mma_tf import configs, losses
from mma_tf.attacks import anpgd
from mma_tf.objectives import Objective, ObjectiveOutput, compiled, correct, register


@register
class MMA(Objective):
  """MMA (clean_loss_coeff c = 1/3) and OMMA (c = 0), as the released `train_one_batch`
  (docs/paper_notes.md 2.3).

  loss = c * mean CE(clean) + (1 - c) * [sum_{correct, eps_hat < d_max} CE(x + delta_hat)
                                         + sum_{wrong} CE(x)] / B
  "correct" means SLM < 0 (p_y > 1/2) on the clean train-mode pass; AN-PGD runs on those only,
  starting from max(attack_mineps, remembered eps); wrong examples are remembered as 0.

  BatchNorm, as the released code: passes (a) clean and (d) mixed run in train mode, the PGD
  iterations in eval mode, and the 1 + num_search_steps search forwards in the mode
  `search_bn_mode` ('train' as released). Every train-mode forward normalises with its own batch
  statistics and moves the moving statistics once, so a step moves them 2 + 1 + num_search_steps
  times with 'train' and 2 times with 'eval' (tests/test_bn_sgd.py); the train-mode search also
  mixes the unattacked examples into its batch statistics. Under several replicas those
  statistics are per replica unless the model is built with sync_batchnorm.
  """
  name = 'mma'
  settings = configs.MMASettings
  uses_eps_memory = True

  def __call__(self, model, x, y, eps0, seeds, stop_recording, warm_start=None):
    c = self.config
    clean_logits = self.clean_pass(model, x, stop_recording)  # (a)
    clean_ce = losses.cross_entropy(clean_logits, y)
    clean_margin = losses.soft_logit_margin(clean_logits, y)
    is_correct = clean_margin < 0  # (b) the SLM split
    eps0 = tf.maximum(eps0, c.attack_mineps)
    with stop_recording():  # (c) AN-PGD on the correct examples
      x_mix, eps_hat = compiled(anpgd, c)(
          self.attack_predictor(model, False), x, y, eps0, maxeps=c.maxeps, norm=c.norm,
          nb_iter=c.nb_iter, eps_iter_scale=c.eps_iter_scale,
          num_search_steps=c.num_search_steps, rand_init=True, seed=seeds, mask=is_correct,
          search_predict=self.attack_predictor(model, c.search_bn_mode == 'train'),
          released_quirks=c.released_quirks, warm_start=warm_start, search=c.search,
          # The illinois search starts from the margin at x: in train mode the clean pass has
          # it (scale 0 is the clean batch); in eval mode the search computes it.
          zero_margin=(clean_margin if c.search == 'illinois' and c.search_bn_mode == 'train'
                       else None))
    mix_ce = losses.cross_entropy(self.logits(model, x_mix, True), y)  # (d) one pass, mixed batch
    in_hinge = tf.logical_and(is_correct, eps_hat < c.hinge_maxeps)
    margin_terms = tf.where(tf.logical_or(in_hinge, tf.logical_not(is_correct)), mix_ce, 0.0)
    loss = c.clean_loss_coeff * clean_ce + (1 - c.clean_loss_coeff) * margin_terms
    slm_correct = tf.cast(is_correct, tf.float32)
    stats = {
        'loss': loss,
        'clean_correct': correct(clean_logits, y),
        'slm_correct': slm_correct,
        'eps_hat': eps_hat,  # 0 for wrong examples: the memory semantics of the released code
        'at_dmax': slm_correct * tf.cast(eps_hat >= c.hinge_maxeps, tf.float32),
    }
    # The perturbation AN-PGD ended with, remembered for the attacked examples only.
    return ObjectiveOutput(loss, eps_hat, stats, perturbation=x_mix - x,
                           perturbation_mask=is_correct)

  def clean_pass(self, model, x, stop_recording):
    """(a) The clean train-mode pass (BN batch statistics, updated). With clean_loss_coeff 0
    (OMMA) its loss has weight 0, so the tape does not record it: the same step without a
    backward pass through the model (tests/test_search.py)."""
    if self.config.clean_loss_coeff == 0:
      with stop_recording():
        return self.logits(model, x, True)
    return self.logits(model, x, True)

  def summarize(self, sums, count):
    """Means, except avg_eps and frac_at_dmax: over the SLM-correct examples (the attacked)."""
    out = {k: v / count for k, v in sums.items() if k not in ('eps_hat', 'at_dmax')}
    if sums.get('slm_correct', 0) > 0:
      out['avg_eps'] = sums['eps_hat'] / sums['slm_correct']
      out['frac_at_dmax'] = sums['at_dmax'] / sums['slm_correct']
    return out


@register
class OMMA(MMA):
  """MMA without the clean loss: the configuration sets clean_loss_coeff = 0."""
  name = 'omma'
  settings = configs.OMMASettings

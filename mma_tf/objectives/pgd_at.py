"""PGD adversarial training (Madry et al.), the baseline the MMA paper compares with."""
from mma_tf import configs, losses
from mma_tf.attacks import pgd
from mma_tf.objectives import Objective, ObjectiveOutput, compiled, correct, register


@register
class PGDAdversarial(Objective):
  """Cross-entropy at a PGD point of fixed radius `pgd_eps` (attack in eval mode, step
  eps_iter_scale * eps / nb_iter, random start). Best checkpoint by the validation average
  margin, as for MMA, so the paper's comparisons select both the same way."""
  name = 'pgd_at'
  settings = configs.PGDSettings

  def __call__(self, model, x, y, eps0, seeds, stop_recording, warm_start=None):
    c = self.config
    with stop_recording():
      x_adv = compiled(pgd, c)(self.attack_predictor(model, False), x, y, c.pgd_eps,
                               norm=c.norm, nb_iter=c.nb_iter,
                               rel_step_size=c.eps_iter_scale / c.nb_iter, loss='ce',
                               rand_init=True, seed=seeds, warm_start=warm_start)
    logits = self.logits(model, x_adv, True)
    ce = losses.cross_entropy(logits, y)
    return ObjectiveOutput(ce, None, {'loss': ce, 'adv_correct': correct(logits, y)},
                           perturbation=x_adv - x)

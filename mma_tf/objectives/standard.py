"""Standard training: cross-entropy on clean images."""
from mma_tf import configs, losses
from mma_tf.objectives import Objective, ObjectiveOutput, correct, register


@register
class Standard(Objective):
  name = 'standard'
  settings = configs.StandardSettings

  def __call__(self, model, x, y, eps0, seeds, stop_recording):
    logits = self.logits(model, x, True)
    ce = losses.cross_entropy(logits, y)
    return ObjectiveOutput(ce, None, {'loss': ce, 'clean_correct': correct(logits, y)})

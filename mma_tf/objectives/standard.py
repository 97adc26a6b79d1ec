"""Standard training: cross-entropy on clean images."""
from mma_tf import losses
from mma_tf.objectives import Objective, ObjectiveOutput, correct, register


@register
class Standard(Objective):
  name = 'standard'

  def __call__(self, model, x, y, eps0, seeds, stop_recording):
    logits = self.logits(model, x, True)
    ce = losses.cross_entropy(logits, y)
    return ObjectiveOutput(ce, None, {'loss': ce, 'clean_correct': correct(logits, y)})

"""Validation and the choice of the best model.

The best model is chosen among epoch ends by the objective's selection metric, and, if the run's
last step ends no epoch, that final step: its validation competes only at the end of the run, so
a run stopped there and resumed for longer chooses as a run of the final length would.
"""


class BestModelSelection:
  """Validates the task and keeps the best epoch end in `checkpoints` (its value, step, model)."""

  def __init__(self, task, checkpoints, steps_per_epoch):
    self.task, self.checkpoints, self.steps_per_epoch = task, checkpoints, steps_per_epoch
    self.metric = task.objective.selection_metric

  def validate(self, step):
    """Validation after an epoch, or at a final step that ends none: (metrics, note). At an
    epoch end a new best saves the best model; a final step's validation never replaces it (a
    longer run would not validate there): `final_choice` weighs it against the best."""
    val = self.task.validate('validation')
    at_epoch_end = step % self.steps_per_epoch == 0
    improved = val[self.metric] > float(self.checkpoints.best_value.numpy())
    if improved and at_epoch_end:
      self.checkpoints.save_best(step, val[self.metric])
    note = ''
    if improved:
      note = ' (best)' if at_epoch_end else ' (final step; above the best epoch end)'
    return val, note

  def final_choice(self, step, last_val):
    """At the run's end: (best value, its step, the checkpoint to export (None: the best
    model's), the validation at `step`). `last_val` is that validation, {} if none ran."""
    best_value = float(self.checkpoints.best_value.numpy())
    best_step = int(self.checkpoints.best_step.numpy())
    if step % self.steps_per_epoch == 0:
      return best_value, best_step, None, last_val
    if not last_val:  # a finished run started again: its final step is validated again
      last_val = self.task.validate('validation')
    if last_val[self.metric] > best_value:
      return last_val[self.metric], step, self.checkpoints.latest(), last_val
    return best_value, best_step, None, last_val

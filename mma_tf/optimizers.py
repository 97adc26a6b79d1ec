"""The optimizers of the released code: PyTorch's SGD with momentum or Adam, and PyTorch's
MultiStepLR learning-rate schedule, stepped per iteration."""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='mma_tf')  # a saved Keras wrapper names it
class TorchSGD(keras.optimizers.Optimizer):
  """PyTorch's SGD with momentum (dampening 0, no Nesterov): v = mu v + g; w -= lr v.

  Keras' SGD keeps lr inside v instead (v = mu v - lr g), which differs from the released code
  just after each learning-rate drop. Weight decay is not applied here: the task adds
  0.5 * wd * ||w||^2 to the loss, so g already holds PyTorch's `g + wd * w`.
  """

  def __init__(self, learning_rate, momentum=0.9, name='torch_sgd', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self._velocities = [self.add_variable_from_reference(v, 'velocity') for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    velocity = self._velocities[self._get_variable_index(variable)]
    gradient = tf.cast(gradient, variable.dtype)
    self.assign(velocity, self.momentum * velocity + gradient)
    self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * velocity)

  def get_config(self):
    return dict(super().get_config(), momentum=self.momentum)


def learning_rate(config, step=None):
  """A constant, or PyTorch's MultiStepLR stepped per iteration: the step numbered k (1-based)
  uses lr_values[i] where i counts the boundaries b < k. Keras calls a schedule with the number
  of steps already taken (k - 1): the optimizer's own count, unless `step` (the trainer's step
  variable) is given; then a callable reading it, so the schedule follows the trainer's steps
  even where a float16 loss-scale optimizer skips one (its count then lags)."""
  if not config.lr_values:
    return config.learning_rate
  # PyTorch sets the new rate after `boundary` steps; Keras' schedule switches when
  # iterations > boundary, i.e. one step later unless the boundary is shifted by one.
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
      [b - 1 for b in config.lr_boundaries], list(config.lr_values))
  return schedule if step is None else (lambda: schedule(step))


def build_optimizer(config, step=None):
  """The configured optimizer; `step`: the variable counting the trainer's steps, which a
  learning-rate schedule then follows (see `learning_rate`)."""
  rate = learning_rate(config, step)
  if config.optimizer == 'adam':
    optimizer = keras.optimizers.Adam(rate, epsilon=1e-8)  # PyTorch's eps
  else:
    optimizer = TorchSGD(rate, momentum=config.momentum)
  if config.mixed_precision == 'mixed_float16':
    # Scales the loss, unscales the gradients, skips a step with non-finite gradients and adapts
    # the scale; its state is part of the optimizer's, so checkpoints keep it.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer

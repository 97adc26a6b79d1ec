"""Independent per-example estimates of the input-space margin (the minimal adversarial norm).

Each is an upper bound of the true margin (the smallest radius at which the method found an
adversarial point; maxeps when it found none, 0 when the clean point is already wrong), so a
weakness of one shows as disagreement and their per-example minimum is the best estimate:
- 'anpgd': AN-PGD's bisection along one PGD direction (the validation variant of the MMA code);
- 'pgd_bisection': a bisection on the radius of PGD itself;
- 'fab': FAB-T's minimal-norm search over the 9 runner-up classes.
"""
import tensorflow as tf

from mma_tf.attacks import anpgd_test, fab_targeted, pgd
from mma_tf.evaluation.common import is_correct, stream_example_seeds


def estimator(name, predict, config):
  """fn(x, y, index) -> (margin [B],) for `Runner.map`."""
  maxeps = config.maxeps
  # At least 2.5 x eps of travel, and no smaller than the paper protocol's step: from
  # advertorch's L2 start on the sphere, smaller steps leave PGD a few degrees off.
  rel_step = max(config.rel_step, 2.5 / config.margin_nb_iter)

  def anpgd_margin(x, y, index):
    _, eps_hat = anpgd_test(predict, x, y, test_eps=maxeps / 2, maxeps=maxeps, norm=config.norm,
                            nb_iter=config.margin_nb_iter, test_eps_iter=rel_step * maxeps / 2,
                            num_search_steps=config.search_steps,
                            seed=stream_example_seeds(config.seed, 'margin/anpgd', index),
                            released_quirks=False)
    return eps_hat

  def bisection_margin(x, y, index):
    lower = tf.zeros(tf.shape(y), tf.float32)
    upper = tf.fill(tf.shape(y), tf.cast(maxeps, tf.float32))
    for s in range(config.search_steps):
      mid = (lower + upper) / 2
      x_adv = pgd(predict, x, y, mid, norm=config.norm, nb_iter=config.margin_nb_iter, loss='ce',
                  rel_step_size=rel_step,
                  seed=stream_example_seeds(config.seed, f'margin/bisection/{s}', index))
      success = tf.logical_not(is_correct(predict(x_adv), y))
      upper = tf.where(success, mid, upper)
      lower = tf.where(success, lower, mid)
    return upper

  def fab_margin(x, y, index):
    _, _, min_norm = fab_targeted(predict, x, y, maxeps, norm=config.norm,
                                  nb_iter=config.fab_nb_iter,
                                  n_target_classes=config.n_target_classes, all_targets=True)
    return tf.minimum(min_norm, maxeps)

  fn = {'anpgd': anpgd_margin, 'pgd_bisection': bisection_margin, 'fab': fab_margin}[name]

  def margin(x, y, index):
    m = fn(x, y, index)
    return (tf.where(is_correct(predict(x), y), m, tf.zeros_like(m)),)

  return margin

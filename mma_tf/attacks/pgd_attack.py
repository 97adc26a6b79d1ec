"""Projected gradient descent (PGD) with per-example radii: a pure function of (predict, x, y, eps).

Graph friendly: static shapes, stateless random starts, no host round trips, so the same code runs
eagerly, inside `tf.function` (with or without `jit_compile`) and inside `strategy.run`.
"""
import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.attacks.common import (CLIP_MAX, CLIP_MIN, check_attack_inputs, check_count,
                                   input_gradient, per_example_vector, seeds_for_batch)


def pgd(predict, x, y, eps, *, norm='Linf', nb_iter=40, step_size=None, rel_step_size=None,
        loss='ce', rand_init=True, seed=0, clip_min=CLIP_MIN, clip_max=CLIP_MAX, warm_start=None):
  """Untargeted PGD that maximises `loss` within the `norm`-ball of radius eps around x.

  Args:
    predict: callable images -> logits (e.g. `lambda x: model(x, training=False)`).
    x: images [B, ...] inside [clip_min, clip_max]. y: integer labels [B].
    eps: radius, a scalar or one per example [B]. An example with eps 0 is left unchanged, so eps
      doubles as a mask of which examples to attack.
    nb_iter: number of ascent steps (a Python int: it sets the graph's structure).
    step_size: absolute step (scalar or [B]); or rel_step_size: step as a fraction of eps.
      Default: rel_step_size = 2.5 / nb_iter (Madry et al.; the MMA code's eps_iter_scale).
    loss: 'ce', 'slm', 'lm', 'cw' or a callable (logits, labels) -> per-example loss.
      It is summed over the batch, so per-example gradients do not depend on the batch size.
    rand_init: True: start from advertorch's random point in the ball (docs/paper_notes.md 2.2);
      False: from x; or a callable (x, seeds [B, 2]) -> delta for another start (TRADES').
    seed: int, a [2] stateless seed, or per-example seeds [B, 2] (see `example_seeds`).
    warm_start: None, or (delta [B, ...], known [B] bool): examples marked known start from their
      delta projected onto their eps-ball and the box (a perturbation remembered from an earlier
      step); the others start as `rand_init` says.
  Returns:
    The adversarial batch, clipped to [clip_min, clip_max] (the last iterate, as advertorch).
  """
  geometry = norms_lib.get_norm(norm)
  loss_fn = losses_lib.get_loss(loss)
  check_attack_inputs(x, y, eps, clip_min, clip_max)
  if step_size is not None and rel_step_size is not None:
    raise ValueError('Give step_size or rel_step_size, not both.')
  nb_iter = check_count(nb_iter, 'nb_iter')
  x = tf.convert_to_tensor(x)
  batch_size = tf.shape(x)[0]
  eps = per_example_vector(eps, batch_size, x.dtype)
  if step_size is None:
    rel = 2.5 / max(nb_iter, 1) if rel_step_size is None else rel_step_size
    step = eps * rel
  else:
    check_attack_inputs(x, y, step_size, clip_min, clip_max, name='step_size')
    step = per_example_vector(step_size, batch_size, x.dtype)

  if callable(rand_init):
    delta = rand_init(x, seeds_for_batch(seed, batch_size))
  elif rand_init:
    delta = geometry.random_init(x, eps, seeds_for_batch(seed, batch_size), clip_min, clip_max)
  else:
    delta = tf.zeros_like(x)
  if warm_start is not None:
    start, known = warm_start
    start = geometry.project(x, tf.cast(start, x.dtype), eps, clip_min, clip_max)
    delta = tf.where(norms_lib.per_example(known, x) > 0, start, delta)

  def body(i, delta):
    grad = input_gradient(predict, loss_fn, x + delta, y)
    return i + 1, geometry.ascend(x, delta, grad, eps, step, clip_min, clip_max)

  _, delta = tf.while_loop(lambda i, _: i < nb_iter, body, (tf.constant(0), delta),
                           maximum_iterations=nb_iter)
  return tf.clip_by_value(x + delta, clip_min, clip_max)

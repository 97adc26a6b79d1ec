"""AN-PGD (adaptive-norm PGD): the shortest successful perturbation along a PGD direction.

`anpgd` is the training variant (`anpgd.py::ANPGD` of the released MMA code, docs/paper_notes.md
2.1) and `anpgd_test` the validation variant (`ANPGDForTest`, docs/paper_notes.md 2.5). Both work
on the whole batch with per-example radii, so shapes stay static; a mask selects the examples to
attack.
"""
import numpy as np
import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.attacks.common import (CLIP_MAX, CLIP_MIN, check_attack_inputs, check_count,
                                   is_concrete, per_example_vector)
from mma_tf.attacks.pgd_attack import pgd


def bisection_search(margin_fn, x, u, first_scale, first_margin, maxeps, num_steps,
                     clip_min=CLIP_MIN, clip_max=CLIP_MAX, use_last_margin=False):
  """1-D bisection on the scale e of x + e*u for the boundary margin_fn = 0 (the released rules).

  The bracket starts at [0, maxeps]. Each step moves the lower bound up to the current scale where
  the margin is < 0 (not yet successful) and the upper bound down where it is >= 0, then takes the
  midpoint. `first_margin` is the margin already known at `first_scale`.

  Returns (scale, lower, upper). With use_last_margin=False (released code) `scale` is the last
  midpoint and the margin evaluated there is not used; with True, that margin also updates the
  bracket and `scale` is the upper bound: the smallest scale known to succeed (maxeps if none did).
  """
  maxeps = tf.broadcast_to(tf.cast(maxeps, x.dtype), tf.shape(first_scale))
  lower = tf.zeros_like(first_scale)
  upper = maxeps
  scale, margin = first_scale, first_margin

  def update(lower, upper, scale, margin):
    success = margin >= 0
    lower = tf.maximum(lower, tf.where(success, tf.zeros_like(scale), scale))
    upper = tf.minimum(upper, tf.where(success, scale, maxeps))
    return lower, upper

  for _ in range(num_steps):  # 10 steps, unrolled: no loop overhead around single forwards
    lower, upper = update(lower, upper, scale, margin)
    scale = (lower + upper) / 2
    margin = margin_fn(tf.clip_by_value(x + norms_lib.per_example(scale, x) * u, clip_min,
                                        clip_max))
  if use_last_margin:
    lower, upper = update(lower, upper, scale, margin)
    scale = upper
  return scale, lower, upper


def _check_search_args(maxeps, num_search_steps):
  check_count(num_search_steps, 'num_search_steps', 1)
  if is_concrete(maxeps) and not float(maxeps) > 0:
    raise ValueError(f'maxeps must be > 0; got {maxeps}.')


def anpgd(predict, x, y, eps0, *, maxeps, norm='Linf', nb_iter=40, eps_iter_scale=2.5,
          num_search_steps=10, rand_init=True, seed=0, mask=None, search_predict=None,
          clip_min=CLIP_MIN, clip_max=CLIP_MAX, released_quirks=True, warm_start=None):
  """Training AN-PGD: PGD at eps0, then bisection along the PGD direction with the SLM test.

  Args:
    predict: images -> logits used by the PGD iterations (the released code: eval mode).
    eps0: per-example starting radius [B] (or scalar), the example's remembered eps.
    maxeps: upper end of the search (the released trainer uses 1.05 * d_max).
    mask: bool [B], the examples to attack (default all). Others get eps_hat 0 and x unchanged.
    search_predict: images -> logits for the bisection; default `predict`. The released code
      searches in train mode (BN batch statistics), see docs/paper_notes.md 2.4 item 2.
    released_quirks: True reproduces the released code: u = (x_pgd - x) / eps0, eps_hat is the
      last midpoint (its margin unused) and x + eps_hat*u is NOT clipped to the box. False returns
      the smallest scale known to succeed and clips the result to [clip_min, clip_max].
    warm_start: None, or (delta [B, ...], known [B] bool): the PGD at eps0 starts from delta
      (projected onto the eps0-ball and the box) for the known examples (see `pgd`).
  Returns:
    (x_adv [B, ...], eps_hat [B]).
  """
  _check_search_args(maxeps, num_search_steps)
  check_attack_inputs(x, y, eps0, clip_min, clip_max, name='eps0')
  if is_concrete(eps0) and is_concrete(maxeps):
    if np.any(np.asarray(eps0, np.float64) > float(maxeps)):
      raise ValueError(f'eps0 must not exceed maxeps ({maxeps}).')
  x = tf.convert_to_tensor(x)
  batch_size = tf.shape(x)[0]
  eps0 = per_example_vector(eps0, batch_size, x.dtype)
  if mask is not None:
    eps0 = tf.where(mask, eps0, tf.zeros_like(eps0))  # radius 0: PGD leaves the example alone
  x_pgd = pgd(predict, x, y, eps0, norm=norm, nb_iter=nb_iter,
                      rel_step_size=eps_iter_scale / nb_iter, loss='slm', rand_init=rand_init,
                      seed=seed, clip_min=clip_min, clip_max=clip_max, warm_start=warm_start)
  unit = (x_pgd - x) / norms_lib.per_example(eps0 + 1e-12, x)
  search_predict = search_predict or predict
  margin_fn = lambda images: losses_lib.soft_logit_margin(search_predict(images), y)
  eps_hat, _, _ = bisection_search(margin_fn, x, unit, eps0, margin_fn(x_pgd), maxeps,
                                   num_search_steps, clip_min, clip_max,
                                   use_last_margin=not released_quirks)
  x_adv = x + norms_lib.per_example(eps_hat, x) * unit
  if not released_quirks:
    x_adv = tf.clip_by_value(x_adv, clip_min, clip_max)
  if mask is not None:
    eps_hat = tf.where(mask, eps_hat, tf.zeros_like(eps_hat))
    x_adv = tf.where(norms_lib.per_example(mask, x) > 0, x_adv, x)
  return x_adv, eps_hat


def anpgd_test(predict, x, y, *, test_eps, maxeps, norm='Linf', nb_iter=40, test_eps_iter=None,
               num_search_steps=10, rand_init=True, seed=0, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
               released_quirks=True):
  """Validation AN-PGD (`ANPGDForTest`): fixed-eps PGD, then bisection with the LM (argmax) test.

  PGD runs at `test_eps` with step `test_eps_iter` (default 2.5*test_eps/nb_iter) and the SLM loss.
  released_quirks=True reproduces the released search: the margin measured at test_eps is
  attributed to the scale 0.5*maxeps for the first bracket update (docs/paper_notes.md 2.5) and
  the returned scale is the last midpoint. False attributes it to test_eps and returns the smallest
  scale known to succeed. Returns (x_at_eps_hat clipped to the box, eps_hat [B]).
  """
  _check_search_args(maxeps, num_search_steps)
  check_attack_inputs(x, y, test_eps, clip_min, clip_max, name='test_eps')
  x = tf.convert_to_tensor(x)
  batch_size = tf.shape(x)[0]
  test_eps = per_example_vector(test_eps, batch_size, x.dtype)
  x_pgd = pgd(predict, x, y, test_eps, norm=norm, nb_iter=nb_iter, step_size=test_eps_iter,
                      loss='slm', rand_init=rand_init, seed=seed, clip_min=clip_min,
                      clip_max=clip_max)
  unit = (x_pgd - x) / norms_lib.per_example(test_eps + 1e-12, x)
  margin_fn = lambda images: losses_lib.logit_margin(predict(images), y)
  maxeps_vec = per_example_vector(maxeps, batch_size, x.dtype)
  first_scale = 0.5 * maxeps_vec if released_quirks else test_eps
  eps_hat, _, _ = bisection_search(margin_fn, x, unit, first_scale, margin_fn(x_pgd), maxeps_vec,
                                   num_search_steps, clip_min, clip_max,
                                   use_last_margin=not released_quirks)
  x_adv = tf.clip_by_value(x + norms_lib.per_example(eps_hat, x) * unit, clip_min, clip_max)
  return x_adv, eps_hat

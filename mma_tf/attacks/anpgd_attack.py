"""AN-PGD (adaptive-norm PGD): the shortest successful perturbation along a PGD direction.

`anpgd` is the training variant (`anpgd.py::ANPGD` of the released MMA code, docs/paper_notes.md
2.1) and `anpgd_test` the validation variant (`ANPGDForTest`, docs/paper_notes.md 2.5). Both work
on the whole batch with per-example radii, so shapes stay static; a mask selects the examples to
attack.

The search along the PGD direction is the released bisection, or (training, opt-in) `illinois`:
regula falsi with the Illinois modification, which along a nearly linear margin (a ReLU network's
is piecewise linear in the scale) finds the boundary in a few forwards instead of ten.
"""
import numpy as np
import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.configs import SEARCHES
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


# While no scale is known to succeed, the step to the extrapolated boundary is lengthened by this
# fraction, so that a nearly linear margin is crossed (bracketed) by the next forward.
OVERSHOOT = 0.1


def illinois_search(margin_fn, x, u, first_scale, first_margin, zero_margin, maxeps, num_steps,
                    clip_min=CLIP_MIN, clip_max=CLIP_MAX, use_last_margin=False):
  """Regula falsi with the Illinois modification on the scale e of x + e*u for margin_fn = 0.

  Known before the first of the `num_steps` forwards: the margin `zero_margin` at e = 0 (< 0: the
  example is not yet successful) and `first_margin` at `first_scale`. While no scale is known to
  succeed, the next scale is the root of the line through the last two failing scales, overshot
  by OVERSHOOT of the step so that a nearly linear margin is bracketed at once (maxeps at most;
  the midpoint to maxeps when the margin does not grow). Once bracketed, the next scale is the
  root of the chord between the bracket's ends, and an end kept twice in a row has its margin
  halved (Illinois), so that neither end stays fixed for long. On a linear margin the boundary is
  exact after 2 forwards (1 when the first scale already succeeds).

  Returns (scale, lower, upper) as `bisection_search`: with use_last_margin=False `scale` is the
  boundary's best estimate, like the released last midpoint not itself evaluated: the root of the
  chord between the final bracket's ends, or, when no scale tried succeeded, of the line through
  the last two failing scales (between the last and maxeps: maxeps once maxeps itself failed);
  with True, the upper end: the smallest scale known to succeed (maxeps if none did).
  """
  dtype = first_scale.dtype
  maxeps = tf.broadcast_to(tf.cast(maxeps, dtype), tf.shape(first_scale))
  tiny = tf.constant(1e-12, dtype)
  # Bracket [lower, upper]: margins f_lower < 0 <= f_upper (f_upper only once `bracketed`); the
  # Illinois weights live in w_lower / w_upper; (before, f_before) is the failing scale before
  # `lower`, for the line extrapolated while not bracketed. `moved`: +1 upper, -1 lower last.
  lower, f_lower = tf.zeros_like(first_scale), tf.minimum(zero_margin, -tiny)
  upper, f_upper = maxeps, tf.zeros_like(first_scale)
  before, f_before = lower, f_lower
  w_lower, w_upper = f_lower, f_upper
  bracketed = tf.zeros_like(first_scale, tf.bool)
  moved = tf.zeros_like(first_scale)

  def update(state, scale, margin):
    lower, f_lower, w_lower, upper, f_upper, w_upper, before, f_before, bracketed, moved = state
    success = margin >= 0
    up = tf.logical_and(success, tf.logical_or(scale < upper, tf.logical_not(bracketed)))
    down = tf.logical_and(tf.logical_not(success), scale > lower)
    # Illinois: the end kept twice in a row has its weight halved.
    w_lower = tf.where(tf.logical_and(up, moved > 0), 0.5 * w_lower, w_lower)
    w_upper = tf.where(tf.logical_and(down, moved < 0), 0.5 * w_upper, w_upper)
    before = tf.where(down, lower, before)
    f_before = tf.where(down, f_lower, f_before)
    lower, f_lower = tf.where(down, scale, lower), tf.where(down, margin, f_lower)
    w_lower = tf.where(down, margin, w_lower)
    upper, f_upper = tf.where(up, scale, upper), tf.where(up, margin, f_upper)
    w_upper = tf.where(up, margin, w_upper)
    bracketed = tf.logical_or(bracketed, up)
    moved = tf.where(up, tf.ones_like(moved), tf.where(down, -tf.ones_like(moved), moved))
    return lower, f_lower, w_lower, upper, f_upper, w_upper, before, f_before, bracketed, moved

  def chord_root(a, fa, b, fb):
    """Where the line through (a, fa < 0) and (b, fb >= 0) crosses 0, inside [a, b]."""
    root = b - fb * (b - a) / tf.maximum(fb - fa, tiny)
    return tf.clip_by_value(root, a, b)

  def line_root(lower, f_lower, before, f_before):
    """(where the line through the last two failing scales crosses 0, whether it rises)."""
    slope = (f_lower - f_before) / tf.maximum(lower - before, tiny)
    rises = tf.logical_and(lower > before, slope > 0)
    return lower - f_lower / tf.where(rises, slope, tf.ones_like(slope)), rises

  def next_scale(state):
    lower, f_lower, w_lower, upper, _, w_upper, before, f_before, bracketed, _ = state
    root, rises = line_root(lower, f_lower, before, f_before)
    extrapolated = tf.where(rises, lower + (1 + OVERSHOOT) * (root - lower), (lower + maxeps) / 2)
    return tf.where(bracketed, chord_root(lower, w_lower, upper, w_upper),
                    tf.minimum(extrapolated, maxeps))

  state = (lower, f_lower, w_lower, upper, f_upper, w_upper, before, f_before, bracketed, moved)
  state = update(state, first_scale, first_margin)
  for _ in range(num_steps):  # unrolled, as the bisection
    scale = next_scale(state)
    point = x + norms_lib.per_example(scale, x) * u
    margin = margin_fn(tf.clip_by_value(point, clip_min, clip_max))
    state = update(state, scale, margin)
  lower, f_lower, _, upper, f_upper, _, before, f_before, bracketed, _ = state
  if use_last_margin:
    return tf.where(bracketed, upper, maxeps), lower, upper
  root, rises = line_root(lower, f_lower, before, f_before)
  unbracketed = tf.clip_by_value(tf.where(rises, root, maxeps), lower, maxeps)
  return tf.where(bracketed, chord_root(lower, f_lower, upper, f_upper), unbracketed), lower, upper


def _check_search_args(maxeps, num_search_steps):
  check_count(num_search_steps, 'num_search_steps', 1)
  if is_concrete(maxeps) and not float(maxeps) > 0:
    raise ValueError(f'maxeps must be > 0; got {maxeps}.')


def anpgd(predict, x, y, eps0, *, maxeps, norm='Linf', nb_iter=40, eps_iter_scale=2.5,
          num_search_steps=10, rand_init=True, seed=0, mask=None, search_predict=None,
          clip_min=CLIP_MIN, clip_max=CLIP_MAX, released_quirks=True, warm_start=None,
          search='bisection', zero_margin=None):
  """Training AN-PGD: PGD at eps0, then a search along the PGD direction with the SLM test.

  Args:
    predict: images -> logits used by the PGD iterations (the released code: eval mode).
    eps0: per-example starting radius [B] (or scalar), the example's remembered eps.
    maxeps: upper end of the search (the released trainer uses 1.05 * d_max).
    mask: bool [B], the examples to attack (default all). Others get eps_hat 0 and x unchanged.
    search_predict: images -> logits for the search; default `predict`. The released code
      searches in train mode (BN batch statistics), see docs/paper_notes.md 2.4 item 2.
    released_quirks: True reproduces the released code: u = (x_pgd - x) / eps0, eps_hat is the
      last midpoint (its margin unused) and x + eps_hat*u is NOT clipped to the box. False returns
      the smallest scale known to succeed and clips the result to [clip_min, clip_max].
    warm_start: None, or (delta [B, ...], known [B] bool): the PGD at eps0 starts from delta
      (projected onto the eps0-ball and the box) for the known examples (see `pgd`).
    search: 'bisection' (released) or 'illinois' (`illinois_search`, num_search_steps forwards
      after the one at the PGD point, the last one used too).
    zero_margin: 'illinois' only: the SLM margin at x [B] under search_predict, when the caller
      has it (MMA's clean pass); default: one more forward computes it.
  Returns:
    (x_adv [B, ...], eps_hat [B]).
  """
  _check_search_args(maxeps, num_search_steps)
  if search not in SEARCHES:
    raise ValueError(f'Unknown search {search!r}; choose one of {SEARCHES}.')
  if zero_margin is not None and search != 'illinois':
    raise ValueError("zero_margin is the illinois search's starting point; "
                     f"search={search!r} does not use it.")
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
  if search == 'illinois':
    zero_margin = margin_fn(x) if zero_margin is None else tf.cast(zero_margin, x.dtype)
    eps_hat, _, _ = illinois_search(margin_fn, x, unit, eps0, margin_fn(x_pgd), zero_margin,
                                    maxeps, num_search_steps, clip_min, clip_max,
                                    use_last_margin=not released_quirks)
  else:
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

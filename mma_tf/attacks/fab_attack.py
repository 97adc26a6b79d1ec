"""FAB-T (targeted Fast Adaptive Boundary, Croce & Hein 2020) as AutoAttack's standard run uses it.

FAB is a minimal-norm attack: it linearises the boundary between the true class y and a target t,
steps to the projection of the current iterate (and of x) onto that hyperplane inside the box,
and keeps the smallest-norm misclassified iterate. AutoAttack turns it into an eps-attack by
accepting only results of norm <= eps (docs/autoattack.md 3). Standard values: no random start, one
restart, 100 iterations per target, alpha_max 0.1, eta 1.05, beta 0.9, targets = ranks 2..10 of
the clean logits. Linf and L2.

Departures from the reference code (`fab_base.py`, `fab_projections.py`), none of which changes a
result in exact arithmetic:
- Whole-batch, static shapes: the reference attacks only the clean-correct (and, for later
  targets, still-robust) examples by gathering them; here every example runs and a mask decides
  whose results are kept. One `tf.while_loop` per run, inside one loop over the targets (the
  model appears once in the graph); a run stops early only once no example is being attacked.
- The projection onto hyperplane and box solves the same 1-D problem exactly by Newton's method
  (the reference sorts the breakpoints and bisects over them), and uses the box
  [clip_min, clip_max] instead of a hard-coded [0, 1].
- "Not found" is +inf instead of 1e10, and the minimal norm is returned (`min_norm`) so the attack
  doubles as a margin estimate; `fab_targeted(all_targets=True)` runs every target on every example.
- Deterministic: the standard FAB-T has no random start, so there is no randomness at all.
- Targets come from `losses.target_by_rank` (a stable sort): exactly tied clean logits may pick
  another class than torch's sort.
"""
import numpy as np
import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.attacks.common import (CLIP_MAX, CLIP_MIN, check_attack_inputs, check_count,
                                   per_example_vector)

_NORM_FLOOR = 1e-8  # the reference floors both step norms before forming alpha
_L2_ZERO_W = 1e-8  # the reference's L2 projection ignores coordinates with |w_i| below this


def _flat(x):
  return tf.reshape(x, [tf.shape(x)[0], -1])


def _logits(predict, x):
  """Logits in float32 at least (half-precision models), float64 kept for float64 models."""
  logits = predict(x)
  return logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)


def project_onto_hyperplane_in_box(t, w, b, norm='Linf', clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """Smallest `norm` step d with <w, t + d> = b and t + d in the box, per row
  (docs/autoattack.md 3.2).

  t, w: [N, D]; b: [N]. Where the box cannot reach the hyperplane, d goes to the box corner that
  moves <w, .> furthest toward b (FAB still moves toward the boundary). Written as a 1-D problem:
  with c = |<w,t> - b| and m_i >= 0 the move of coordinate i against the sign of w_i, the optimum
  is m_i = min(lam, u_i) (Linf) or min(lam |w_i|, u_i) (L2), u_i the room to the box, and lam
  solves G(lam) = sum_i slope_i min(lam, break_i) = c (see the code for slope and break).
  G is piecewise linear, concave and non-decreasing, so Newton's method from lam = 0 never
  overshoots the root and is exact as soon as a step crosses no breakpoint: it ends after at most
  one step per distinct breakpoint, and after 2-5 steps on FAB's iterates of MNIST digits:
  2.5-5x faster on CPU than sorting the D breakpoints, the reference's way
  (bench/bench_fab_projection.py).
  Returns d [N, D].
  """
  name = norms_lib.get_norm(norm).name
  t = tf.convert_to_tensor(t)
  w = tf.cast(w, t.dtype)
  c = tf.reduce_sum(w * t, axis=1) - tf.cast(b, t.dtype)
  flip = tf.where(c < 0, -tf.ones_like(c), tf.ones_like(c))
  w, c = w * flip[:, None], c * flip  # now c >= 0: <w, .> must decrease by c
  used = tf.abs(w) >= _L2_ZERO_W if name == 'L2' else tf.not_equal(w, 0)
  zeros = tf.zeros_like(w)
  w = tf.where(used, w, zeros)
  abs_w = tf.abs(w)
  room = tf.where(w > 0, t - clip_min, clip_max - t)
  room = tf.where(used, tf.maximum(room, 0), zeros)
  if name == 'Linf':
    breaks, slopes = room, abs_w
  else:
    breaks, slopes = tf.math.divide_no_nan(room, abs_w), tf.square(w)
  # Rows that cannot reach the hyperplane start done; the rest step until a step crosses nothing.
  feasible = c < tf.reduce_sum(abs_w * room, axis=1)

  def newton_step(lam, done):
    above = breaks > lam[:, None]
    value = tf.reduce_sum(slopes * tf.minimum(lam[:, None], breaks), axis=1)
    slope = tf.reduce_sum(tf.where(above, slopes, zeros), axis=1)
    new = lam + tf.math.divide_no_nan(c - value, slope)
    crossed = tf.reduce_any(above & (breaks < new[:, None]), axis=1)
    return tf.where(done, lam, new), done | ~crossed

  lam, _ = tf.while_loop(lambda lam, done: ~tf.reduce_all(done), newton_step,
                         (tf.zeros_like(c), ~feasible), maximum_iterations=tf.shape(t)[1] + 1)
  move = tf.minimum(lam[:, None] * (abs_w if name == 'L2' else tf.ones_like(w)), room)
  move = tf.where(feasible[:, None], move, room)
  return -tf.sign(w) * move


def _check_fab_args(nb_iter, alpha_max, eta, beta):
  check_count(nb_iter, 'nb_iter')
  if not 0.0 <= float(alpha_max) <= 1.0:
    raise ValueError(f'alpha_max must be in [0, 1] (AutoAttack: 0.1); got {alpha_max}.')
  if not float(eta) > 0:
    raise ValueError(f'eta (overshoot) must be > 0 (AutoAttack: 1.05); got {eta}.')
  if not 0.0 < float(beta) <= 1.0:
    raise ValueError(f'beta (backward step) must be in (0, 1] (AutoAttack: 0.9); got {beta}.')


def _clean_pass(predict, x, y):
  """Clean logits (float32 or wider), which examples are correct, and the static class count K."""
  logits = _logits(predict, x)
  num_classes = logits.shape[-1]
  if logits.shape.rank != 2 or num_classes is None:
    raise ValueError(f'predict must return logits [B, K] with a static K; got {logits.shape}.')
  if num_classes < 2:
    raise ValueError(f'FAB needs a classifier with >= 2 classes; predict returns {num_classes}.')
  correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), tf.cast(y, tf.int32))
  return logits, correct, num_classes


def _fab_run(predict, x, y, target, active, geometry, nb_iter, alpha_max, eta, beta, clip_min,
             clip_max):
  """One targeted FAB run from x (no random start): (best_norm [B], best_x [B, ...]).

  best_norm is the smallest norm of a misclassified iterate (+inf if none); examples that are not
  `active` keep +inf and x. One tf.while_loop; it stops once no example is active.
  """
  y = tf.cast(y, tf.int32)
  target = tf.cast(target, tf.int32)
  x_flat = _flat(x)
  batch = tf.shape(x)[0]
  dtype = x.dtype
  alpha_max, eta, beta = (tf.cast(v, dtype) for v in (alpha_max, eta, beta))

  def gap_and_grad(x_cur):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(x_cur)
      logits = _logits(predict, x_cur)
      gap = (tf.gather(logits, target, axis=1, batch_dims=1)
             - tf.gather(logits, y, axis=1, batch_dims=1))  # g_t = z_t - z_y, < 0 while correct
      total = tf.reduce_sum(gap)
    grad = tape.gradient(total, x_cur, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.cast(gap, dtype), tf.ensure_shape(grad, x_cur.shape)  # as pgd.input_gradient

  def body(i, x_cur, best_norm, best_x):
    gap, grad = gap_and_grad(x_cur)
    w = _flat(grad)
    cur_flat = _flat(x_cur)
    b = tf.reduce_sum(w * cur_flat, axis=1) - gap  # H = {u: <w, u> = b}, the linearised boundary
    # Project the iterate and the original point onto H (inside the box) as one 2B-row batch.
    steps = project_onto_hyperplane_in_box(
        tf.concat([cur_flat, x_flat], 0), tf.concat([w, w], 0), tf.concat([b, b], 0),
        geometry, clip_min, clip_max)
    step_cur, step_orig = steps[:batch], steps[batch:]
    n_cur = tf.maximum(geometry.norm(step_cur), _NORM_FLOOR)
    n_orig = tf.maximum(geometry.norm(step_orig), _NORM_FLOOR)
    alpha = tf.clip_by_value(n_cur / (n_cur + n_orig), 0, alpha_max)[:, None]
    new = ((1 - alpha) * (cur_flat + eta * step_cur) + alpha * (x_flat + eta * step_orig))
    new = tf.clip_by_value(new, clip_min, clip_max)
    pred = tf.argmax(_logits(predict, tf.reshape(new, tf.shape(x))), axis=1, output_type=tf.int32)
    adv = tf.not_equal(pred, y) & active
    dist = geometry.norm(new - x_flat)
    better = adv & (dist < best_norm)
    best_norm = tf.where(better, dist, best_norm)
    best_x = tf.where(better[:, None], new, best_x)
    # Backward step toward x for every misclassified iterate, improved or not.
    new = tf.where(adv[:, None], x_flat + beta * (new - x_flat), new)
    return i + 1, tf.reshape(new, tf.shape(x)), best_norm, best_x

  def cond(i, *_):
    return (i < int(nb_iter)) & tf.reduce_any(active)

  best_norm = tf.fill([batch], tf.constant(np.inf, dtype))
  # A batch of one loses its static size in the projection's gathers: let the batch dim vary.
  invariants = (tf.TensorShape([]), x.shape, tf.TensorShape([None]),
                tf.TensorShape([None, x_flat.shape[1]]))
  _, _, best_norm, best_x = tf.while_loop(cond, body, (tf.constant(0), x, best_norm, x_flat),
                                          shape_invariants=invariants,
                                          maximum_iterations=int(nb_iter))
  return best_norm, tf.reshape(best_x, tf.shape(x))


def _accept(predict, x, y, eps, best_norm, best_x):
  """AutoAttack's acceptance: keep a point only if its norm <= eps and one fresh forward agrees."""
  found = best_norm <= eps
  x_adv = tf.where(norms_lib.per_example(found, x) > 0, best_x, x)
  pred = tf.argmax(_logits(predict, x_adv), axis=1, output_type=tf.int32)
  success = found & tf.not_equal(pred, tf.cast(y, tf.int32))
  x_adv = tf.where(norms_lib.per_example(success, x) > 0, x_adv, x)
  return x_adv, success


def _prepare(x, y, eps, norm, nb_iter, alpha_max, eta, beta, clip_min, clip_max):
  geometry = norms_lib.get_norm(norm)
  check_attack_inputs(x, y, eps, clip_min, clip_max)
  _check_fab_args(nb_iter, alpha_max, eta, beta)
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    raise ValueError(f'x must be a float tensor of images; got dtype {x.dtype.name}.')
  eps = per_example_vector(eps, tf.shape(x)[0], x.dtype)
  return geometry, x, eps


def fab(predict, x, y, eps, *, norm='Linf', nb_iter=100, target_rank=2, alpha_max=0.1, eta=1.05,
        beta=0.9, clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """One targeted FAB run toward the class with the `target_rank`-th largest clean logit.

  Args:
    predict: images -> logits. x: images [B, ...] in [clip_min, clip_max]. y: labels [B].
    eps: scalar or [B]; used only to accept results (norm <= eps), as in AutoAttack's FAB-T, so
      eps 0 accepts only a clean misclassification (min_norm is still computed).
    nb_iter: iterations (AutoAttack: 100). target_rank: in [2, K] (2 = the runner-up class).
    alpha_max, eta, beta: the step's weight on x, the overshoot and the backward step.
    No seed: the standard FAB-T has no random start.
  Returns:
    (x_adv, success, min_norm): min_norm [B] is the norm of the smallest-norm misclassified iterate
    (0 where x is already misclassified, +inf where none was found), an upper bound on the
    distance to the decision boundary; x_adv is that point where min_norm <= eps and a fresh
    forward confirms it, else x; success = argmax predict(x_adv) != y.
  Cost: nb_iter forward+backward and nb_iter + 2 forward passes at most (the loop ends early once
    no example is clean-correct).
  """
  concrete = not tf.is_tensor(target_rank)  # a scalar int tensor gives one trace for every rank
  if concrete and int(target_rank) < 2:
    raise ValueError('target_rank must be in [2, K] (rank 1 is the predicted class); '
                     f'got {target_rank}.')
  geometry, x, eps = _prepare(x, y, eps, norm, nb_iter, alpha_max, eta, beta, clip_min, clip_max)
  logits, correct, num_classes = _clean_pass(predict, x, y)
  if concrete and int(target_rank) > num_classes:
    raise ValueError(f'target_rank must be in [2, K = {num_classes}]; got {target_rank}.')
  target = losses_lib.target_by_rank(logits, target_rank if not concrete else int(target_rank))
  best_norm, best_x = _fab_run(predict, x, y, target, correct, geometry, nb_iter, alpha_max, eta,
                               beta, clip_min, clip_max)
  min_norm = tf.where(correct, best_norm, tf.zeros_like(best_norm))
  x_adv, success = _accept(predict, x, y, eps, min_norm, best_x)
  return x_adv, success, min_norm


def fab_targeted(predict, x, y, eps, *, norm='Linf', nb_iter=100, n_target_classes=9,
                 all_targets=False, alpha_max=0.1, eta=1.05, beta=0.9, clip_min=CLIP_MIN,
                 clip_max=CLIP_MAX):
  """FAB-T: targeted FAB toward the classes ranked 2..n_target_classes+1 (at most K-1 targets).

  As in AutoAttack, a later target runs only on the examples not yet successful at eps; min_norm
  is then the minimum over the targets that ran. With all_targets=True every target runs on every
  clean-correct example, so min_norm is the minimum over all targets: a margin estimate (an
  upper bound on the distance to the boundary) that does not depend on eps.
  Returns (x_adv, success, min_norm) as `fab`; x_adv is the point of the smallest norm.
  Cost: T * nb_iter forward+backward and T * nb_iter + 2 forward passes at most, with
    T = min(n_target_classes, K - 1). Targets are an outer tf.while_loop around the run's loop.
  """
  check_count(n_target_classes, 'n_target_classes', 1)
  geometry, x, eps = _prepare(x, y, eps, norm, nb_iter, alpha_max, eta, beta, clip_min, clip_max)
  logits, correct, num_classes = _clean_pass(predict, x, y)
  min_norm = tf.where(correct, tf.fill(tf.shape(correct), tf.constant(np.inf, x.dtype)),
                      tf.zeros(tf.shape(correct), x.dtype))
  num_targets = min(int(n_target_classes), num_classes - 1)

  def next_target(rank, min_norm, best_x):
    # A loop over targets rather than an unrolled one: one copy of the model in the graph, so
    # tracing and XLA compilation do not grow with the number of targets.
    target = losses_lib.target_by_rank(logits, rank)
    active = correct if all_targets else correct & ~(min_norm <= eps)
    run_norm, run_x = _fab_run(predict, x, y, target, active, geometry, nb_iter, alpha_max, eta,
                               beta, clip_min, clip_max)
    better = run_norm < min_norm
    new_x = tf.where(norms_lib.per_example(better, x) > 0, run_x, best_x)
    new_norm = tf.where(better, run_norm, min_norm)
    # Static shapes as they entered: a batch of one must not broadcast to an unknown size.
    return rank + 1, tf.ensure_shape(new_norm, min_norm.shape), tf.ensure_shape(new_x, x.shape)

  _, min_norm, best_x = tf.while_loop(lambda rank, *_: rank < num_targets + 2, next_target,
                                      (tf.constant(2), min_norm, x),
                                      maximum_iterations=num_targets)
  x_adv, success = _accept(predict, x, y, eps, min_norm, best_x)
  return x_adv, success, min_norm

"""APGD (Auto-PGD, Croce & Hein, ICML 2020, arXiv:2003.01690): APGD-CE, APGD-DLR and APGD-T.

Reproduces the behaviour of the reference code (fra31/auto-attack `autopgd_base.py`), not the
paper's wording, where they differ (docs/autoattack.md 2.7): the integer checkpoint
recursion (57, not 58, for 100 iterations); the oscillation test C1 uses `<=` and, in the first
window, compares the first loss against 0 (the code reads a still-zero history row); the
stagnation test C2 cannot fire at the first checkpoint; after a reset to x_best the momentum term
is x_best - x^{k-1}; the returned point is the most recent misclassified iterate.

Departures from the reference, all deliberate:
- Randomness: per-example stateless seeds (Philox integer bits, so eager, graph and XLA runs draw
  the same start) instead of one global torch seed per call. Restart r and target rank t of an
  example use the sub-stream fold_in(fold_in(seed, t or 0), r), so an example's result does not
  depend on its batch, padding or replica. The L2 start uses Box-Muller normals from those bits.
- Examples not to attack (already fooled, or clean-misclassified) get radius 0 inside the full
  batch instead of being gathered out (same per-example result, static shapes); a run in which no
  example is left to attack is skipped entirely (tf.cond). There is no early exit inside a run.
- APGD-T ranks the targets once, from one clean forward pass; the reference recomputes the clean
  logits of the remaining examples before each target (the same ranking). Tied logits are ranked
  lowest class index first (stable sort); torch's sort may order ties differently.
- Per-example radii, and a general box [clip_min, clip_max] in place of [0, 1].
- EOT (eot_iter > 1, AutoAttack's rand version) as the reference: the step follows the mean
  gradient of eot_iter forward-backward passes; the loss and prediction are the last pass's.
- Losses the reference defines but AutoAttack's driver does not run: 'ce_targeted' (its
  `ce_loss_targeted`), and the logit margin 'lm' (DLR's numerator) for classifiers with fewer
  classes than DLR needs.
- Not implemented: x_init, the L1 version, `best_loss` mode and the zero-gradient warning (sanity
  checks belong to the evaluator, outside the compiled graph).
"""
import numbers

import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.attacks.common import (CLIP_MAX, CLIP_MIN, check_attack_inputs, check_count,
                                   per_example_vector, seeds_for_batch)

_TINY = 1e-12
LOSSES = ('ce', 'dlr', 'dlr_targeted', 'ce_targeted', 'lm')
TARGETED = ('dlr_targeted', 'ce_targeted')


# ---------------------------------------------------------------------------------- step schedule

def apgd_schedule(nb_iter):
  """(checkpoints, windows) of the reference code's integer recursion for `nb_iter` iterations.

  First window max(int(0.22 N), 1); each next window shrinks by max(int(0.03 N), 1) but not below
  max(int(0.06 N), 1). A checkpoint fires after the iteration at which the number of iterations
  since the previous checkpoint reaches the current window. checkpoints[j] is the number of
  completed iterations at checkpoint j and windows[j] the length of the window it closes.
  """
  n = int(nb_iter)
  window = max(int(0.22 * n), 1)
  decrease, minimum = max(int(0.03 * n), 1), max(int(0.06 * n), 1)
  checkpoints, windows, done = [], [], 0
  while done + window <= n:
    done += window
    checkpoints.append(done)
    windows.append(window)
    window = max(window - decrease, minimum)
  return checkpoints, windows


def apgd_checkpoints(nb_iter):
  """Iteration counts after which a checkpoint fires; [22, 41, 57, 70, 80, 87, 93, 99] for 100."""
  return apgd_schedule(nb_iter)[0]


# -------------------------------------------------------------------------------- random streams

def _random_direction(norm, seeds, like):
  """The reference's unnormalised start direction: U[-1, 1]^D (Linf) or N(0, I) (L2)."""
  shape = like.shape[1:].as_list()
  if norm == 'Linf':
    return tf.cast(2.0 * norms_lib.unit_uniform(seeds, shape) - 1.0, like.dtype)
  u = norms_lib.unit_uniform(seeds, [2] + shape)
  radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[:, 0]))  # 1 - u in (0, 1]: log is finite
  return tf.cast(radius * tf.cos(2.0 * 3.141592653589793 * u[:, 1]), like.dtype)


# ---------------------------------------------------------------------------------------- geometry

def _axes(x):
  return list(range(1, x.shape.rank))


def _normalize(norm, v):
  """v / (||v|| + 1e-12) per example, as the reference's `normalize`."""
  if norm == 'Linf':
    n = tf.reduce_max(tf.abs(v), axis=_axes(v), keepdims=True)
  else:
    n = tf.sqrt(tf.reduce_sum(tf.square(v), axis=_axes(v), keepdims=True))
  return v / (n + _TINY)


def _project(norm, x, v, e, clip_min, clip_max):
  """Linf: exact coordinate clip onto ball and box. L2: radial rescale into the ball, then the box
  clip (feasible; not the exact Euclidean projection onto their intersection). e: radii [B, 1..]."""
  if norm == 'Linf':
    return tf.clip_by_value(tf.clip_by_value(v, x - e, x + e), clip_min, clip_max)
  d = v - x
  n = tf.sqrt(tf.reduce_sum(tf.square(d), axis=_axes(d), keepdims=True))
  return tf.clip_by_value(x + d / (n + _TINY) * tf.minimum(e, n), clip_min, clip_max)


def _clip_exact(norm, x, v, eps, clip_min, clip_max):
  """Final feasibility guard (a no-op up to float rounding): the box, and for Linf the ball."""
  if norm == 'Linf':
    e = norms_lib.per_example(eps, x)
    v = tf.clip_by_value(v, x - e, x + e)
  return tf.clip_by_value(v, clip_min, clip_max)


# -------------------------------------------------------------------------------------- one run

def _loss_and_grad(predict, loss_fn, point, eot_iter=1):
  """(logits, loss, gradient) at `point`. With eot_iter > 1 the gradient is the mean over that many
  passes of a random model and the logits and loss are the last pass's, as the reference."""
  def one_pass():
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(point)
      logits = tf.cast(predict(point), tf.float32)
      loss = loss_fn(logits)
      total = tf.reduce_sum(loss)  # per-example gradients, independent of the batch size
    grad = tape.gradient(total, point, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return logits, loss, tf.ensure_shape(tf.cast(grad, point.dtype), point.shape)  # as pgd's

  logits, loss, grad = one_pass()
  if eot_iter == 1:
    return logits, loss, grad

  def draw(k, logits, loss, grad_sum):
    logits, loss, grad = one_pass()
    return k + 1, logits, loss, grad_sum + grad

  # A loop, not eot_iter copies of the model in the graph.
  _, logits, loss, grad_sum = tf.while_loop(lambda k, *_: k < eot_iter, draw,
                                            (tf.constant(1), logits, loss, grad))
  return logits, loss, grad_sum / eot_iter


def _single_run(predict, loss_fn, x, y, eps, seeds, norm, nb_iter, rho, clip_min, clip_max,
                eot_iter=1):
  """One APGD run (the reference's `attack_single_run`): returns (x_out, fooled) per example.

  (nb_iter + 1) * eot_iter forward-backward passes: at the start and per iteration. Returns a dict:
  x_out, the most recent misclassified iterate (the start x^0 if none); fooled, whether any
  iterate was; and x_best, loss_best, step (the final step sizes), for tests.
  """
  checkpoints, windows = apgd_schedule(nb_iter)
  is_ckpt = [False] * max(nb_iter, 1)
  threshold = [0.0] * max(nb_iter, 1)
  for c, w in zip(checkpoints, windows):
    is_ckpt[c - 1], threshold[c - 1] = True, rho * w
  is_ckpt = tf.constant(is_ckpt)
  threshold = tf.constant(threshold, tf.float32)
  e = norms_lib.per_example(eps, x)
  y = tf.cast(y, tf.int32)
  batch_shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)
  expand = lambda v: tf.reshape(v, batch_shape)  # [B] -> broadcastable against x

  x0 = tf.clip_by_value(x + e * _normalize(norm, _random_direction(norm, seeds, x)),
                        clip_min, clip_max)
  logits, loss0, grad0 = _loss_and_grad(predict, loss_fn, x0, eot_iter)
  fooled0 = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), y)
  step0 = 2.0 * eps
  # The first comparison of the first window reads a zero-initialised history row in the
  # reference (loss(x^1) > 0). With one iteration that row is the current loss itself: never >.
  first_prev = tf.fill(tf.shape(loss0), float('inf') if nb_iter == 1 else 0.0)

  def body(i, x_cur, x_prev, grad, step, loss_prev, n_up, loss_best, x_best, grad_best,
           loss_best_ckpt, halved_last, fooled, x_out):
    a = tf.cast(tf.where(i == 0, 1.0, 0.75), x.dtype)
    direction = tf.sign(grad) if norm == 'Linf' else _normalize(norm, grad)
    z = _project(norm, x, x_cur + expand(step) * direction, e, clip_min, clip_max)
    x_new = _project(norm, x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), e,
                     clip_min, clip_max)
    logits, loss, grad_new = _loss_and_grad(predict, loss_fn, x_new, eot_iter)

    wrong = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), y)
    fooled = fooled | wrong
    x_out = tf.where(expand(wrong), x_new, x_out)
    better = loss > loss_best  # strict, as the reference
    x_best = tf.where(expand(better), x_new, x_best)
    grad_best = tf.where(expand(better), grad_new, grad_best)
    loss_best = tf.where(better, loss, loss_best)
    n_up = n_up + tf.cast(loss > loss_prev, tf.float32)

    # Checkpoint: C1 (too few increases in the window) or C2 (no halving last time and no gain).
    check = is_ckpt[i]
    oscillating = n_up <= threshold[i]
    stagnating = tf.logical_not(halved_last) & (loss_best_ckpt >= loss_best)
    halve = check & (oscillating | stagnating)
    step = tf.where(halve, step / 2, step)
    x_next = tf.where(expand(halve), x_best, x_new)
    grad_next = tf.where(expand(halve), grad_best, grad_new)
    halved_last = tf.where(check, halve, halved_last)
    loss_best_ckpt = tf.where(check, loss_best, loss_best_ckpt)
    n_up = tf.where(check, tf.zeros_like(n_up), n_up)
    # The momentum of the next step uses x_cur (the iterate before x_new) even after a reset.
    return (i + 1, x_next, x_cur, grad_next, step, loss, n_up, loss_best, x_best, grad_best,
            loss_best_ckpt, halved_last, fooled, x_out)

  state = (tf.constant(0), x0, x0, grad0, step0, first_prev, tf.zeros_like(loss0), loss0, x0,
           grad0, loss0, tf.ones_like(fooled0), fooled0, x0)
  final = tf.while_loop(lambda i, *_: i < nb_iter, body, state, maximum_iterations=nb_iter)
  return dict(x_out=final[13], fooled=final[12], x_best=final[8], loss_best=final[7],
              step=final[4])


# ------------------------------------------------------------------------------------ validation

def _check_options(norm, loss, nb_iter, n_restarts, rho, target_rank, eot_iter=1):
  if norm not in ('Linf', 'L2'):
    norm = norms_lib.get_norm(norm).name  # raises on unknown names; accepts 'linf', 'l2'
  if loss not in LOSSES:
    raise ValueError(f'Unknown APGD loss {loss!r}; choose one of {list(LOSSES)}.')
  check_count(nb_iter, 'nb_iter')
  check_count(n_restarts, 'n_restarts', 1)
  check_count(eot_iter, 'eot_iter', 1)
  if not 0.0 <= float(rho) <= 1.0:
    raise ValueError(f'rho must lie in [0, 1] (the reference uses 0.75); got {rho}.')
  if loss in TARGETED:
    if target_rank is None:
      raise ValueError(f"loss={loss!r} needs target_rank: the rank (2..K) of the target class "
                       'among the clean logits, e.g. target_rank=2 for the runner-up class.')
    if tf.is_tensor(target_rank):  # a scalar int tensor: one trace for every rank
      if target_rank.shape.rank != 0 or not target_rank.dtype.is_integer:
        raise ValueError(f'target_rank must be an int or a scalar int tensor; got {target_rank}.')
    elif isinstance(target_rank, bool) or not isinstance(target_rank, numbers.Integral):
      raise ValueError(f'target_rank must be an int in [2, K]; got {target_rank!r}.')
  elif target_rank is not None:
    raise ValueError(f'target_rank only applies to the targeted losses {list(TARGETED)} (got '
                     f'loss={loss!r}); drop target_rank or use a targeted loss.')
  return norm


def _check_classes(num_classes, loss, target_rank):
  """DLR needs 3 classes and targeted DLR 4 (their denominators use the 3rd/4th largest logit)."""
  if num_classes is None:
    return  # unknown statically: nothing to check on the host
  if loss == 'dlr' and num_classes < 3:
    raise ValueError(f'The DLR loss needs at least 3 classes; the model has {num_classes}. '
                     "Use loss='lm' (its numerator) or loss='ce'.")
  if loss == 'dlr_targeted' and num_classes < 4:
    raise ValueError(f'The targeted DLR loss (APGD-T) needs at least 4 classes; the model has '
                     f"{num_classes}. Use loss='ce_targeted'.")
  if loss in TARGETED:
    if not tf.is_tensor(target_rank) and not 2 <= target_rank <= num_classes:
      raise ValueError(f'target_rank must lie in [2, {num_classes}] (rank 1 is the predicted '
                       f'class); got {target_rank}.')


# ------------------------------------------------------------------------------------ public API

def _apgd_from_clean(predict, x, y, eps, clean_logits, *, norm, loss, nb_iter, n_restarts, rho,
                     target_rank, seed, clip_min, clip_max, eot_iter=1):
  """APGD given the clean logits (validated arguments); returns (x_adv, success)."""
  batch_size = tf.shape(x)[0]
  eps = per_example_vector(eps, batch_size, x.dtype)
  seeds = seeds_for_batch(seed, batch_size)
  y = tf.cast(y, tf.int32)
  if loss == 'ce':
    loss_fn = lambda logits: losses_lib.cross_entropy(logits, y)
  elif loss == 'dlr':
    loss_fn = lambda logits: losses_lib.dlr_loss(logits, y)
  elif loss == 'lm':
    loss_fn = lambda logits: losses_lib.logit_margin(logits, y)
  else:
    targets = losses_lib.target_by_rank(clean_logits, target_rank)
    if loss == 'dlr_targeted':
      loss_fn = lambda logits: losses_lib.targeted_dlr_loss(logits, y, targets)
    else:  # maximised: the reference's -CE(z, t)
      loss_fn = lambda logits: -losses_lib.cross_entropy(logits, targets)
  rank = 0 if target_rank is None else target_rank
  stream = norms_lib.fold_in(seeds, tf.cast(rank, tf.int64))

  fooled = tf.not_equal(tf.argmax(clean_logits, -1, output_type=tf.int32), y)
  x_adv = x
  for restart in range(n_restarts):
    # A clean-correct example with radius 0 stays at x and cannot be fooled: not active.
    active = tf.logical_not(fooled) & (eps > 0)
    run_eps = tf.where(active, eps, tf.zeros_like(eps))  # radius 0: the example stays at x
    run_seeds = norms_lib.fold_in(stream, tf.constant(restart, tf.int64))

    def attack(run_eps=run_eps, run_seeds=run_seeds):
      out = _single_run(predict, loss_fn, x, y, run_eps, run_seeds, norm, nb_iter, rho,
                        clip_min, clip_max, eot_iter)
      return out['x_out'], out['fooled']

    x_run, fooled_run = tf.cond(tf.reduce_any(active), attack,
                                lambda: (x, tf.zeros_like(active)))
    new = active & fooled_run
    x_adv = tf.where(norms_lib.per_example(new, x) > 0, x_run, x_adv)
    fooled = fooled | new
  return _clip_exact(norm, x, x_adv, eps, clip_min, clip_max), fooled


def apgd(predict, x, y, eps, *, norm='Linf', loss='ce', nb_iter=100, n_restarts=1, rho=0.75,
         target_rank=None, eot_iter=1, seed=0, clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """APGD (Croce & Hein 2020) with the reference code's step-size rules; returns (x_adv, success).

  Args:
    predict: callable images -> logits (inference mode).
    x: images [B, ...] inside [clip_min, clip_max]. y: integer labels [B].
    eps: radius, scalar or one per example [B]; 0 leaves an example unchanged.
    norm: 'Linf' or 'L2'. loss: 'ce' (APGD-CE), 'dlr' (untargeted DLR, needs >= 3 classes),
      'dlr_targeted' (needs >= 4 classes and target_rank: the target is the class with the
      target_rank-th largest clean logit), 'ce_targeted' (-CE toward that target; any K) or 'lm'
      (the logit margin max_{j != y} z_j - z_y).
    nb_iter: iterations per run (a Python int: it fixes the checkpoint schedule).
    n_restarts: runs from fresh random starts; each one attacks only the examples still robust.
    rho: the oscillation threshold of C1.
    eot_iter: forward-backward passes per step whose gradients are averaged (Expectation over
      Transformation, for models with randomness at inference; AutoAttack's rand version: 20).
    seed: int, a [2] stateless seed, or per-example seeds [B, 2]. Pass per-example seeds to get
      the same per-example results after compacting a batch.
  Returns:
    x_adv [B, ...]: the most recent misclassified iterate where the attack succeeded, x where it
      did not (and for clean-misclassified examples); success bool [B]: argmax != y at x_adv,
      tracked at every iterate including the random start (no extra forward pass).
  Cost: 1 forward pass, and at most n_restarts * (nb_iter + 1) * eot_iter forward+backward passes
  (a restart with no example left to attack is skipped).
  """
  check_attack_inputs(x, y, eps, clip_min, clip_max)
  norm = _check_options(norm, loss, nb_iter, n_restarts, rho, target_rank, eot_iter)
  x = tf.convert_to_tensor(x)
  clean_logits = tf.cast(predict(x), tf.float32)
  _check_classes(clean_logits.shape[-1], loss, target_rank)
  return _apgd_from_clean(predict, x, y, eps, clean_logits, norm=norm, loss=loss,
                          nb_iter=int(nb_iter), n_restarts=int(n_restarts), rho=float(rho),
                          target_rank=target_rank, eot_iter=int(eot_iter), seed=seed,
                          clip_min=clip_min, clip_max=clip_max)


def apgd_targeted(predict, x, y, eps, *, norm='Linf', nb_iter=100, n_target_classes=9,
                  n_restarts=1, rho=0.75, seed=0, clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """APGD-T (Croce & Hein 2020): targeted-DLR APGD toward the clean ranks 2..n_target_classes+1.

  Ranks are visited in order, each on the examples still robust (the others get radius 0); success
  is any misclassification, not reaching the target. n_target_classes is capped at K - 1. Gives
  exactly what `apgd(..., loss='dlr_targeted', target_rank=r)` gives rank by rank, with or
  without compaction in between (with per-example seeds). Returns (x_adv, success).
  Cost: 1 forward pass, and at most min(n_target_classes, K-1) * n_restarts * (nb_iter + 1)
  forward+backward passes.
  """
  check_attack_inputs(x, y, eps, clip_min, clip_max)
  norm = _check_options(norm, 'dlr_targeted', nb_iter, n_restarts, rho, 2)
  check_count(n_target_classes, 'n_target_classes', 1)
  x = tf.convert_to_tensor(x)
  clean_logits = tf.cast(predict(x), tf.float32)
  num_classes = clean_logits.shape[-1]
  _check_classes(num_classes, 'dlr_targeted', 2)
  if num_classes is not None:
    n_target_classes = min(int(n_target_classes), num_classes - 1)
  eps = per_example_vector(eps, tf.shape(x)[0], x.dtype)
  y = tf.cast(y, tf.int32)
  options = dict(norm=norm, loss='dlr_targeted', nb_iter=int(nb_iter), n_restarts=int(n_restarts),
                 rho=float(rho), seed=seed, clip_min=clip_min, clip_max=clip_max)

  # One loop over the ranks (not unrolled: the graph holds one APGD run, whatever the count).
  def body(rank, x_adv, fooled):
    rank_eps = tf.where(fooled, tf.zeros_like(eps), eps)
    x_rank, success = _apgd_from_clean(predict, x, y, rank_eps, clean_logits, target_rank=rank,
                                       **options)
    new = success & tf.logical_not(fooled)
    return rank + 1, tf.where(norms_lib.per_example(new, x) > 0, x_rank, x_adv), fooled | new

  fooled = tf.not_equal(tf.argmax(clean_logits, -1, output_type=tf.int32), y)
  last = int(n_target_classes) + 1
  _, x_adv, fooled = tf.while_loop(lambda rank, *_: rank <= last, body,
                                   (tf.constant(2), x, fooled), maximum_iterations=last - 1)
  return x_adv, fooled

"""Square Attack (Andriushchenko et al., 2020) as AutoAttack's standard version runs it.

Score-based random search: no gradients, only forward passes, so it is the ensemble's check for
gradient masking (docs/autoattack.md 4, 5). Untargeted margin loss z_y - max_{j!=y} z_j, minimised;
p_init 0.8 for Linf and L2, the p schedule on the raw iteration index (not rescaled to n_queries),
Linf started from vertical +-eps stripes, L2 from a grid of signed tiles renormalised to eps.

The whole run is one `tf.while_loop` over queries with static shapes; the window side changes with
the iteration, so windows are masks built from iota comparisons with a dynamic side. Randomness
comes from each example's own Philox stream (`norms.philox_words`, keyed by its stateless seed;
one sub-stream per iteration), so an example's run does not depend on its batch, on padding or
on the number of replicas, and eager, `tf.function`, XLA and `strategy.run` draw the same
numbers. Iteration i's draws do not depend on the budget either, so a run can be continued to a
larger budget from where it stopped (`square_search(resume=...)`): bit for bit the longer run.

Queries are counted as the reference does: the initial point is query 1, then each iteration
charges 1 to every example still correctly classified at its start, so a robust example uses
n_queries + 1. Acceptance is also the reference's: a candidate replaces the best point only if its
margin is strictly lower, or <= 0; an example whose best margin is <= 0 stops
(docs/autoattack.md 4.1).

Departures from the reference code (fra31/auto-attack `square.py`), all deliberate:
- Per-example draws. The reference draws one window position per iteration for the whole batch
  (and for Linf one set of colour signs, for L2 one second window and one transpose coin); here
  every example draws its own. Each example sees the same distribution as in the reference, but
  its result no longer depends on which other examples share its batch.
- Window offsets. The reference draws the top-left corner from {0, ..., H-s-1} (an off-by-one), so
  with s < H the last row and column are never touched after the initialisation; on small images
  (e.g. 4x5) that leaves pixels the attack can never move. By default offsets are drawn from the
  full range {0, ..., H-s}; `reference_offsets=True` restores the reference's range.
- L2 initialisation on small or non-square images. The reference tiles with q = H // 5, which is
  0 for H < 5 (a division by zero), and fails when a tile sticks out of the image. Here q is at
  least 1, the offset at least 0, and tiles are cut at the image border.
- Examples that are misclassified at x, or have eps 0, are not attacked (0 queries), as the
  reference's driver leaves them out of the batch it attacks.
"""
import collections
import math

import numpy as np
import tensorflow as tf

from mma_tf import losses as losses_lib
from mma_tf import norms as norms_lib
from mma_tf.attacks.common import (CLIP_MAX, CLIP_MIN, check_attack_inputs, check_count,
                                   per_example_vector, seeds_for_batch)

# p is halved after each of these (raw) iteration indices: the schedule designed for 10k queries.
P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i, p_init=0.8):
  """The fraction of pixels changed at iteration i (0-based): p_init / 2^(#boundaries below i)."""
  return p_init / 2**sum(int(i) > b for b in P_BOUNDARIES)


def side_length(p, height, width, norm='Linf', channels=1):
  """Window side for fraction p: round(sqrt(p*H*W)), >= 1 (Linf) or >= 3 and odd (L2), then
  capped at min(H, W) (after the odd rule, as the reference: the cap may make it even)."""
  name = norms_lib.get_norm(norm).name
  # The reference's arithmetic, sqrt(p * (C*H*W) / C) with Python's round, for identical sides.
  s = int(round(math.sqrt(p * (channels * height * width) / channels)))
  if name == 'L2':
    s = max(s, 3)
    s += 1 if s % 2 == 0 else 0
  else:
    s = max(s, 1)
  return min(s, min(height, width))


def _centred_rectangle(a, b):
  """a x b block whose entry at Chebyshev distance d from the centre is sum_{k=d}^{K-1} (k+1)^-2,
  K = max(a//2, b//2) + 1 (nested squares of weight 1/(k+1)^2), unit Frobenius norm."""
  if a == 0:
    return np.zeros((0, b))
  k_max = max(a // 2, b // 2) + 1
  tail = np.cumsum((1.0 / np.arange(1, k_max + 1)**2)[::-1])[::-1]  # tail[d] = sum_{k>=d}
  dist = np.maximum(np.abs(np.arange(a)[:, None] - a // 2), np.abs(np.arange(b)[None] - b // 2))
  r = tail[dist]
  return r / np.linalg.norm(r)


def eta_pattern(s):
  """The L2 update pattern eta(s) (s x s, unit norm): a positive centred block over the top s//2
  rows and a negative one over the rest. The caller transposes it with probability 1/2."""
  e = np.concatenate([_centred_rectangle(s // 2, s), -_centred_rectangle(s - s // 2, s)], 0)
  return e / np.linalg.norm(e)


# ------------------------------------------------------------------------------------ randomness

def _example_keys(seeds):
  """Each example's Philox key from its stateless seed [B, 2], derived once per call."""
  return norms_lib.philox_key(seeds)


def _random_bits(keys, stream, n):
  """uint32 [B, n]: the example's Philox sub-stream `stream` (0 = initialisation, i + 1 =
  iteration i), from `norms.philox_words` (always vectorised: TF's per-example kernels cannot
  start a sub-stream)."""
  return norms_lib.philox_words(keys, n, stream)


def _unit_float(bits):
  """[0, 1) floats with 24 random bits, as in `norms.uniform_per_example`."""
  return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) * 2.0**-24


def _signs(bits, dtype):
  return tf.cast(tf.where(tf.bitwise.bitwise_and(bits, tf.constant(1, tf.uint32)) > 0, 1.0, -1.0),
                 dtype)


def _offset(bits, span):
  """floor(u * span) for u ~ U[0, 1): uniform on {0, ..., span-1}, 0 when span is 0 (reference)."""
  span = tf.cast(span, tf.float32)
  v = tf.cast(tf.floor(_unit_float(bits) * span), tf.int32)
  return tf.clip_by_value(v, 0, tf.maximum(tf.cast(span, tf.int32) - 1, 0))


# --------------------------------------------------------------------------------------- windows

# Draw slots of one iteration: window 1 (row, column), window 2 (row, column), transpose coin,
# then one colour sign per channel.
_ROW1, _COL1, _ROW2, _COL2, _COIN, _SIGNS = range(6)


def _window(row, col, side, height, width):
  """Bool [B, H, W, 1]: rows [row, row+side) x columns [col, col+side) of each example."""
  r = tf.range(height)[None, :]
  c = tf.range(width)[None, :]
  in_r = (r >= row[:, None]) & (r < row[:, None] + side)
  in_c = (c >= col[:, None]) & (c < col[:, None] + side)
  return (in_r[:, :, None] & in_c[:, None, :])[..., None]


def _placed_pattern(patterns, regime, row, col, coin, window, height, width):
  """Float [B, H, W, 1]: eta(side) (transposed where coin) in each example's window, 0 outside.

  patterns: [regimes, S, S] with eta(side of the regime) in the top-left corner, zero padded.
  """
  pattern = tf.gather(patterns, regime)
  size = patterns.shape[-1]
  local_r = tf.range(height)[None, :, None] - row[:, None, None]
  local_c = tf.range(width)[None, None, :] - col[:, None, None]
  local_r = tf.broadcast_to(local_r, [tf.shape(row)[0], height, width])
  local_c = tf.broadcast_to(local_c, [tf.shape(row)[0], height, width])
  flip = coin[:, None, None]
  first = tf.clip_by_value(tf.where(flip, local_c, local_r), 0, size - 1)
  second = tf.clip_by_value(tf.where(flip, local_r, local_c), 0, size - 1)
  placed = tf.gather_nd(pattern, tf.stack([first, second], -1))[..., None]
  return tf.where(window, placed, tf.zeros_like(placed))


# ------------------------------------------------------------------------------- initialisations

def _linf_init(x, eps, keys, clip_min, clip_max):
  """Vertical stripes: each (column, channel) of an example gets +eps or -eps down the column."""
  _, _, width, channels = x.shape
  signs = _signs(_random_bits(keys, 0, width * channels), x.dtype)
  signs = tf.reshape(signs, [-1, 1, width, channels])
  return tf.clip_by_value(x + norms_lib.per_example(eps, x) * signs, clip_min, clip_max)


def _l2_tiles(height, width):
  """Static tile layout of the L2 initialisation: (tile id map [H, W] (-1 outside any tile),
  eta(q) read straight and transposed at each pixel [H, W], number of tiles)."""
  q = max(height // 5, 1)
  start = max((height - 5 * q) // 2, 0)
  eta = eta_pattern(q)
  ids = -np.ones((height, width), np.int32)
  straight = np.zeros((height, width))
  transposed = np.zeros((height, width))
  tiles = 0
  for a in range(height // q):
    for b in range(width // q):  # the tile size comes from H in both directions, as the reference
      r0, c0 = start + a * q, start + b * q
      for i in range(q):
        for j in range(q):
          if r0 + i < height and c0 + j < width:  # tiles are cut at the border
            ids[r0 + i, c0 + j] = tiles
            straight[r0 + i, c0 + j] = eta[i, j]
            transposed[r0 + i, c0 + j] = eta[j, i]
      tiles += 1
  return ids, straight, transposed, tiles


def _l2_init(x, eps, keys, clip_min, clip_max):
  """A grid of q x q tiles, each eta(q) (transposed on a coin) times a sign per channel, the sum
  renormalised to L2 norm eps."""
  _, height, width, channels = x.shape
  ids, straight, transposed, tiles = _l2_tiles(height, width)
  bits = _random_bits(keys, 0, tiles * (channels + 1))
  coins = tf.bitwise.bitwise_and(bits[:, :tiles], tf.constant(1, tf.uint32)) > 0  # [B, T]
  signs = tf.reshape(_signs(bits[:, tiles:], x.dtype), [-1, tiles, channels])  # [B, T, C]
  index = np.maximum(ids, 0)
  coin_map = tf.gather(coins, index, axis=1)  # [B, H, W]
  sign_map = tf.gather(signs, index, axis=1)  # [B, H, W, C]
  value = tf.where(coin_map, tf.constant(transposed, x.dtype), tf.constant(straight, x.dtype))
  delta = value[..., None] * sign_map * tf.constant((ids >= 0)[..., None], x.dtype)
  return tf.clip_by_value(x + _to_radius(delta, eps), clip_min, clip_max)


def _to_radius(delta, eps):
  """eps * delta / (||delta||_2 + 1e-12), the reference's `normalize` times eps."""
  n = norms_lib.L2Norm.norm(delta)
  return delta * norms_lib.per_example(eps / (n + 1e-12), delta)


# ----------------------------------------------------------------------------------- candidates

def _linf_candidate(x, x_best, eps, window, signs, clip_min, clip_max):
  """x_best with the window set to x + eps*sign per channel: the reference adds 2*eps*sign and
  projects back on the eps ball and the box, which is what is computed here."""
  e = norms_lib.per_example(eps, x)
  step = tf.where(window, 2 * e * signs, tf.zeros_like(x))
  return tf.clip_by_value(tf.minimum(tf.maximum(x_best + step, x - e), x + e), clip_min, clip_max)


def _l2_candidate(x, x_best, eps, window, window2, pattern, signs, clip_min, clip_max):
  """The L2 proposal: window 1 gets its old content (normalised) plus pattern*sign per channel,
  rescaled to hold the mass of both windows plus an equal share per channel of any unused budget;
  window 2 (outside window 1) is emptied; the whole perturbation is renormalised to eps."""
  channels = x.shape[-1]
  e = norms_lib.per_example(eps, x)
  delta = x_best - x
  zeros = tf.zeros_like(delta)
  spatial_norm = lambda v: tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2], keepdims=True))
  norm_image = norms_lib.per_example(norms_lib.L2Norm.norm(delta), x)
  norm_w1 = spatial_norm(tf.where(window, delta, zeros))  # [B, 1, 1, C]
  norm_both = spatial_norm(tf.where(window | window2, delta, zeros))
  block = pattern * signs + tf.where(window, delta, zeros) / (norm_w1 + 1e-12)
  target = tf.sqrt(tf.maximum(tf.square(e) - tf.square(norm_image), 0) / channels
                   + tf.square(norm_both))
  block = block / (spatial_norm(block) + 1e-12) * target
  delta = tf.where(window, block, tf.where(window2, zeros, delta))
  return tf.clip_by_value(x + _to_radius(delta, eps), clip_min, clip_max)


def _draw_window(bits, row_slot, col_slot, side, height, width, reference_offsets):
  """Top-left corner of a side x side window: uniform on {0..H-s} x {0..W-s}, or on the
  reference's {0..H-s-1} x {0..W-s-1} (0 when s = H) with reference_offsets."""
  extra = 0 if reference_offsets else 1
  return (_offset(bits[:, row_slot], height - side + extra),
          _offset(bits[:, col_slot], width - side + extra))


def _check_square_args(x, y, eps, n_queries, p_init, clip_min, clip_max):
  """n_queries as an int, or a ValueError naming the bad argument."""
  check_attack_inputs(x, y, eps, clip_min, clip_max)
  x_shape = tf.TensorShape(np.shape(x) if not tf.is_tensor(x) else x.shape)
  if x_shape.rank != 4 or None in x_shape[1:]:
    raise ValueError(f'Square needs NHWC images [B, H, W, C] with static H, W, C; got shape '
                     f'{x_shape}. Reshape flat inputs to images first.')
  n_queries = check_count(n_queries, 'n_queries')
  if not 0 < p_init <= 1:
    raise ValueError(f'p_init must be in (0, 1]; got {p_init}.')
  return n_queries


def _margin(predict, images, y):
  """The reference's margin loss: z_y - max_{j != y} z_j, in float32 (minimised)."""
  return -losses_lib.logit_margin(predict(images), y)


def _start(predict, x, y, eps, keys, is_l2, clip_min, clip_max):
  """(x_best, m_best, active, queries) after the initialisation: examples correctly classified
  with eps > 0 start from the norm's initial point (1 query), the others stay at x."""
  clean_correct = tf.argmax(predict(x), -1, output_type=tf.int32) == y
  attacked = clean_correct & (eps > 0)
  init = (_l2_init if is_l2 else _linf_init)(x, eps, keys, clip_min, clip_max)
  x_best = tf.where(norms_lib.per_example(attacked, x) > 0, init, x)
  m_best = _margin(predict, x_best, y)
  active = attacked & (m_best > 0)
  queries = tf.cast(attacked, tf.int32)
  return x_best, m_best, active, queries


class _Schedule(collections.namedtuple('_Schedule', 'sides boundaries patterns')):
  """The window side of each p regime (int32 [regimes]), the iteration indices after which p
  halves, and eta(side) per regime (the L2 patterns [regimes, S, S], zero padded)."""


def _schedule(p_init, height, width, norm, channels, dtype):
  regimes = len(P_BOUNDARIES) + 1
  side_list = [side_length(p_init / 2**k, height, width, norm, channels) for k in range(regimes)]
  size = min(height, width)
  patterns = np.zeros((regimes, size, size))
  for k, s in enumerate(side_list):
    patterns[k, :s, :s] = eta_pattern(s)
  return _Schedule(tf.constant(side_list, tf.int32), tf.constant(P_BOUNDARIES, tf.int32),
                   tf.constant(patterns, dtype))


def _iteration_draws(keys, i, schedule, x):
  """Iteration i's p regime, window side, random words [B, slots] and colour signs [B, 1, 1, C]."""
  channels = x.shape[-1]
  regime = tf.reduce_sum(tf.cast(i > schedule.boundaries, tf.int32))
  side = tf.gather(schedule.sides, regime)
  bits = _random_bits(keys, i + 1, _SIGNS + channels)
  signs = tf.reshape(_signs(bits[:, _SIGNS:], x.dtype), [-1, 1, 1, channels])
  return regime, side, bits, signs


def _linf_proposal(i, x, x_best, eps, keys, schedule, reference_offsets, clip_min, clip_max):
  """Iteration i's Linf candidate: one window set to x + eps * (a sign per channel)."""
  _, height, width, _ = x.shape
  _, side, bits, signs = _iteration_draws(keys, i, schedule, x)
  row, col = _draw_window(bits, _ROW1, _COL1, side, height, width, reference_offsets)
  window = _window(row, col, side, height, width)
  return _linf_candidate(x, x_best, eps, window, signs, clip_min, clip_max)


def _l2_proposal(i, x, x_best, eps, keys, schedule, reference_offsets, clip_min, clip_max):
  """Iteration i's L2 candidate: eta(side) (transposed on a coin) into one window, the mass of a
  second window moved into it."""
  _, height, width, _ = x.shape
  regime, side, bits, signs = _iteration_draws(keys, i, schedule, x)
  row, col = _draw_window(bits, _ROW1, _COL1, side, height, width, reference_offsets)
  window = _window(row, col, side, height, width)
  row2, col2 = _draw_window(bits, _ROW2, _COL2, side, height, width, reference_offsets)
  window2 = _window(row2, col2, side, height, width)
  coin = tf.bitwise.bitwise_and(bits[:, _COIN], tf.constant(1, tf.uint32)) > 0
  pattern = _placed_pattern(schedule.patterns, regime, row, col, coin, window, height, width)
  return _l2_candidate(x, x_best, eps, window, window2, pattern, signs, clip_min, clip_max)


def _accept(x, x_new, m_new, x_best, m_best, active, queries):
  """The reference's acceptance: an active example takes its candidate if the margin is strictly
  lower, or <= 0, and is charged one query; it stays active while its best margin is > 0."""
  accept = active & ((m_new < m_best) | (m_new <= 0))
  x_best = tf.where(norms_lib.per_example(accept, x) > 0, x_new, x_best)
  m_best = tf.where(accept, m_new, m_best)
  queries += tf.cast(active, tf.int32)
  return x_best, m_best, active & (m_best > 0), queries


class SquareState(collections.namedtuple('SquareState', 'x_best margin queries start_margin',
                                         defaults=(None,))):
  """Where a Square run stands, per example: its best point [B, H, W, C], that point's margin
  [B] (float32, minimised), the queries charged so far [B] (int32) and the margin at the initial
  point [B] (how far the search has come: the fast protocol's continuation rule reads it). An
  example is still searching while it was attacked (queries > 0) and its margin is > 0."""


def square_search(predict, x, y, eps, *, norm='Linf', n_queries=5000, p_init=0.8, seed=0,
                  clip_min=CLIP_MIN, clip_max=CLIP_MAX, reference_offsets=False, resume=None):
  """The random search of `square` (same arguments) without its final check: the SquareState
  after n_queries iterations.

  resume: (iterations, state), continuing from iteration `iterations` the SquareState that a
    call on the same examples (same eps, seeds and options) returned with n_queries=iterations.
    The state reached equals, bit for bit, what one call with n_queries gives: iteration i draws
    from sub-stream i + 1 whatever the budget, and an example still searching after `iterations`
    iterations was searching in all of them, so its state is all that it carries forward.
    The clean check and the initial point are not repeated (2 forward passes fewer). A state
    without start_margin (3 fields) takes the resumed margin as its start.
  """
  geometry = norms_lib.get_norm(norm)
  n_queries = _check_square_args(x, y, eps, n_queries, p_init, clip_min, clip_max)
  x = tf.convert_to_tensor(x)
  _, height, width, channels = x.shape
  y = tf.cast(y, tf.int32)
  batch_size = tf.shape(x)[0]
  eps = per_example_vector(eps, batch_size, x.dtype)
  keys = _example_keys(seeds_for_batch(seed, batch_size))
  is_l2 = geometry.name == 'L2'
  if resume is None:
    done = 0
    x_best, m_best, active, queries = _start(predict, x, y, eps, keys, is_l2, clip_min, clip_max)
    start_margin = m_best
  else:
    done, state = resume
    done = check_count(done, 'resume iterations')
    if done > n_queries:
      raise ValueError(f'resume starts after {done} iterations, beyond n_queries={n_queries}; '
                       'a run can only be continued to a larger budget.')
    state = SquareState(*state)
    x_best = tf.cast(state.x_best, x.dtype)
    m_best = tf.cast(state.margin, tf.float32)
    queries = tf.cast(state.queries, tf.int32)
    active = (queries > 0) & (m_best > 0)
    start_margin = m_best if state.start_margin is None else tf.cast(state.start_margin,
                                                                     tf.float32)
  schedule = _schedule(p_init, height, width, norm, channels, x.dtype)
  propose = _l2_proposal if is_l2 else _linf_proposal

  def body(i, x_best, m_best, active, queries):
    x_new = propose(i, x, x_best, eps, keys, schedule, reference_offsets, clip_min, clip_max)
    x_best, m_best, active, queries = _accept(x, x_new, _margin(predict, x_new, y), x_best,
                                              m_best, active, queries)
    return i + 1, x_best, m_best, active, queries

  _, x_best, m_best, _, queries = tf.while_loop(
      lambda i, _x, _m, active, _q: (i < n_queries) & tf.reduce_any(active), body,
      (tf.constant(done), x_best, m_best, active, queries),
      maximum_iterations=n_queries - done)
  return SquareState(x_best, m_best, queries, start_margin)


def square_outcome(predict, x, y, state):
  """`square`'s outputs (x_adv, success, queries) from the SquareState a search reached: one
  forward pass checks each best point."""
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  success = tf.argmax(predict(state.x_best), -1, output_type=tf.int32) != y
  x_adv = tf.where(norms_lib.per_example(success, x) > 0, state.x_best, x)
  return x_adv, success, state.queries


def square(predict, x, y, eps, *, norm='Linf', n_queries=5000, p_init=0.8, seed=0,
           clip_min=CLIP_MIN, clip_max=CLIP_MAX, reference_offsets=False):
  """Untargeted Square Attack on NHWC images; returns (x_adv, success, queries).

  Args:
    predict: images -> logits. Only forward passes are used (works on non-differentiable models).
    x: images [B, H, W, C] in [clip_min, clip_max], static H, W, C. y: integer labels [B].
    eps: radius, scalar or per example [B]; eps 0 leaves the example alone.
    norm: 'Linf' or 'L2'. n_queries: iterations of random search (AutoAttack: 5000).
    p_init: initial fraction of pixels per window (AutoAttack: 0.8 for both norms).
    seed: int, [2] stateless seed or per-example seeds [B, 2].
    reference_offsets: draw window corners from the reference's {0, ..., H-s-1} (see the module
      docstring) instead of the full range.
  Returns:
    x_adv [B, H, W, C]: the best point where the attack succeeded, x elsewhere (as the reference).
    success bool [B]: argmax predict(x_adv) != y (True for examples misclassified at x).
    queries int32 [B]: forward passes charged to each example by the reference's count: the
      initial point counts 1, then 1 per iteration while the example is still correctly
      classified (margin > 0); at most n_queries + 1; 0 for examples not attacked.
  Each iteration proposes one candidate per still-active example and accepts it only if its margin
  is strictly lower than the best so far (or <= 0), as the reference. An example whose margin is
  <= 0 is done and never changes again; the loop stops once every example is done.
  Cost per call on the batch: 3 + (iterations run, <= n_queries) forward passes (clean check,
  initial point, one per iteration, final check), no gradients. `square_search` with `resume`
  continues a run to a larger budget.
  """
  state = square_search(predict, x, y, eps, norm=norm, n_queries=n_queries, p_init=p_init,
                        seed=seed, clip_min=clip_min, clip_max=clip_max,
                        reference_offsets=reference_offsets)
  return square_outcome(predict, x, y, state)

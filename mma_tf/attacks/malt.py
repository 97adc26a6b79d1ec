"""MALT target ranking (Melamed, Yehudai, Shamir 2024, "MALT Powers Up Adversarial Attacks").

AutoAttack's targeted attacks aim at the classes ranked 2, 3, ... by clean logit (confidence).
MALT ranks the classes j != y instead by a linear estimate of the distance from x to the boundary
between y and j,
  d_j = (z_y - z_j) / ||grad_x (z_y - z_j)||_dual       (dual norm: L1 for Linf, L2 for L2),
which is the exact distance for an affine classifier whose box does not bind, and runs the
targeted attack on the few classes with the smallest d_j. The fast protocol takes the nearest
classes seen from x and from a `probe` point a few steps toward the boundary
(`protocol_attacks.APGDTMalt`, docs/autoattack.md 6).

Pure functions: per example and batch-independent (the Jacobian of an inference-mode model has no
cross-example terms), graph- and XLA-friendly. malt_scores costs one forward pass and K backward
passes.
"""
import tensorflow as tf

from mma_tf import norms as norms_lib
from mma_tf.attacks.pgd_attack import pgd

_TINY = 1e-12


def malt_scores(predict, x, y, norm='Linf'):
  """d_j = (z_y - z_j) / (||grad_x (z_y - z_j)||_dual + 1e-12) per example and class [B, K]
  (float32), +inf for j = y. With zero gradients the order falls back to the logit order."""
  name = norms_lib.get_norm(norm).name
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  # One backward pass per class, not batch_jacobian: its vectorisation (pfor) fails on ops it
  # cannot convert, e.g. a model that updates a variable in its gradient. Examples are independent
  # in inference mode, so the gradient of a column's batch sum is each example's gradient.
  with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
    tape.watch(x)
    logits = tf.cast(predict(x), tf.float32)
    gap = tf.gather(logits, y, axis=1, batch_dims=1)[:, None] - logits  # [B, K]
    columns = tf.unstack(gap, num=logits.shape[-1], axis=1)
  jac = tf.stack([tf.reshape(tf.cast(tape.gradient(
      c, x, unconnected_gradients=tf.UnconnectedGradients.ZERO), tf.float32), [tf.shape(x)[0], -1])
                  for c in columns], axis=1)  # [B, K, D]
  del tape
  dual = (tf.reduce_sum(tf.abs(jac), axis=2) if name == 'Linf'
          else tf.sqrt(tf.reduce_sum(tf.square(jac), axis=2)))
  own = tf.one_hot(y, tf.shape(gap)[1], on_value=True, off_value=False)
  return tf.where(own, float('inf'), gap / (dual + _TINY))


def malt_order(predict, x, y, norm='Linf'):
  """The classes of each example by increasing MALT score [B, K] (int32): column 0 is MALT's first
  target, the label last; ties go to the lower class index (a stable sort)."""
  return tf.argsort(malt_scores(predict, x, y, norm), axis=1, stable=True)


def logit_order(logits, y):
  """The classes of each example by decreasing logit [B, K] (int32), the label last (ties: lower
  class first): AutoAttack's target order when taken at x."""
  own = tf.one_hot(tf.cast(y, tf.int32), tf.shape(logits)[1], on_value=True, off_value=False)
  logits = tf.where(own, -float('inf'), tf.cast(logits, tf.float32))
  return tf.argsort(logits, axis=1, direction='DESCENDING', stable=True)


def probe(predict, x, y, eps, norm='Linf', nb_iter=10):
  """A short deterministic step toward the boundary: nb_iter PGD steps of cross-entropy ascent
  from x (no random start, step eps / 4) inside the eps ball. On models far from linear at the
  scale of eps, the linear estimate there sees classes that the estimate at x ranks far down
  (docs/autoattack.md 6)."""
  return pgd(predict, x, y, eps, norm=norm, nb_iter=nb_iter, rel_step_size=0.25, loss='ce',
             rand_init=False)

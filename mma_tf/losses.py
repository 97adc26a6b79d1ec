"""Per-example classification losses, as advertorch defines them (docs/paper_notes.md 1.1).

Every function takes logits [B, K] and integer labels [B] and returns a float32 vector [B]:
logits are cast to float32 first, so the losses stay exact under mixed precision.
"""
import tensorflow as tf


def _prepare(logits, labels):
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels, tf.int32)
  true_mask = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  true_logit = tf.gather(logits, labels, axis=1, batch_dims=1)
  return logits, labels, true_mask, true_logit


def cross_entropy(logits, labels):
  """CE = logsumexp_j z_j - z_y."""
  logits, labels, _, _ = _prepare(logits, labels)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def soft_logit_margin(logits, labels):
  """SLM = logsumexp_{j != y} z_j - z_y; negative iff p(y|x) > 1/2."""
  logits, _, true_mask, true_logit = _prepare(logits, labels)
  others = tf.where(true_mask, tf.constant(-float('inf'), tf.float32), logits)
  return tf.reduce_logsumexp(others, axis=-1) - true_logit


def logit_margin(logits, labels):
  """LM = max_{j != y} z_j - z_y; >= 0 iff the argmax is not y (the decision boundary is 0)."""
  logits, _, true_mask, true_logit = _prepare(logits, labels)
  others = tf.where(true_mask, tf.constant(-float('inf'), tf.float32), logits)
  return tf.reduce_max(others, axis=-1) - true_logit


def cw_loss(logits, labels, kappa=50.0):
  """Carlini-Wagner loss with confidence kappa: max(LM + kappa, 0)."""
  return tf.nn.relu(logit_margin(logits, labels) + kappa)


def dlr_loss(logits, labels):
  """Untargeted Difference of Logits Ratio (Croce & Hein 2020): -(z_y - max_{j!=y} z_j) /
  (z_pi1 - z_pi3 + 1e-12), with z_pi the logits sorted in decreasing order. > 0 iff misclassified;
  invariant to shifting and positive scaling of the logits. Needs >= 3 classes.
  """
  logits, _, _, true_logit = _prepare(logits, labels)
  top = tf.math.top_k(logits, 3).values
  best_other = true_logit + logit_margin(logits, labels)
  return -(true_logit - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits, labels, targets):
  """Targeted DLR (APGD-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), the sort over all
  classes. Needs >= 4 classes."""
  logits, _, _, true_logit = _prepare(logits, labels)
  target_logit = tf.gather(logits, tf.cast(targets, tf.int32), axis=1, batch_dims=1)
  top = tf.math.top_k(logits, 4).values
  return -(true_logit - target_logit) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def target_by_rank(logits, rank):
  """The class with the `rank`-th largest logit per example (rank 1 = the predicted class).

  AutoAttack's targeted attacks use ranks 2..10 of the clean logits as their 9 targets.
  """
  order = tf.argsort(tf.cast(logits, tf.float32), axis=-1, direction='DESCENDING', stable=True)
  return order[:, rank - 1]


LOSSES = {
    'ce': cross_entropy,
    'slm': soft_logit_margin,
    'lm': logit_margin,
    'cw': cw_loss,
    'dlr': dlr_loss,
}


def get_loss(name):
  """Returns the per-example loss called `name` (one of LOSSES), or raises ValueError."""
  if callable(name):
    return name
  key = str(name).lower()
  if key not in LOSSES:
    raise ValueError(f'Unknown loss {name!r}; choose one of {sorted(LOSSES)}.')
  return LOSSES[key]

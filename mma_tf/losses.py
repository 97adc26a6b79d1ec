"""Per-example classification losses, as advertorch defines them (PAPER.md 1.1).

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


LOSSES = {
    'ce': cross_entropy,
    'slm': soft_logit_margin,
    'lm': logit_margin,
    'cw': cw_loss,
}


def get_loss(name):
  """Returns the per-example loss called `name` (one of LOSSES), or raises ValueError."""
  if callable(name):
    return name
  key = str(name).lower()
  if key not in LOSSES:
    raise ValueError(f'Unknown loss {name!r}; choose one of {sorted(LOSSES)}.')
  return LOSSES[key]

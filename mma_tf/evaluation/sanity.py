"""Signs that an evaluation cannot be trusted (AutoAttack's checks and the MMA evaluator's own).

Every check warns and says what it means; none stops the run.
"""
import numpy as np
import tensorflow as tf

from mma_tf import losses, norms
from mma_tf.attacks import input_gradient
from mma_tf.evaluation.common import is_correct, stream_example_seeds


def model_checks(predict, x, y):
  """Randomness, probabilities instead of logits, and zero input gradients, on one batch."""
  x = tf.convert_to_tensor(x)
  outs = [np.asarray(predict(x)) for _ in range(3)]
  unit = [o / np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-12) for o in outs]
  grad = input_gradient(predict, losses.cross_entropy, x, y).numpy().reshape(len(y), -1)
  out = outs[0]
  return {
      'zero_gradient_fraction': float(np.mean(np.all(grad == 0, axis=1))),
      'nondeterministic': bool(max(np.abs(u - unit[0]).max() for u in unit[1:]) > 1e-4),
      'looks_like_probabilities': bool(np.all(out > -1e-5) and np.all(out < 1 + 1e-5)
                                       and np.allclose(out.sum(1), 1, atol=1e-5)),
  }


def noise_fn(predict, norm, seed, nb_draws):
  """fn(x, y, index, eps) -> (correct under `nb_draws` random points of the eps-sphere [B],)."""
  geometry = norms.get_norm(norm)

  def fn(x, y, index, eps):
    correct = tf.ones(tf.shape(y), tf.bool)
    for r in range(nb_draws):
      delta = geometry.random_sphere(x, eps, stream_example_seeds(seed, f'noise/{r}', index))
      x_noisy = tf.clip_by_value(x + delta, 0.0, 1.0)
      correct = correct & is_correct(predict(x_noisy), y)
    return (correct,)

  return fn


def warnings_for(results):
  """Human-readable warnings from the results dict built by `evaluation.evaluate`."""
  sanity, out = results['sanity'], []
  if sanity['zero_gradient_fraction'] > 0.01:
    out.append(f'{sanity["zero_gradient_fraction"]:.0%} of examples have an all-zero input '
               'gradient: gradient masking (stop_gradient, saturated softmax, quantisation); '
               'gradient attacks are unreliable on this model.')
  if sanity['nondeterministic']:
    out.append('The model returns different outputs for the same input (dropout or randomness '
               'at inference): robust accuracy may be overstated; evaluate it with EOT.')
  if sanity['looks_like_probabilities']:
    out.append('The outputs look like probabilities, not logits: export the logits; attacks on '
               'softmax outputs suffer from vanishing gradients.')
  if sanity.get('clean_recount_mismatch'):
    out.append('Clean accuracy differs between two batchings of the same points: the model\'s '
               'output depends on the batch (BatchNorm in training mode?).')
  for key, acc in results['robust_acc'].items():
    noise = sanity['random_noise_acc'][key]
    if noise < acc:
      out.append(f'At eps {key}, random noise ({noise:.4f}) beats the attacks ({acc:.4f}): an '
                 'attack is broken or the gradients are masked.')
  for protocol, p in results['protocols'].items():
    names = p['attacks']
    for key, after in p['acc_after'].items():
      if 'square' in names and names.index('square') > 0:
        i = names.index('square')
        before = min(after[n] for n in names[:i])
        if after['square'] < before - 0.002:
          out.append(f'At eps {key} ({protocol}), Square (no gradients) broke '
                     f'{100 * (before - after["square"]):.1f}% of the points the gradient '
                     'attacks left robust: a sign of gradient masking; use an adaptive attack.')
  accs = [results['robust_acc'][k] for k in sorted(results['robust_acc'], key=float)]
  if any(b > a + 1e-9 for a, b in zip(accs, accs[1:])):
    out.append('Robust accuracy rises with eps: the attack is not converging.')
  if results['margin'].get('disagreement_frac', 0) > 0.25:
    out.append(f'The margin estimates disagree by >10% on '
               f'{results["margin"]["disagreement_frac"]:.0%} of correct examples.')
  return out

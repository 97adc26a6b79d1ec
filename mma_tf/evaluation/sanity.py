"""Signs that an evaluation cannot be trusted (AutoAttack's checks and the MMA evaluator's own).

Every check warns and says what it means; none stops the run.
"""
import numpy as np
import tensorflow as tf

from mma_tf import losses, norms
from mma_tf.attacks import input_gradient
from mma_tf.attacks.common import CLIP_MAX, CLIP_MIN
# Square's masking threshold (SQUARE_SHARE of the points left, at least SQUARE_MIN_POINTS) is
# also fast's reason to run Square in full: it lives with Square.
from mma_tf.attacks.protocol_attacks import (SQUARE_MIN_POINTS, SQUARE_SHARE,
                                             square_signals_masking)
from mma_tf.evaluation.common import is_correct, stream_example_seeds
from mma_tf.setting_names import setting


# Warning thresholds, each set between what ordinary models show and what models built to fail
# show (measured: docs/autoattack.md 5).
ZERO_GRADIENT_SHARE = 0.01     # of the checked examples
NONDETERMINISM = 1e-4          # L2 distance of unit-normalised logits (the reference's value)
MARGIN_SPREAD = 0.1            # estimates further apart than 10% of the smallest ...
MARGIN_SHARE = 0.75            # ... on more than this share of the correct examples

# Random points per example on the eps-sphere for the noise check. Its own count: it used to be
# max(nb_restart, 4) of the paper protocol, whose default (10) this keeps.
NOISE_DRAWS = 10


def model_checks(predict, x, y):
  """Randomness, probabilities instead of logits, and zero input gradients, on one batch."""
  x = tf.convert_to_tensor(x)
  outs = [np.asarray(predict(x)) for _ in range(3)]
  unit = [o / np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-12) for o in outs]
  grad = input_gradient(predict, losses.cross_entropy, x, y).numpy().reshape(len(y), -1)
  out = outs[0]
  spread = max(float(np.linalg.norm(u - unit[0], axis=1).max()) for u in unit[1:])
  zero = np.all(grad == 0, axis=1)
  return {
      'checked_examples': len(y),
      'zero_gradient_count': int(zero.sum()),
      'zero_gradient_fraction': float(zero.mean()),
      'nondeterminism': spread,
      'nondeterministic': spread > NONDETERMINISM,
      'looks_like_probabilities': bool(np.all(out > -1e-5) and np.all(out < 1 + 1e-5)
                                       and np.allclose(out.sum(1), 1, atol=1e-5)),
  }


def point_checks(keys, clean, robust, noise_correct, per_protocol):
  """Per eps (keys), the points behind two warnings: 'noise_only', robust points that random
  noise broke; 'square', per protocol that runs Square after a gradient attack, the points Square
  broke ('broke', 'indices') out of the clean-correct points the attacks before it left robust
  ('left_robust'). clean [N], robust and noise_correct [eps, N]; per_protocol: {protocol:
  {'attacks': names, 'broken_by': [eps][N] index of the attack that broke a point, -1 if none}}."""
  def points(mask):
    return {'count': int(mask.sum()), 'indices': np.nonzero(mask)[0].tolist()}

  out = {'noise_only': {k: points(r & ~v) for k, r, v in zip(keys, robust, noise_correct)},
         'square': {}}
  for p, r in per_protocol.items():
    names = r['attacks']
    if 'square' in names[1:]:
      i = names.index('square')
      out['square'][p] = {
          k: dict(broke=int(np.sum(b == i)), indices=np.nonzero(b == i)[0].tolist(),
                  left_robust=int(np.sum(clean & ((b < 0) | (b >= i)))))
          for k, b in zip(keys, r['broken_by'])}
  return out


def noise_fn(predict, norm, seed, nb_draws):
  """fn(x, y, index, eps) -> (correct under `nb_draws` random points of the eps-sphere [B],)."""
  geometry = norms.get_norm(norm)

  def fn(x, y, index, eps):
    correct = tf.ones(tf.shape(y), tf.bool)
    for r in range(nb_draws):
      delta = geometry.random_sphere(x, eps, stream_example_seeds(seed, f'noise/{r}', index))
      x_noisy = tf.clip_by_value(x + delta, CLIP_MIN, CLIP_MAX)
      correct = correct & is_correct(predict(x_noisy), y)
    return (correct,)

  return fn


def warnings_for(results):
  """Human-readable warnings from the results dict built by `evaluation.evaluate`, each with the
  count behind it and its threshold."""
  sanity, out = results['sanity'], []
  if sanity['zero_gradient_fraction'] > ZERO_GRADIENT_SHARE:
    out.append(f'{sanity["zero_gradient_count"]} of {sanity["checked_examples"]} checked '
               f'examples ({sanity["zero_gradient_fraction"]:.1%}) have an all-zero input '
               f'gradient (threshold: more than {ZERO_GRADIENT_SHARE:.0%}): gradient masking '
               '(stop_gradient, saturated softmax, quantisation); gradient attacks are unreliable '
               'on this model.')
  if sanity['nondeterministic'] and 'rand' not in results['protocols']:
    out.append(f'The model returns different outputs for the same input (unit-normalised logits '
               f'{sanity["nondeterminism"]:.2g} apart; threshold {NONDETERMINISM:g}): dropout or '
               'randomness at inference, so robust accuracy may be overstated. Evaluate it with '
               f"AutoAttack's rand version (APGD with EOT): {setting('protocol', 'rand')}.")
  if sanity['looks_like_probabilities']:
    out.append('The outputs look like probabilities, not logits: export the logits; attacks on '
               'softmax outputs suffer from vanishing gradients.')
  if sanity.get('clean_recount_mismatch'):
    out.append('Clean accuracy differs between two batchings of the same points: the model\'s '
               'output depends on the batch (BatchNorm in training mode?).')
  for key, noise in sanity['noise_only'].items():
    if noise['count']:
      out.append(f'At eps {key}, random noise broke {noise["count"]} point(s) that every attack '
                 'left robust (threshold: any): an attack is broken or the gradients are masked.')
  for protocol, per_eps in sanity['square'].items():
    for key, sq in per_eps.items():
      if square_signals_masking(sq['broke'], sq['left_robust']):
        out.append(f'At eps {key} ({protocol}), Square (no gradients) broke {sq["broke"]} of the '
                   f'{sq["left_robust"]} points the gradient attacks left robust '
                   f'({sq["broke"] / sq["left_robust"]:.1%}; threshold: more than '
                   f'{SQUARE_SHARE:.0%} and at least {SQUARE_MIN_POINTS} points): a sign of '
                   'gradient masking; use an adaptive attack.')
  for protocol, p in results['protocols'].items():
    for key, per_attack in p['unconfirmed'].items():
      for attack, count in per_attack.items():
        if count:
          out.append(f'At eps {key} ({protocol}), {attack} claimed {count} success(es) that a '
                     'fresh forward pass did not confirm (threshold: any); they count as robust. '
                     'Randomness at inference, or a bug in the attack.')
  n = results['num_examples']
  accs = [(float(k), results['robust_acc'][k]) for k in results['robust_acc']]
  for (e0, a0), (e1, a1) in zip(sorted(accs), sorted(accs)[1:]):
    if a1 > a0 + 1e-9:
      out.append(f'Robust accuracy rises from eps {e0:g} to {e1:g} ({round(a0 * n)} to '
                 f'{round(a1 * n)} of {n} points; threshold: any rise): the attack is not '
                 'converging.')
  margin = results['margin']
  if margin.get('disagreement_frac', 0) > MARGIN_SHARE:
    out.append(f'The margin estimates are more than {MARGIN_SPREAD:.0%} apart on '
               f'{margin["disagreement_frac"]:.0%} of correct examples (threshold '
               f'{MARGIN_SHARE:.0%}): at least one estimate is weak on this model.')
  return out

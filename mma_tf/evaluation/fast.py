"""The fast protocol: AutoAttack's verdict for a fraction of its cost. Not standard AutoAttack.

Standard AutoAttack spends most of its time proving robust points robust (docs/autoattack.md 6):
- APGD-CE: AutoAttack's own (same budget, same random starts), so it breaks the same points;
- APGD-T toward only the classes MALT ranks nearest (a linear estimate of the distance to each
  class's boundary, `attacks/malt.py`): the `fast_n_target_classes` nearest seen from x and as
  many seen from a short probe step toward the boundary, instead of the 9 ranked by logit. Each
  run is AutoAttack's own run for that class (same stage, same seeds);
- FAB-T toward only the `fast_fab_target_classes` classes MALT ranks nearest at x (AutoAttack's
  own deterministic runs for those classes);
- Square with `fast_square_queries` queries: a prefix of AutoAttack's Square run (the same random
  stream, and the window schedule does not depend on the budget), continued to the full
  `square_queries` on the remaining points when the model checks suggest gradient masking or the
  short run breaks a point the gradient attacks left.
"""
import dataclasses

import numpy as np

from mma_tf.evaluation.runner import run_attacks

FAST = ('apgd-ce', 'apgd-t-malt', 'fab-t-malt', 'square')


def masking_signs(checks):
  """Why Square should get its full budget from the start (sanity.model_checks' flags): []."""
  signs = []
  if checks['zero_gradient_fraction'] > 0:
    signs.append(f'{checks["zero_gradient_fraction"]:.0%} of the checked points have an all-zero '
                 'input gradient')
  if checks['nondeterministic']:
    signs.append('the outputs are random')
  if checks['looks_like_probabilities']:
    signs.append('the outputs look like probabilities')
  return signs


def describe(config):
  """One sentence for reports: what fast runs, and that it is not standard AutoAttack."""
  k = config.fast_n_target_classes
  return (f'fast is not standard AutoAttack: APGD-CE ({config.apgd_nb_iter} iterations), APGD-T '
          f'toward the {k} classes MALT ranks nearest at x and the {k} nearest at a probe point '
          f'(not all {config.n_target_classes} by logit), FAB-T toward the '
          f'{config.fast_fab_target_classes} nearest at x, Square with '
          f'{config.fast_square_queries} queries (the full {config.square_queries} where the '
          'model checks suggest gradient masking or the short run breaks a point). Report '
          'AutoAttack numbers from --protocol=autoattack.')


def run_fast(runner, predict, attacks, images, labels, index, eps, start_robust, seed,
             num_classes, full_queries, signs, progress=None):
  """run_attacks for the fast protocol, with Square's budget rule; the same dict as run_attacks,
  plus square_queries (the budget Square finally had) and square_reason (why it was full)."""
  i = [a.name for a in attacks].index('square')
  full = dataclasses.replace(attacks[i], n_queries=full_queries)
  reason = None
  if signs and attacks[i].n_queries < full_queries:
    attacks = attacks[:i] + [full] + attacks[i + 1:]
    reason = '; '.join(signs)
  out = run_attacks(runner, predict, attacks, images, labels, index, eps, start_robust, seed,
                    num_classes, progress)
  short_broke = int(np.sum(out['broken_by'] == i))
  if reason is None and short_broke and attacks[i].n_queries < full_queries:
    reason = (f'the {attacks[i].n_queries}-query run broke {short_broke} point(s) the gradient '
              'attacks left robust')
    if progress:
      progress(f'eps {eps:g} square: {reason}; continuing to {full_queries} queries')
    # The same stream: the full run repeats the short one's first queries, then goes on.
    more = run_attacks(runner, predict, [full], images, labels, index, eps, out['robust'], seed,
                       num_classes, progress)
    hit = more['broken_by'] == 0
    out['robust'] = more['robust']
    out['broken_by'][hit] = i
    out['adv_norm'][hit] = more['adv_norm'][hit]
    out['acc_after'][i] = more['acc_after'][0]
    out['seconds'][i] += more['seconds'][0]
    out['unconfirmed'][i] += more['unconfirmed'][0]
  out['square_queries'] = full_queries if reason else attacks[i].n_queries
  out['square_reason'] = reason
  return out


def compare(autoattack_robust, fast_robust, keys):
  """Per eps key, the points (positions in the evaluated set) on which the two verdicts differ:
  fast's goal is an empty 'broken_only_by_autoattack' (robust arrays [eps, N])."""
  return {k: {'same': bool(np.array_equal(a, f)),
              'broken_only_by_autoattack': np.flatnonzero(~a & f).tolist(),
              'broken_only_by_fast': np.flatnonzero(a & ~f).tolist()}
          for k, a, f in zip(keys, autoattack_robust, fast_robust)}

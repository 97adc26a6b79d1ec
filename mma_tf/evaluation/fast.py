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
  stream, and the window schedule does not depend on the budget), then the full `square_queries`
  from where each point's search stopped (`Square.full_queries`, resumed by `run_attacks`, so a
  continued point gets AutoAttack's Square verdict without repeating the short run's queries):
  on every point left when the model checks suggest gradient masking or the short run broke
  more of the points the gradient attacks left than the masking check allows
  (`square_signals_masking`); otherwise on the points whose search is still closing in,
  those whose margin fell to `fast_square_continue_below` of its value at Square's initial point
  or lower (Square's late breaks on robust models come from these: docs/autoattack.md 6).
Its attack list is `protocol_names.FAST`.
"""
import numpy as np


def describe(config):
  """One sentence for reports: what fast runs, and that it is not standard AutoAttack."""
  k = config.fast_n_target_classes
  per_point = (f', else on the points whose margin fell to {config.fast_square_continue_below:g} '
               'of its start or lower' if config.fast_square_continue_below else '')
  return (f'fast is not standard AutoAttack: APGD-CE ({config.apgd_nb_iter} iterations), APGD-T '
          f'toward the {k} classes MALT ranks nearest at x and the {k} nearest at a probe point '
          f'(not all {config.n_target_classes} by logit), FAB-T toward the '
          f'{config.fast_fab_target_classes} nearest at x, Square with '
          f'{config.fast_square_queries} queries, continued to the full {config.square_queries} '
          f'on every point where the model checks or the short run suggest gradient masking'
          f'{per_point}. Report AutoAttack numbers from --protocol=autoattack.')


def compare(autoattack_robust, fast_robust, keys):
  """Per eps key, the points (positions in the evaluated set) on which the two verdicts differ:
  fast's goal is an empty 'broken_only_by_autoattack' (robust arrays [eps, N])."""
  return {k: {'same': bool(np.array_equal(a, f)),
              'broken_only_by_autoattack': np.flatnonzero(~a & f).tolist(),
              'broken_only_by_fast': np.flatnonzero(a & ~f).tolist()}
          for k, a, f in zip(keys, autoattack_robust, fast_robust)}

"""Registry entries for the built-in attacks: AutoAttack's four, the fast protocol's MALT-targeted
APGD-T and the MMA paper's PGD restarts.

Each entry only maps (stage -> call of the attack function); the algorithms live in their own
modules (`apgd_attack.py`, `fab_attack.py`, `square_attack.py`, `pgd_attack.py`).
"""
import dataclasses

import tensorflow as tf

from mma_tf.attacks.apgd_attack import apgd
from mma_tf.attacks.fab_attack import fab
from mma_tf.attacks.malt import logit_order, malt_order, probe
from mma_tf.attacks.pgd_attack import pgd
from mma_tf.attacks.square_attack import SquareState, square_outcome, square_search
from mma_tf.attacks.registry import Attack, register


def _misclassified(predict, x_adv, y):
  return tf.not_equal(tf.argmax(predict(x_adv), -1, output_type=tf.int32), tf.cast(y, tf.int32))


@register('pgd')
@dataclasses.dataclass
class PGDRestarts(Attack):
  """The MMA paper's whitebox protocol: `nb_restart` PGD runs from random starts, the first half
  (rounded up) with cross-entropy, the rest with the CW loss (kappa 50); success at the last
  iterate, as advertorch (the paper's numbers are computed so)."""
  nb_iter: int = 100
  nb_restart: int = 10
  rel_step: float = 1 / 40

  def num_stages(self, num_classes):
    return self.nb_restart

  def loss(self, stage):
    return 'ce' if stage < (self.nb_restart + 1) // 2 else 'cw'

  def run_stage(self, predict, x, y, eps, seeds, stage):
    x_adv = pgd(predict, x, y, eps, norm=self.norm, nb_iter=self.nb_iter,
                rel_step_size=self.rel_step, loss=self.loss(stage), rand_init=True, seed=seeds)
    return x_adv, _misclassified(predict, x_adv, y)


@dataclasses.dataclass
class Transfer(Attack):
  """Adversarial examples crafted by `inner` on a `source` model, scored on the evaluated model
  (the MMA paper's transfer attacks, docs/paper_notes.md 5.1). Not registered: it needs a model."""
  inner: Attack = None
  source: object = None
  name = 'transfer'

  def num_stages(self, num_classes):
    return self.inner.num_stages(num_classes)

  @property
  def stream(self):
    return self.inner.stream  # the same starts as the whitebox run of `inner`

  def run_stage(self, predict, x, y, eps, seeds, stage):
    x_adv, _ = self.inner.run_stage(self.source, x, y, eps, seeds, stage)
    return x_adv, _misclassified(predict, x_adv, y)

  def describe(self):
    return f'transfer({self.inner.describe()} on the source model)'


# Losses a small classifier cannot compute, and what replaces them: {loss: (classes needed,
# replacement, description)}. The replacements are defined for any 2 classes: the reference code's
# own targeted cross-entropy (`ce_loss_targeted`) and DLR's numerator, the logit margin.
_LOSS_FALLBACK = {
    'dlr': (3, 'lm', "the logit margin (DLR's numerator) instead of DLR, which needs 3 classes"),
    'dlr_targeted': (4, 'ce_targeted', 'targeted cross-entropy (the reference code\'s '
                     'ce-targeted loss) instead of targeted DLR, which needs 4 classes'),
}


def _defined_loss(attack, num_classes):
  """(attack, notes): the attack with a loss that `num_classes` classes define."""
  if attack.loss in _LOSS_FALLBACK and num_classes < _LOSS_FALLBACK[attack.loss][0]:
    _, loss, why = _LOSS_FALLBACK[attack.loss]
    return dataclasses.replace(attack, loss=loss), [f'{attack.name}: {why}']
  return attack, []


def _fewer_targets(attack, num_classes):
  """The note for a targeted attack that has fewer classes to target than it was asked for."""
  if num_classes - 1 >= attack.n_target_classes:
    return []
  others = 'the other one' if num_classes == 2 else 'all the others'
  return [f'{attack.name}: {num_classes - 1} target class{"es" if num_classes > 2 else ""} '
          f'({others}) instead of {attack.n_target_classes}']


@register('apgd-ce')
@dataclasses.dataclass
class APGDCE(Attack):
  """APGD with cross-entropy, one run (AutoAttack standard); with eot_iter > 1 each step follows
  the mean gradient of that many forward-backward passes (AutoAttack's rand version: 20)."""
  nb_iter: int = 100
  loss: str = 'ce'
  eot_iter: int = 1

  def for_classes(self, num_classes):
    return _defined_loss(self, num_classes)

  def run_stage(self, predict, x, y, eps, seeds, stage):
    return apgd(predict, x, y, eps, norm=self.norm, loss=self.loss, nb_iter=self.nb_iter,
                eot_iter=self.eot_iter, seed=seeds)


@register('apgd-dlr')
@dataclasses.dataclass
class APGDDLR(APGDCE):
  """APGD with the untargeted DLR loss (AutoAttack 'plus' / 'rand' versions); below 3 classes,
  the logit margin."""
  loss: str = 'dlr'


@register('apgd-t')
@dataclasses.dataclass
class APGDT(Attack):
  """APGD with the targeted DLR loss, one run per target: the classes ranked 2..n+1 by clean
  logit, each on the points the earlier targets left robust. Below 4 classes the loss is targeted
  cross-entropy, toward each of the K-1 other classes."""
  nb_iter: int = 100
  n_target_classes: int = 9
  loss: str = 'dlr_targeted'
  stage_is_tensor = True

  def num_stages(self, num_classes):
    return min(self.n_target_classes, num_classes - 1)

  def for_classes(self, num_classes):
    attack, changes = _defined_loss(self, num_classes)
    return attack, changes + _fewer_targets(self, num_classes)

  def run_stage(self, predict, x, y, eps, seeds, stage):
    return apgd(predict, x, y, eps, norm=self.norm, loss=self.loss, nb_iter=self.nb_iter,
                target_rank=stage + 2, seed=seeds)


def _malt_stages(predict, x, y, eps, norm, k, num_stages, at_probe):
  """bool [B, num_stages]: the stages (stage s: the class of clean-logit rank s + 2, as in
  AutoAttack's targeted attacks) of the k classes MALT ranks nearest at x, and with `at_probe`
  also of the k nearest at a short probe step toward the boundary (malt.py)."""
  nearest = [malt_order(predict, x, y, norm)[:, :k]]
  if at_probe:
    nearest.append(malt_order(predict, probe(predict, x, y, eps, norm), y, norm)[:, :k])
  # Stage of each class: its position among the clean logits, the label (rank 1) left out.
  stage_of = tf.argsort(logit_order(predict(x), y), axis=1, stable=True)
  stages = tf.gather(stage_of, tf.concat(nearest, axis=1), batch_dims=1)
  return tf.reduce_any(tf.one_hot(stages, num_stages, on_value=True, off_value=False), axis=1)


@register('apgd-t-malt')
@dataclasses.dataclass
class APGDTMalt(APGDT):
  """AutoAttack's APGD-T runs toward only the classes MALT ranks nearest (`malt.py`): the
  n_target_classes nearest seen from x and the n_target_classes nearest seen from a short probe
  step toward the boundary (the estimate at x alone misses classes that open up further in,
  docs/autoattack.md 6). Each run is AutoAttack's run for that class (the same stage and seeds),
  so a point AutoAttack's APGD-T breaks through one of these classes is broken here too. The
  fast protocol's targeted attack."""
  nb_iter: int = 100
  n_target_classes: int = 2
  selects_stages = True

  @property
  def stream(self):
    return 'apgd-t'  # AutoAttack's seeds

  def num_stages(self, num_classes):
    return num_classes - 1  # stage s: the class of logit rank s + 2, as in APGD-T

  def select_stages(self, predict, x, y, eps, num_stages):
    return _malt_stages(predict, x, y, eps, self.norm, self.n_target_classes, num_stages,
                        at_probe=True)


@register('fab-t')
@dataclasses.dataclass
class FABT(Attack):
  """Targeted FAB, minimal norm, deterministic start, one run per target (ranks 2..n+1), each on
  the points the earlier targets left robust; success = a point within eps was found."""
  nb_iter: int = 100
  n_target_classes: int = 9
  stage_is_tensor = True

  def num_stages(self, num_classes):
    return min(self.n_target_classes, num_classes - 1)

  def for_classes(self, num_classes):
    return self, _fewer_targets(self, num_classes)

  def run_stage(self, predict, x, y, eps, seeds, stage):
    x_adv, success, _ = fab(predict, x, y, eps, norm=self.norm, nb_iter=self.nb_iter,
                            target_rank=stage + 2)
    return x_adv, success


@register('fab-t-malt')
@dataclasses.dataclass
class FABTMalt(FABT):
  """AutoAttack's FAB-T runs toward only the n_target_classes classes MALT ranks nearest at x:
  FAB itself follows the linearisation of the boundary from x, and on the digits models the
  classes of FAB-T's own breaks were MALT's first three there (docs/autoattack.md 6). Each run is
  AutoAttack's run for that class (FAB-T is deterministic). The fast protocol's FAB-T."""
  n_target_classes: int = 3
  selects_stages = True

  def num_stages(self, num_classes):
    return num_classes - 1

  def select_stages(self, predict, x, y, eps, num_stages):
    return _malt_stages(predict, x, y, eps, self.norm, self.n_target_classes, num_stages,
                        at_probe=False)


# Square breaking more than this share of the points the gradient attacks left, and at least
# this many, is a sign of gradient masking (set between what ordinary models and models built to
# fail show: docs/autoattack.md 5). The sanity check warns of it; fast's Square then goes on.
SQUARE_SHARE = 0.05
SQUARE_MIN_POINTS = 3


def square_signals_masking(broke, left):
  """True when Square broke `broke` of the `left` points the gradient attacks left robust: more
  than SQUARE_SHARE of them and at least SQUARE_MIN_POINTS."""
  return broke >= SQUARE_MIN_POINTS and broke > SQUARE_SHARE * left


def masking_signs(checks):
  """Why a model's gradients may mislead the gradient attacks, from the model checks
  (`sanity.model_checks`; None: not run): [] when none."""
  if checks is None:
    return []
  signs = []
  if checks['zero_gradient_fraction'] > 0:
    signs.append(f'{checks["zero_gradient_fraction"]:.0%} of the checked points have an all-zero '
                 'input gradient')
  if checks['nondeterministic']:
    signs.append('the outputs are random')
  if checks['looks_like_probabilities']:
    signs.append('the outputs look like probabilities')
  return signs


@register('square')
@dataclasses.dataclass
class Square(Attack):
  """The Square attack: score-based random search (no gradients), margin loss.

  With full_queries above n_queries (the fast protocol's Square), the search goes on to
  full_queries, resumed from where each point's search stood (so each continued point gets a
  full_queries run's verdict without repeating the first queries): on every point still robust
  when the model checks or the n_queries run show signs of gradient masking (the run broke more
  of the points it attacked than `square_signals_masking` allows); otherwise on the points whose
  search is still closing in, those whose margin fell to `continue_below` of its value at the
  initial point or lower (docs/autoattack.md 6: Square's late breaks on robust models come from
  these)."""
  n_queries: int = 5000
  p_init: float = 0.8
  full_queries: int = None
  continue_below: float = None
  resume_from: int = None  # a continuation's: the queries of the run whose state it continues
  uses_gradients = False

  def _may_continue(self):
    return self.full_queries is not None and self.full_queries > self.n_queries

  @property
  def selects_stages(self):
    """A per-point continuation runs only on the points whose search is still closing in."""
    return self.resume_from is not None and self.continue_below is not None

  def select_stages(self, predict, x, y, eps, num_stages, state=None):
    found = SquareState(*state)
    closing_in = found.margin <= self.continue_below * found.start_margin
    return tf.tile(closing_in[:, None], [1, num_stages])

  def run_stage(self, predict, x, y, eps, seeds, stage, state=None):
    """`state` (a continuation's): where each point's search stood after resume_from queries."""
    resume = None if state is None else (self.resume_from, state)
    found = square_search(predict, x, y, eps, norm=self.norm, n_queries=self.n_queries,
                          p_init=self.p_init, seed=seeds, resume=resume)
    x_adv, success, _ = square_outcome(predict, x, y, found)
    return (x_adv, success) + ((tuple(found),) if self._may_continue() else ())

  def continuation(self, broken, attacked, checks):
    if self.full_queries is None:
      return None, {}
    reason, every_point = None, True
    if self._may_continue():
      reason = '; '.join(masking_signs(checks)) or None
      if reason is None and square_signals_masking(broken, attacked):
        reason = (f'the {self.n_queries}-query run broke {broken} of the {attacked} points the '
                  'gradient attacks left: a sign of masking')
      if reason is None and self.continue_below:
        every_point = False
        reason = (f'{self.full_queries} on the points whose margin fell to '
                  f'{self.continue_below:g} of its start or lower')
    facts = {'square_queries': self.full_queries if reason and every_point else self.n_queries,
             'square_reason': reason}
    if reason is None:
      return None, facts
    return dataclasses.replace(self, n_queries=self.full_queries, full_queries=None,
                               resume_from=self.n_queries,
                               continue_below=None if every_point else self.continue_below), facts


"""Evaluation protocols: which attacks run, with which budgets, at which radii.

- 'autoattack': AutoAttack's standard version (Croce & Hein 2020): APGD-CE, APGD-T (9 targets),
  FAB-T (9 targets), Square (5000 queries), each on the points the earlier ones left robust.
  Models with fewer than 10 classes get the ensemble adapted to them (fewer targets, and below 4
  classes targeted cross-entropy for APGD-T): the report calls that AutoAttack-like.
- 'rand': AutoAttack's version for models with randomness at inference: APGD-CE, then APGD-DLR,
  one run each, every step following the mean gradient of 20 forward-backward passes (EOT).
- 'paper': the MMA paper's whitebox protocol (docs/paper_notes.md 5.2): per eps, 10 PGD runs of
  100 iterations from random starts, half cross-entropy and half CW, step eps/40 for MNIST Linf and
  eps/4 otherwise; optional transfer attacks from a source model.
- 'fast': AutoAttack's verdict for a fraction of its cost, not standard AutoAttack (`fast.py`).
- 'all': autoattack, paper and fast, from the same clean points; the report gives each and their
  worst case. A comma-separated list (e.g. 'autoattack,fast') runs the ones named.
"""
import dataclasses
import math

from mma_tf import protocol_names
from mma_tf.attacks.registry import get_attack
# The names and attack lists live where the CLI reads them before TensorFlow starts.
from mma_tf.protocol_names import PROTOCOL_ATTACKS
from mma_tf.setting_names import setting

# The reference's budgets for its standard and rand versions (set_version in autoattack.py).
STANDARD_BUDGETS = dict(apgd_nb_iter=100, fab_nb_iter=100, n_target_classes=9,
                        square_queries=5000, eot_iter=1)
RAND_BUDGETS = dict(apgd_nb_iter=100, eot_iter=20)
_BUDGET_NAMES = dict(apgd_nb_iter='APGD iterations', fab_nb_iter='FAB-T iterations per target',
                     n_target_classes='target classes of APGD-T and FAB-T',
                     square_queries='Square queries',
                     eot_iter='APGD gradient passes per step (EOT)')
MARGIN_ESTIMATES = ('anpgd', 'pgd_bisection', 'fab')

# The paper's eps lists (docs/paper_notes.md 5.3); the embedded digits use MNIST's.
DEFAULT_EPS = {
    ('mnist', 'Linf'): [0.1, 0.2, 0.3, 0.4],
    ('mnist', 'L2'): [1.0, 2.0, 3.0, 4.0],
    ('cifar10', 'Linf'): [round(e / 255, 4) for e in (4, 8, 12, 16, 20, 24, 28, 32)],
    ('cifar10', 'L2'): [0.5, 1.0, 1.5, 2.0, 2.5],
}


def default_eps(dataset, norm):
  key = ('mnist' if dataset.startswith('mnist') else dataset, norm)
  if key not in DEFAULT_EPS:
    raise ValueError(f'No default radii for {dataset} {norm}; give {setting("eps")}.')
  return DEFAULT_EPS[key]


def default_rel_step(dataset, norm):
  """Paper-protocol PGD step as a fraction of eps: 1/40 for MNIST Linf, 1/4 otherwise."""
  return 1 / 40 if dataset.startswith('mnist') and norm == 'Linf' else 1 / 4


@dataclasses.dataclass
class EvalConfig:
  norm: str = 'Linf'
  eps: tuple = (0.1, 0.2, 0.3, 0.4)
  protocol: str = 'autoattack'  # one of PROTOCOLS, or a comma-separated list ('autoattack,fast')
  attacks: tuple = None          # a chosen subset, run in this order (overrides the protocol)
  # The paper protocol.
  nb_iter: int = 100
  nb_restart: int = 10           # half CE, half CW (an odd count gives CE the extra run)
  rel_step: float = 1 / 40
  # AutoAttack budgets (the standard version's values; smaller ones are for quick looks only).
  apgd_nb_iter: int = 100
  fab_nb_iter: int = 100
  n_target_classes: int = 9
  square_queries: int = 5000
  eot_iter: int = None           # default: 20 for protocol 'rand' (the reference's), else 1
  # The fast protocol's budgets (fast.py; not standard AutoAttack).
  fast_n_target_classes: int = 3  # APGD-T: MALT's nearest at x, and as many at a probe point
  fast_fab_target_classes: int = 3  # FAB-T: MALT's nearest at x
  fast_square_queries: int = 1000
  # Square goes on to square_queries on the points whose margin fell to this fraction of its
  # start or lower (0: none; chosen from Square's trajectories, docs/autoattack.md 6).
  fast_square_continue_below: float = 0.3
  # Margins and the rest.
  margin_estimates: tuple = ('anpgd', 'pgd_bisection', 'fab')
  margin_maxeps: float = None    # default: 1.5 x the largest eps
  margin_nb_iter: int = 40
  search_steps: int = 10
  batch_size: int = 100
  seed: int = 0
  jit_compile: bool = False

  def validate(self, image_shape):
    if self.norm not in ('Linf', 'L2'):
      raise ValueError(f"Unknown norm {self.norm!r}; choose 'Linf' or 'L2'.")
    self.protocol_names()  # unknown names fail here
    if not self.eps:
      raise ValueError('Give at least one eps.')
    limit = 1.0 if self.norm == 'Linf' else math.sqrt(math.prod(image_shape))
    for e in self.eps:
      if not 0 < e <= limit:
        raise ValueError(f'eps {e:g} is outside (0, {limit:.4g}], the possible range for '
                         f'{self.norm} on {tuple(image_shape)} images in [0, 1]. Radii are '
                         'fractions of the [0, 1] range (write 8/255, not 8).')
    for name in ('nb_iter', 'nb_restart', 'batch_size', 'margin_nb_iter', 'search_steps',
                 'apgd_nb_iter', 'fab_nb_iter', 'n_target_classes', 'square_queries',
                 'eot_iter', 'fast_n_target_classes', 'fast_fab_target_classes',
                 'fast_square_queries'):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f'{setting(name)} must be >= 1; got {getattr(self, name)}.')
    if not 0 <= self.fast_square_continue_below <= 1:
      raise ValueError(f'{setting("fast_square_continue_below")} (a fraction of the margin at '
                       f'Square\'s initial point) must be in [0, 1]; got '
                       f'{self.fast_square_continue_below}.')
    if not self.rel_step > 0:
      raise ValueError(f'{setting("rel_step")} (the step fraction) must be > 0; got '
                       f'{self.rel_step}.')
    for m in self.margin_estimates:
      if m not in MARGIN_ESTIMATES:
        raise ValueError(f'Unknown margin estimate {m!r}; choose from '
                         f'{", ".join(MARGIN_ESTIMATES)}.')
    self.protocol_attacks()  # unknown attack names fail here, before anything runs

  @property
  def maxeps(self):
    return self.margin_maxeps or 1.5 * max(self.eps)

  def apgd_eot_iter(self, protocol=None):
    """Gradient passes per APGD step in `protocol`: eot_iter, or the reference's default for it
    (20 in 'rand', and in an attack list run with protocol 'rand'; else 1)."""
    rand = protocol == 'rand' or (protocol == 'custom' and self.protocol == 'rand')
    return self.eot_iter or (RAND_BUDGETS['eot_iter'] if rand else 1)

  def attack_params(self, name, protocol=None):
    """This config's hyperparameters for the attack called `name` in `protocol` (others keep
    defaults). The fast protocol's Square starts with fast_square_queries and may go on to
    square_queries (fast.py)."""
    if protocol == 'fast' and name == 'square':
      return dict(n_queries=self.fast_square_queries, full_queries=self.square_queries,
                  continue_below=self.fast_square_continue_below)
    eot_iter = self.apgd_eot_iter(protocol)
    return {
        'pgd': dict(nb_iter=self.nb_iter, nb_restart=self.nb_restart, rel_step=self.rel_step),
        'apgd-ce': dict(nb_iter=self.apgd_nb_iter, eot_iter=eot_iter),
        'apgd-dlr': dict(nb_iter=self.apgd_nb_iter, eot_iter=eot_iter),
        'apgd-t': dict(nb_iter=self.apgd_nb_iter, n_target_classes=self.n_target_classes),
        'apgd-t-malt': dict(nb_iter=self.apgd_nb_iter,
                            n_target_classes=self.fast_n_target_classes),
        'fab-t': dict(nb_iter=self.fab_nb_iter, n_target_classes=self.n_target_classes),
        'fab-t-malt': dict(nb_iter=self.fab_nb_iter,
                           n_target_classes=self.fast_fab_target_classes),
        'square': dict(n_queries=self.square_queries),
    }.get(name, {})

  def protocol_names(self):
    """The protocols to run, in order (`protocol_names.parse`: 'all' is autoattack, paper and
    fast; a comma-separated list names some)."""
    return protocol_names.parse(self.protocol)

  def protocol_attacks(self):
    """{protocol name: [Attack, ...]} in the order they run."""
    if self.attacks:
      names = {'custom': tuple(self.attacks)}
    else:
      names = {p: PROTOCOL_ATTACKS[p] for p in self.protocol_names()}
    return {p: [get_attack(a, self.norm, **self.attack_params(a, p)) for a in attack_names]
            for p, attack_names in names.items()}

  def budget_changes(self, protocol):
    """Sentences naming every budget of `protocol` (a key of protocol_attacks()) that differs
    from the reference version it stands for; [] for protocols that are not AutoAttack's."""
    budgets = {'autoattack': STANDARD_BUDGETS, 'rand': RAND_BUDGETS}.get(protocol, {})
    ran = dict(vars(self), eot_iter=self.apgd_eot_iter(protocol))
    return [f'{ran[k]} {_BUDGET_NAMES[k]} instead of {v}' for k, v in budgets.items()
            if ran[k] != v]

  def is_standard_autoattack(self):
    """True when the 'autoattack' protocol runs the standard attack list at the standard budgets
    (whether the model's classes let it run unchanged is for `evaluate` to add)."""
    return 'autoattack' in self.protocol_attacks() and not self.budget_changes('autoattack')


def protocol_label(protocol, changes):
  """What the report calls the attacks of `protocol` (a key of protocol_attacks()) that ran with
  `changes` (budget and class-count departures, sentences) from the reference version."""
  if protocol == 'autoattack':
    return 'AutoAttack-like (not standard AutoAttack)' if changes else 'standard AutoAttack'
  if protocol == 'rand':
    return ("AutoAttack-like (not AutoAttack's rand version)" if changes
            else "AutoAttack's rand version")
  if protocol == 'paper':
    return "the MMA paper's PGD protocol (not AutoAttack)"
  if protocol == 'fast':
    return "the fast protocol: aimed at AutoAttack's verdict, not standard AutoAttack"
  return 'a custom attack list (not standard AutoAttack)'

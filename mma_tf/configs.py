"""Training configuration and the paper's settings as presets (PAPER.md section 4).

A preset is chosen by (dataset, norm); any field can be overridden. `TrainConfig.validate` turns
bad combinations into ValueErrors that say what to change.
"""
import dataclasses
import json
from typing import Optional, Tuple

OBJECTIVES = ('mma', 'omma', 'pgd_at', 'standard')


@dataclasses.dataclass
class TrainConfig:
  dataset: str = 'mnist_5k'
  norm: str = 'Linf'
  model: str = 'small_cnn'
  objective: str = 'mma'
  # MMA (names as the released code's flags).
  hinge_maxeps: float = 0.45          # d_max
  clean_loss_coeff: float = 1.0 / 3   # 0 for OMMA
  attack_mineps: float = 0.1          # initial eps0 and its floor
  nb_iter: int = 40                   # PGD iterations inside AN-PGD (and PGD-AT, validation)
  eps_iter_scale: float = 2.5         # PGD step = eps_iter_scale * eps / nb_iter
  num_search_steps: int = 10
  search_bn_mode: str = 'train'       # BN mode of the bisection forwards ('train' = released)
  released_quirks: bool = True        # AN-PGD returns the last midpoint, unclipped (PAPER.md 2.4)
  pgd_eps: float = 0.3                # PGD-AT training radius
  # Validation monitor (PAPER.md 2.5).
  test_eps: float = 0.3
  test_eps_iter: float = 0.01
  # Optimisation.
  optimizer: str = 'adam'             # 'adam' (PyTorch eps 1e-8) or 'sgd' (PyTorch-style momentum)
  learning_rate: float = 1e-4
  lr_boundaries: Tuple[int, ...] = ()  # steps after which the next value applies (PyTorch rule)
  lr_values: Tuple[float, ...] = ()
  momentum: float = 0.9
  weight_decay: float = 0.0           # L2 on all variables, as PyTorch SGD's weight_decay
  batch_size: int = 50
  train_steps: int = 100_000
  eval_batch_size: int = 100
  seed: int = 0
  # Loop.
  checkpoint_every: int = 500
  log_every: int = 50
  jit_compile: bool = False
  deterministic: bool = False

  @property
  def maxeps(self):
    """The AN-PGD search range, 1.05 * d_max as the released train.py sets it."""
    return 1.05 * self.hinge_maxeps

  def validate(self, num_replicas=1):
    def need(ok, message):
      if not ok:
        raise ValueError(message)
    need(self.norm in ('Linf', 'L2'), f"Unknown norm {self.norm!r}; choose 'Linf' or 'L2'.")
    need(self.objective in OBJECTIVES,
         f'Unknown objective {self.objective!r}; choose one of {OBJECTIVES}.')
    for name in ('hinge_maxeps', 'attack_mineps', 'pgd_eps', 'test_eps', 'test_eps_iter',
                 'learning_rate', 'eps_iter_scale'):
      need(getattr(self, name) > 0, f'--{name} must be > 0; got {getattr(self, name)}.')
    if self.norm == 'Linf':
      for name in ('hinge_maxeps', 'attack_mineps', 'pgd_eps', 'test_eps'):
        need(getattr(self, name) <= 1, f'--{name}={getattr(self, name)} is beyond the [0, 1] '
             'image box in Linf; CIFAR radii are fractions (8/255 = 0.0314), not pixel counts.')
    need(self.attack_mineps <= self.hinge_maxeps,
         f'--attack_mineps ({self.attack_mineps}) must not exceed --hinge_maxeps (d_max, '
         f'{self.hinge_maxeps}): AN-PGD starts at attack_mineps and searches up to 1.05 d_max.')
    need(0 <= self.clean_loss_coeff <= 1,
         f'--clean_loss_coeff must be in [0, 1]; got {self.clean_loss_coeff}.')
    need(not (self.objective == 'omma' and self.clean_loss_coeff != 0),
         'OMMA is MMA without the clean loss: use --objective=omma with --clean_loss_coeff=0 '
         '(or leave the coefficient unset).')
    need(self.search_bn_mode in ('train', 'eval'),
         f"--search_bn_mode must be 'train' or 'eval'; got {self.search_bn_mode!r}.")
    need(self.optimizer in ('adam', 'sgd'),
         f"--optimizer must be 'adam' or 'sgd'; got {self.optimizer!r}.")
    need(len(self.lr_values) in (0, len(self.lr_boundaries) + 1),
         '--lr_values needs one more value than --lr_boundaries.')
    for name in ('nb_iter', 'num_search_steps', 'batch_size', 'train_steps', 'eval_batch_size',
                 'checkpoint_every', 'log_every'):
      need(getattr(self, name) >= 1, f'--{name} must be >= 1; got {getattr(self, name)}.')
    for name in ('batch_size', 'eval_batch_size'):
      need(getattr(self, name) % num_replicas == 0,
           f'--{name}={getattr(self, name)} is not divisible by the {num_replicas} replicas; '
           'use a multiple of the number of devices.')

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# The paper's four settings (PAPER.md section 4), plus the embedded offline default.
# Docstring-style notes give the command and what to compare against (PAPER.md section 6).
PRESETS = {
    # Embedded 5,000 real MNIST digits, small CNN: the README's main command, minutes on a CPU.
    ('mnist_5k', 'Linf'): dict(model='small_cnn', optimizer='adam', learning_rate=1e-3,
                               batch_size=50, train_steps=2100, nb_iter=10, attack_mineps=0.1,
                               hinge_maxeps=0.45, pgd_eps=0.3, test_eps=0.3, test_eps_iter=0.075,
                               checkpoint_every=350, log_every=70),
    ('mnist_5k', 'L2'): dict(model='small_cnn', optimizer='adam', learning_rate=1e-3,
                             batch_size=50, train_steps=2100, nb_iter=10, attack_mineps=0.5,
                             hinge_maxeps=2.0, pgd_eps=2.0, test_eps=2.0, test_eps_iter=0.5,
                             checkpoint_every=350, log_every=70),
    # MNIST Linf: MMA-0.45 published 98.9 clean / 92.6 at eps 0.3 (PAPER.md 6.1).
    ('mnist', 'Linf'): dict(model='lenet5_madry', optimizer='adam', learning_rate=1e-4,
                            batch_size=50, train_steps=100_000, nb_iter=40, attack_mineps=0.1,
                            hinge_maxeps=0.45, pgd_eps=0.3, test_eps=0.3, test_eps_iter=0.01),
    # MNIST L2: MMA-2.0 / 4.0 / 6.0 (PAPER.md 6.3).
    ('mnist', 'L2'): dict(model='lenet5_madry', optimizer='adam', learning_rate=1e-4,
                          batch_size=50, train_steps=100_000, nb_iter=40, attack_mineps=0.5,
                          hinge_maxeps=2.0, pgd_eps=2.0, test_eps=2.0, test_eps_iter=0.125),
    # CIFAR-10 Linf: MMA-12 / 20 / 32 (/255); MMA-32 published 84.4 clean / 47.2 at 8/255.
    ('cifar10', 'Linf'): dict(model='wrn28_4', optimizer='sgd', learning_rate=0.3,
                              lr_boundaries=(20_000, 30_000, 40_000),
                              lr_values=(0.3, 0.09, 0.03, 0.009), momentum=0.9,
                              weight_decay=2e-4, batch_size=128, train_steps=50_000, nb_iter=10,
                              attack_mineps=0.005, hinge_maxeps=32 / 255, pgd_eps=8 / 255,
                              test_eps=8 / 255, test_eps_iter=2 / 255),
    # CIFAR-10 L2: MMA-1.0 / 2.0 / 3.0.
    ('cifar10', 'L2'): dict(model='wrn28_4', optimizer='sgd', learning_rate=0.3,
                            lr_boundaries=(20_000, 30_000, 40_000),
                            lr_values=(0.3, 0.09, 0.03, 0.009), momentum=0.9, weight_decay=2e-4,
                            batch_size=128, train_steps=50_000, nb_iter=10, attack_mineps=0.5,
                            hinge_maxeps=1.0, pgd_eps=1.0, test_eps=1.0, test_eps_iter=0.25),
}


def resolve(dataset='mnist_5k', norm='Linf', overrides: Optional[dict] = None):
  """The preset for (dataset, norm) with `overrides` (None values ignored) applied."""
  if (dataset, norm) not in PRESETS:
    known = sorted({d for d, _ in PRESETS})
    raise ValueError(f'No preset for dataset {dataset!r} with norm {norm!r}; datasets: {known}, '
                     "norms: 'Linf', 'L2'.")
  fields = dict(PRESETS[(dataset, norm)], dataset=dataset, norm=norm)
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
  if unknown:
    raise ValueError(f'Unknown configuration fields: {sorted(unknown)}.')
  fields.update(overrides)
  if fields.get('objective') == 'omma' and 'clean_loss_coeff' not in overrides:
    fields['clean_loss_coeff'] = 0.0
  for name in ('lr_boundaries', 'lr_values'):
    fields[name] = tuple(fields.get(name, ()))
  return TrainConfig(**fields)

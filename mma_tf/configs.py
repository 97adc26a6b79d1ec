"""Training configuration and the paper's settings as presets (docs/paper_notes.md section 4).

A `TrainConfig` is made of parts (`PARTS`: data, network, optimization, loop, attack) and the
objective's own settings, a dataclass each objective declares (`OBJECTIVE_SETTINGS`, filled by
mma_tf.objectives.register). A preset is chosen by (dataset, norm); any field can be overridden
by its flat name (the flag's). `TrainConfig.validate` turns bad combinations into ValueErrors that
say what to change, and `resolve` refuses overrides that would do nothing in the chosen
configuration (a flag is never silently ignored), a setting of another objective among them.

Radii (hinge_maxeps, attack_mineps, pgd_eps, test_eps, test_eps_iter) are in the unit of the
image range [0, 1] for every dataset: CIFAR-10's 8/255 is 0.0314, never 8.

This module imports no TensorFlow, so the CLIs check flags before TF starts.
"""
import dataclasses
import json
from typing import Any, Optional, Tuple

PRECISIONS = ('float32', 'mixed_float16', 'mixed_bfloat16')  # mma_tf.precision.POLICIES
# AN-PGD's boundary search in training (mma_tf.attacks.anpgd_attack): the released bisection, or
# regula falsi with the Illinois modification.
SEARCHES = ('bisection', 'illinois')
# The illinois search's forwards when --num_search_steps is not given (docs/RESULTS.md,
# "Cheaper robustness, round two").
ILLINOIS_SEARCH_STEPS = 3

# The registered models (mma_tf.models.MODELS, checked by a test) and whether they hold
# BatchNorm; listed here so that flags can be checked without importing Keras.
MODELS = {'small_cnn': False, 'lenet5_madry': False, 'wrn10_1': True, 'wrn28_4': True,
          'wrn28_10': True}


def model_source_kind(model):
  """'builtin', 'factory' (package.module:function) or 'keras_file' (path.keras); ValueError
  otherwise. Your own models may hold BatchNorm: flags about it are accepted for them."""
  if model in MODELS:
    return 'builtin'
  if model.startswith('python:'):
    return 'python'  # a factory or model passed to the Trainer in Python
  if model.endswith('.keras'):
    return 'keras_file'
  module, sep, attr = model.partition(':')
  if sep and module and attr and all(p.isidentifier() for p in module.split('.') + attr.split('.')):
    return 'factory'
  raise ValueError(f'Unknown model {model!r}; choose one of {sorted(MODELS)}, '
                   'package.module:factory (a function (input_shape, num_classes) -> keras.Model) '
                   'or the path of a .keras file.')

# Fields that may change when a run resumes: they change the loop's length, cadence or speed,
# not what is trained.
_RESUMABLE = {'resumable': True}


def _resumable(default):
  return dataclasses.field(default=default, metadata=_RESUMABLE)


# ------------------------------------------------------------------------------ the parts
@dataclasses.dataclass
class DataConfig:
  dataset: str = 'mnist_5k'
  num_validation: Optional[int] = None  # None: the dataset's (data.default_num_validation)
  batch_size: int = 50
  eval_batch_size: int = _resumable(100)


@dataclasses.dataclass
class ModelConfig:
  model: str = 'small_cnn'
  input_range: Tuple[float, float] = (0.0, 1.0)  # the range the model expects; data is [0, 1]
  sync_batchnorm: bool = False        # BN statistics over the global batch (models with BN only)
  mixed_precision: str = 'float32'    # or 'mixed_float16', 'mixed_bfloat16' (compute dtype)


@dataclasses.dataclass
class OptimizerConfig:
  optimizer: str = 'adam'             # 'adam' (PyTorch eps 1e-8) or 'sgd' (PyTorch-style momentum)
  learning_rate: float = 1e-4
  lr_boundaries: Tuple[int, ...] = ()  # steps after which the next value applies (PyTorch rule)
  lr_values: Tuple[float, ...] = ()
  momentum: float = 0.9
  weight_decay: float = 0.0           # L2 on all variables, as PyTorch SGD's weight_decay


@dataclasses.dataclass
class LoopConfig:
  train_steps: int = _resumable(100_000)
  seed: int = 0
  checkpoint_every: int = _resumable(500)
  log_every: int = _resumable(50)
  jit_compile: bool = _resumable(False)
  steps_per_loop: int = _resumable(1)
  deterministic: bool = _resumable(False)


@dataclasses.dataclass
class AttackConfig:
  """The threat model and what every objective's attacks share: validation (docs/paper_notes.md
  2.5) runs for every objective, so d_max, nb_iter and the search steps act for all of them."""
  norm: str = 'Linf'
  hinge_maxeps: float = 0.45          # d_max (names as the released code's flags)
  nb_iter: int = 40                   # PGD iterations inside AN-PGD (and PGD-AT, validation)
  num_search_steps: int = 10
  released_quirks: bool = True        # AN-PGD: last midpoint, unclipped (docs/paper_notes.md 2.4)
  # Perturbation memory (ATTA): training attacks start from each example's last perturbation.
  perturbation_memory: bool = False  # (build() then defaults eps_iter_scale to 0.5 nb_iter)
  perturbation_memory_bits: int = 16
  perturbation_memory_limit_mb: int = _resumable(1024)
  test_eps: float = 0.3
  test_eps_iter: float = 0.01
  test_nb_iter: Optional[int] = None          # None: nb_iter, as released
  test_num_search_steps: Optional[int] = None  # None: num_search_steps, as released


PARTS = {'data': DataConfig, 'network': ModelConfig, 'optimization': OptimizerConfig,
         'loop': LoopConfig, 'attack': AttackConfig}


def check_positive(name, value):
  if not value > 0:
    raise ValueError(f'--{name} must be > 0; got {value}.')


def check_radius(name, value, norm):
  """A radius: > 0, and inside the [0, 1] image box in Linf."""
  check_positive(name, value)
  if norm == 'Linf' and value > 1:
    raise ValueError(f'--{name}={value} is beyond the [0, 1] image box in Linf; radii are '
                     'fractions of the pixel range for every dataset, not pixel counts: write '
                     '8/255 (= 0.0314), not 8.')


# ------------------------------------------------------------------------------ objective settings
def setting(default, help_text, *, role='', absent='does not take it', flag=None):
  """A field of an objective's settings dataclass. help_text: its flag's help; under another
  objective the flag is refused as '{role}, and --objective=X {absent}'; flag: 'radius' (read as
  8/255) or a tuple of choices, else the default's type."""
  return dataclasses.field(default=default, metadata=dict(help=help_text, role=role,
                                                          absent=absent, flag=flag))


@dataclasses.dataclass
class NoSettings:
  """The settings of an objective that declares none."""


@dataclasses.dataclass
class StandardSettings(NoSettings):
  """Standard training's settings: none (it trains on clean images, at no attack)."""


@dataclasses.dataclass
class AttackSettings:
  """An objective that trains at an attack of PGD steps. Its settings deriving from this class are
  what says that an objective has a training attack (`has_training_attack`)."""
  eps_iter_scale: float = setting(
      2.5, 'Training attack step = eps_iter_scale * eps / nb_iter (MMA, OMMA, PGD-AT, TRADES; '
      'default 2.5, or 0.5 * nb_iter with --perturbation_memory).',
      role="it scales the training attack's step",
      absent='has no training attack (the validation step is --test_eps_iter)')

  def check(self, config):
    check_positive('eps_iter_scale', self.eps_iter_scale)


@dataclasses.dataclass
class MMASettings(AttackSettings):
  clean_loss_coeff: float = setting(1.0 / 3, 'Weight of the clean CE (MMA 1/3, OMMA 0; MMA only).',
                                    role='only MMA has a clean-loss term', absent='is not MMA')
  attack_mineps: float = setting(0.1, 'AN-PGD initial eps0 and its floor (MMA/OMMA only).',
                                 flag='radius', role="it is AN-PGD's starting radius",
                                 absent='runs no AN-PGD')
  search_bn_mode: str = setting(
      'train', 'BN mode of the AN-PGD bisection forwards (released code: train; MMA/OMMA with a '
      'BatchNorm model only).', flag=('train', 'eval'), role="it is the BN mode of AN-PGD's "
      'search', absent='runs no AN-PGD search')
  search: str = setting(
      'bisection', "AN-PGD's boundary search along the PGD direction in training: bisection "
      '(released) or illinois (regula falsi with the Illinois modification: the boundary of a '
      f'nearly linear margin in a few forwards; --num_search_steps defaults to '
      f'{ILLINOIS_SEARCH_STEPS} with it, the validation search keeps its bisection steps; '
      'MMA/OMMA only).', flag=SEARCHES, role="it is AN-PGD's boundary search",
      absent='runs no AN-PGD search')

  def check(self, config):
    super().check(config)
    check_radius('attack_mineps', self.attack_mineps, config.norm)
    if self.attack_mineps > config.hinge_maxeps:
      raise ValueError(f'--attack_mineps ({self.attack_mineps}) must not exceed --hinge_maxeps '
                       f'(d_max, {config.hinge_maxeps}): AN-PGD starts at attack_mineps and '
                       'searches up to 1.05 d_max.')
    if not 0 <= self.clean_loss_coeff <= 1:
      raise ValueError(f'--clean_loss_coeff must be in [0, 1]; got {self.clean_loss_coeff}.')
    if self.search_bn_mode not in ('train', 'eval'):
      raise ValueError(f"--search_bn_mode must be 'train' or 'eval'; got {self.search_bn_mode!r}.")
    if self.search not in SEARCHES:
      raise ValueError(f'--search must be one of {SEARCHES}; got {self.search!r}.')


@dataclasses.dataclass
class OMMASettings(MMASettings):
  clean_loss_coeff: float = dataclasses.field(
      default=0.0, metadata=MMASettings.__dataclass_fields__['clean_loss_coeff'].metadata)

  def check(self, config):
    super().check(config)
    if self.clean_loss_coeff != 0:
      raise ValueError('OMMA is MMA without the clean loss: use --objective=omma with '
                       '--clean_loss_coeff=0 (or leave the coefficient unset).')


@dataclasses.dataclass
class PGDSettings(AttackSettings):
  pgd_eps: float = setting(0.3, 'PGD-AT / TRADES training radius (those objectives only).',
                           flag='radius', role='it is the PGD-AT / TRADES training radius',
                           absent='is neither (the validation radius is --test_eps)')

  def check(self, config):
    super().check(config)
    check_radius('pgd_eps', self.pgd_eps, config.norm)


@dataclasses.dataclass
class TradesSettings(PGDSettings):
  # Zhang et al.: 6, MNIST 1-6.
  trades_beta: float = setting(6.0, 'TRADES: weight of the KL term (--objective=trades only).',
                               role='it weighs the TRADES KL term', absent='is not trades')

  def check(self, config):
    super().check(config)
    if self.trades_beta < 0:
      raise ValueError(f'--trades_beta must be >= 0; got {self.trades_beta}.')


def has_training_attack(settings):
  """Whether the objective with these settings (a dataclass or an instance) trains at an attack:
  the one place that says it. Such an objective's step size is eps_iter_scale, and its call takes
  `warm_start` for --perturbation_memory (mma_tf.objectives)."""
  return issubclass(settings if isinstance(settings, type) else type(settings), AttackSettings)


# Objective name -> its settings dataclass: the part of the objective registry
# (mma_tf.objectives.register) that the CLI reads before TensorFlow starts.
OBJECTIVE_SETTINGS = {'mma': MMASettings, 'omma': OMMASettings, 'pgd_at': PGDSettings,
                      'trades': TradesSettings, 'standard': StandardSettings}


def setting_owners(name):
  """The objectives whose settings have a field `name`, with one of those fields."""
  owners = {o: s.__dataclass_fields__[name] for o, s in OBJECTIVE_SETTINGS.items()
            if name in s.__dataclass_fields__}
  return list(owners), next(iter(owners.values()), None)


@dataclasses.dataclass
class TrainConfig:
  """A run's configuration in parts: the objective's own settings (`OBJECTIVE_SETTINGS`) and
  `PARTS`. `config.name` reads the field `name` of whichever part holds it (the loop's view);
  `TrainConfig.flat(**fields)` builds one from those names (the flags')."""
  objective: str = 'mma'
  settings: Any = dataclasses.field(default_factory=MMASettings)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  network: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimization: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
  attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)

  def __getattr__(self, name):  # only for names that are not attributes of the config itself
    for key in ('settings', *PARTS):
      part = self.__dict__.get(key)
      if part is not None and name in getattr(part, '__dataclass_fields__', ()):
        return getattr(part, name)
    raise AttributeError(f'{type(self).__name__} (objective {self.__dict__.get("objective")!r}) '
                         f'has no field {name!r}')

  def fields(self):
    """Flat name -> its dataclasses.Field in the part that holds it, the objective first."""
    out = {'objective': self.__dataclass_fields__['objective']}
    for part in [self.settings] + [getattr(self, key) for key in PARTS]:
      out.update((f.name, f) for f in dataclasses.fields(part))
    return out

  @classmethod
  def flat(cls, **fields):
    """A TrainConfig from flat names, each routed to its part. ValueError for an unknown name, or
    a setting of another objective than fields['objective'] (naming the objectives that own it)."""
    objective = fields.pop('objective', cls.objective)
    settings_class = OBJECTIVE_SETTINGS.get(objective, NoSettings)
    part_fields = {key: {f.name for f in dataclasses.fields(part)} for key, part in PARTS.items()}
    part_fields['settings'] = {f.name for f in dataclasses.fields(settings_class)}
    routed = {key: {} for key in part_fields}
    for name, value in fields.items():
      key = next((k for k, names in part_fields.items() if name in names), None)
      if key is None:
        owners, field = setting_owners(name)
        if not owners:
          raise ValueError(f'Unknown configuration fields: {[name]}.')
        role = field.metadata.get('role') or f'it is a setting of --objective={owners[0]}'
        absent = field.metadata.get('absent', 'does not take it')
        raise ValueError(f'--{name} has no effect here: {role}, and --objective={objective} '
                         f'{absent}; drop it (it is a setting of --objective='
                         f'{", ".join(owners)}).')
      routed[key][name] = value
    return cls(objective, settings_class(**routed.pop('settings')),
               **{key: PARTS[key](**values) for key, values in routed.items()})

  @property
  def validation_nb_iter(self):
    """PGD iterations of the validation monitor: the training attack's unless test_nb_iter."""
    return self.test_nb_iter or self.nb_iter

  @property
  def validation_search_steps(self):
    return self.test_num_search_steps or self.num_search_steps

  @property
  def maxeps(self):
    """The AN-PGD search range, 1.05 * d_max as the released train.py sets it. The validation
    margin search uses it for every objective, so d_max matters for pgd_at / standard too."""
    return 1.05 * self.hinge_maxeps

  def validate(self, num_replicas=1, objectives=None):
    """ValueError naming the flag to change; `objectives`: the names that exist (default: the
    registry's; the trainer adds an objective passed in Python)."""
    def need(ok, message):
      if not ok:
        raise ValueError(message)
    objectives = tuple(OBJECTIVE_SETTINGS) if objectives is None else tuple(objectives)
    need(self.norm in ('Linf', 'L2'), f"Unknown norm {self.norm!r}; choose 'Linf' or 'L2'.")
    need(self.objective in objectives,
         f'Unknown objective {self.objective!r}; choose one of {objectives}.')
    wanted = OBJECTIVE_SETTINGS.get(self.objective)
    need(wanted is None or isinstance(self.settings, wanted),
         f'The objective {self.objective!r} reads {wanted and wanted.__name__}, but the config '
         f'holds {type(self.settings).__name__}; build it with configs.build or TrainConfig.flat, '
         'which pick the objective\'s settings.')
    model_source_kind(self.model)
    need(self.num_validation is None or self.num_validation >= 1,
         f'--num_validation must be >= 1 (validation picks the best checkpoint); got '
         f'{self.num_validation}.')
    need(len(self.input_range) == 2 and self.input_range[0] < self.input_range[1],
         f'--input_range must be two numbers lo,hi with lo < hi; got {self.input_range}.')
    for name in ('hinge_maxeps', 'test_eps'):
      check_radius(name, getattr(self, name), self.norm)
    for name in ('test_eps_iter', 'learning_rate'):
      check_positive(name, getattr(self, name))
    if hasattr(self.settings, 'check'):  # the objective's own settings
      self.settings.check(self)
    need(not self.sync_batchnorm or MODELS.get(self.model) is not False,
         f'--sync_batchnorm has no effect on --model={self.model}, which has no BatchNorm; '
         'drop the flag or use a WideResNet model.')
    need(not self.sync_batchnorm or self.model in MODELS,
         '--sync_batchnorm rebuilds the built-in models; in your own model use '
         'keras.layers.BatchNormalization(synchronized=True).')
    need(self.mixed_precision == 'float32' or not self.model.endswith('.keras'),
         f'--mixed_precision={self.mixed_precision} sets the dtype policy while a model is built, '
         'but a .keras file restores its own; rebuild it under the policy in a factory '
         '(package.module:factory) that loads its weights.')
    need(self.optimizer in ('adam', 'sgd'),
         f"--optimizer must be 'adam' or 'sgd'; got {self.optimizer!r}.")
    need(len(self.lr_values) in (0, len(self.lr_boundaries) + 1),
         '--lr_values needs one more value than --lr_boundaries.')
    need(self.lr_values or not self.lr_boundaries,
         f'--lr_boundaries={",".join(map(str, self.lr_boundaries))} has no effect without '
         '--lr_values; give both, or clear both (--lr_boundaries= --lr_values=) for a constant '
         '--learning_rate.')
    need(list(self.lr_boundaries) == sorted(set(self.lr_boundaries))
         and all(b >= 1 for b in self.lr_boundaries),
         f'--lr_boundaries must be increasing steps >= 1; got {list(self.lr_boundaries)}.')
    need(self.perturbation_memory_bits in (16, 32),
         f'--perturbation_memory_bits must be 16 or 32; got {self.perturbation_memory_bits}.')
    need(not self.perturbation_memory or has_training_attack(self.settings),
         '--perturbation_memory stores the training attack\'s perturbation, and '
         f'--objective={self.objective} has no training attack; drop the flag.')
    need(self.perturbation_memory_limit_mb >= 1,
         f'--perturbation_memory_limit_mb must be >= 1; got {self.perturbation_memory_limit_mb}.')
    need(self.mixed_precision in PRECISIONS,
         f'--mixed_precision must be one of {PRECISIONS}; got {self.mixed_precision!r}.')
    for name in ('test_nb_iter', 'test_num_search_steps'):
      need(getattr(self, name) is None or getattr(self, name) >= 1,
           f'--{name} must be >= 1; got {getattr(self, name)}.')
    for name in ('nb_iter', 'num_search_steps', 'batch_size', 'train_steps', 'eval_batch_size',
                 'checkpoint_every', 'log_every', 'steps_per_loop'):
      need(getattr(self, name) >= 1, f'--{name} must be >= 1; got {getattr(self, name)}.')
    for name in ('batch_size', 'eval_batch_size'):
      need(getattr(self, name) % num_replicas == 0,
           f'--{name}={getattr(self, name)} is not divisible by the {num_replicas} replicas; '
           'use a multiple of the number of devices.')

  def to_dict(self):
    """The nested form config.json records: {'objective', 'settings', and one dict per part}."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  def to_json(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)



# The paper's four settings (docs/paper_notes.md section 4), plus the embedded offline default.
# The notes say what to compare against (docs/paper_notes.md section 6).
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
    # MNIST Linf: MMA-0.45 published 98.9 clean / 92.6 at eps 0.3 (docs/paper_notes.md 6.1).
    ('mnist', 'Linf'): dict(model='lenet5_madry', optimizer='adam', learning_rate=1e-4,
                            batch_size=50, train_steps=100_000, nb_iter=40, attack_mineps=0.1,
                            hinge_maxeps=0.45, pgd_eps=0.3, test_eps=0.3, test_eps_iter=0.01),
    # MNIST L2: MMA-2.0 / 4.0 / 6.0 (docs/paper_notes.md 6.3).
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


# Data without a paper preset (tfds:NAME, npz:PATH, your own source): CIFAR-10's radii, the
# usual threat model for natural images, with Adam and no schedule. Set --hinge_maxeps (d_max)
# and --test_eps for your data; MNIST-like digits want the mnist presets' radii instead.
CUSTOM_PRESETS = {
    'Linf': dict(model='small_cnn', optimizer='adam', learning_rate=1e-3, batch_size=128,
                 train_steps=10_000, nb_iter=10, attack_mineps=0.005, hinge_maxeps=32 / 255,
                 pgd_eps=8 / 255, test_eps=8 / 255, test_eps_iter=2 / 255),
    'L2': dict(model='small_cnn', optimizer='adam', learning_rate=1e-3, batch_size=128,
               train_steps=10_000, nb_iter=10, attack_mineps=0.5, hinge_maxeps=1.0, pgd_eps=1.0,
               test_eps=1.0, test_eps_iter=0.25),
}


def preset_fields(dataset, norm):
  """The paper's preset for (dataset, norm); CUSTOM_PRESETS[norm] for other data."""
  if norm not in ('Linf', 'L2'):
    raise ValueError(f"Unknown norm {norm!r}; choose 'Linf' or 'L2'.")
  return dict(PRESETS.get((dataset, norm), CUSTOM_PRESETS[norm]))


# Fields whose effect depends on the rest of the configuration: (field, does it act in config c,
# why not). An objective's settings act only under that objective (`TrainConfig.flat` refuses the
# others); every other field acts in every configuration: the attack part drives the validation
# monitor of every objective (its margin search spans 1.05 d_max).
_EFFECT_RULES = (
    ('search_bn_mode', lambda c: MODELS.get(c.model, True),
     lambda c: f'--model={c.model} has no BatchNorm, so both modes compute the same; drop it'),
    ('learning_rate', lambda c: not c.lr_values,
     lambda c: f'the schedule --lr_values={",".join(f"{v:g}" for v in c.lr_values)} (at '
               f'--lr_boundaries={",".join(map(str, c.lr_boundaries))}) sets the rate; change '
               '--lr_values instead, or clear the schedule with --lr_values= --lr_boundaries='),
    ('perturbation_memory_bits', lambda c: c.perturbation_memory,
     lambda c: 'it is the storage size of --perturbation_memory, which is off; drop it'),
    ('perturbation_memory_limit_mb', lambda c: c.perturbation_memory,
     lambda c: 'it limits the size of --perturbation_memory, which is off; drop it'),
    ('momentum', lambda c: c.optimizer == 'sgd',
     lambda c: f'--optimizer={c.optimizer} has no momentum parameter; drop it or use '
               '--optimizer=sgd'),
)


def check_overrides_take_effect(config, given):
  """ValueError if a field in `given` (the names the user set) does nothing in `config`."""
  for name, acts, why in _EFFECT_RULES:
    if name in given and not acts(config):
      raise ValueError(f'--{name} has no effect here: {why(config)}.')


def _json_value(value):
  return json.loads(json.dumps(value))


def flat_record(record):
  """A config.json record (or `TrainConfig.to_dict()`) with the configuration as flat names:
  the nested form is flattened; a flat one (written before the parts existed) stays as it is."""
  if 'config' in record:  # a run's record: the configuration, the data's and model's identity
    return dict(flat_record(record['config']),
                **{k: v for k, v in record.items() if k != 'config'})
  if 'settings' not in record:
    return dict(record)
  out = {}
  for key, value in record.items():
    out.update(value if isinstance(value, dict) else {key: value})
  return out


def resume_conflicts(saved, config):
  """How `config` differs from a run's saved config.json (a dict, nested or flat), as one message
  per field.

  Resumable fields (train_steps, cadence, speed switches) may differ. A field missing from
  `saved` was added by a later version; the run behaved as its dataclass default, so it resumes
  if `config` keeps that default, and is refused (naming the field) otherwise.
  """
  saved = flat_record(saved)
  out = []
  for name, field in sorted(config.fields().items()):
    if field.metadata.get('resumable'):
      continue
    mine = _json_value(getattr(config, name))
    if name in saved:
      if saved[name] != mine:
        out.append(f'{name}: saved {saved[name]!r}, now {mine!r}')
      continue
    if field.default is not dataclasses.MISSING:
      default = _json_value(field.default)
    elif field.default_factory is not dataclasses.MISSING:
      default = _json_value(field.default_factory())
    else:
      default = dataclasses.MISSING
    if default != mine:
      out.append(f'{name}: not in the saved config.json (written before the field existed, '
                 f'so the run used {default!r}), now {mine!r}')
  return out


def preset(dataset='mnist_5k', norm='Linf', **overrides):
  """`resolve` with keyword overrides: mma_tf.preset('cifar10', 'Linf', train_steps=1000)."""
  return resolve(dataset, norm, overrides)


def resolve(dataset='mnist_5k', norm='Linf', overrides: Optional[dict] = None):
  """The preset for (dataset, norm) with `overrides` (None values ignored) applied.

  An override that would do nothing in the resulting configuration (say `momentum` with Adam, or
  `learning_rate` under a preset schedule) is a ValueError saying why.
  """
  return build(dict(preset_fields(dataset, norm), dataset=dataset, norm=norm), overrides)


def build(fields, overrides: Optional[dict] = None):
  """A TrainConfig from flat `fields` (missing ones at the dataclass defaults) with `overrides`
  (None values ignored) applied, refusing overrides that do nothing (see `resolve`). A preset's
  settings of other objectives than the chosen one are dropped; given ones are refused."""
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  known = set(TrainConfig().fields()).union(*(s.__dataclass_fields__
                                              for s in OBJECTIVE_SETTINGS.values()))
  unknown = set(overrides) - known
  if unknown:
    raise ValueError(f'Unknown configuration fields: {sorted(unknown)}.')
  given, fields = fields, dict(fields, **overrides)
  settings = OBJECTIVE_SETTINGS.get(fields.get('objective', TrainConfig.objective), NoSettings)
  fields = {k: v for k, v in fields.items()
            if k in overrides or k in settings.__dataclass_fields__ or not setting_owners(k)[0]}
  # Defaults that follow a switch apply when the switch is an override (not when `fields` are a
  # recorded configuration, which holds what they gave).
  if (overrides.get('perturbation_memory') and has_training_attack(settings)
      and 'eps_iter_scale' not in overrides):
    # Warm starts want small steps: 0.5 eps per iteration measured best (docs/RESULTS.md,
    # "Cheaper robustness"); the released 2.5 eps / nb_iter throws the stored start away.
    fields['eps_iter_scale'] = 0.5 * fields.get('nb_iter', AttackConfig.nb_iter)
  if overrides.get('search') == 'illinois':
    # A few forwards find what bisection's ten do (docs/RESULTS.md); the validation monitor keeps
    # the bisection's steps, so that checkpoint selection does not change with the search.
    if fields.get('test_num_search_steps') is None:
      fields['test_num_search_steps'] = given.get('num_search_steps',
                                                  AttackConfig.num_search_steps)
    if 'num_search_steps' not in overrides:
      fields['num_search_steps'] = ILLINOIS_SEARCH_STEPS
  for name in ('lr_boundaries', 'lr_values', 'input_range'):
    if name in fields:
      fields[name] = tuple(fields[name])
  config = TrainConfig.flat(**fields)
  check_overrides_take_effect(config, set(overrides))
  return config

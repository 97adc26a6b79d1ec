"""Training configuration and the paper's settings as presets (docs/paper_notes.md section 4).

A preset is chosen by (dataset, norm); any field can be overridden. `TrainConfig.validate` turns
bad combinations into ValueErrors that say what to change, and `resolve` refuses overrides that
would do nothing in the chosen configuration (a flag is never silently ignored).

Radii (hinge_maxeps, attack_mineps, pgd_eps, test_eps, test_eps_iter) are in the unit of the
image range [0, 1] for every dataset: CIFAR-10's 8/255 is 0.0314, never 8.

This module imports no TensorFlow, so the CLIs check flags before TF starts.
"""
import dataclasses
import json
from typing import Optional, Tuple

OBJECTIVES = ('mma', 'omma', 'pgd_at', 'trades', 'standard')  # built in (mma_tf.objectives)
MMA_OBJECTIVES = ('mma', 'omma')
FIXED_RADIUS_OBJECTIVES = ('pgd_at', 'trades')  # train at --pgd_eps
PRECISIONS = ('float32', 'mixed_float16', 'mixed_bfloat16')  # mma_tf.precision.POLICIES

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
  sync_batchnorm: bool = False        # BN statistics over the global batch (models with BN only)
  released_quirks: bool = True        # AN-PGD: last midpoint, unclipped (docs/paper_notes.md 2.4)
  pgd_eps: float = 0.3                # PGD-AT and TRADES training radius
  # Perturbation memory (ATTA): training attacks start from each example's last perturbation.
  perturbation_memory: bool = False  # (resolve() then defaults eps_iter_scale to 0.5 nb_iter)
  perturbation_memory_bits: int = 16
  perturbation_memory_limit_mb: int = dataclasses.field(default=1024, metadata=_RESUMABLE)
  trades_beta: float = 6.0            # TRADES: weight of the KL term (Zhang et al.: 6, MNIST 1-6)
  # Validation monitor (docs/paper_notes.md 2.5).
  test_eps: float = 0.3
  test_eps_iter: float = 0.01
  test_nb_iter: Optional[int] = None          # None: nb_iter, as released
  test_num_search_steps: Optional[int] = None  # None: num_search_steps, as released
  # Optimisation.
  optimizer: str = 'adam'             # 'adam' (PyTorch eps 1e-8) or 'sgd' (PyTorch-style momentum)
  learning_rate: float = 1e-4
  lr_boundaries: Tuple[int, ...] = ()  # steps after which the next value applies (PyTorch rule)
  lr_values: Tuple[float, ...] = ()
  momentum: float = 0.9
  weight_decay: float = 0.0           # L2 on all variables, as PyTorch SGD's weight_decay
  batch_size: int = 50
  train_steps: int = dataclasses.field(default=100_000, metadata=_RESUMABLE)
  eval_batch_size: int = dataclasses.field(default=100, metadata=_RESUMABLE)
  seed: int = 0
  # Data and model contract.
  num_validation: Optional[int] = None  # None: the dataset's (data.default_num_validation)
  input_range: Tuple[float, float] = (0.0, 1.0)  # the range the model expects; data is [0, 1]
  # Loop.
  checkpoint_every: int = dataclasses.field(default=500, metadata=_RESUMABLE)
  log_every: int = dataclasses.field(default=50, metadata=_RESUMABLE)
  jit_compile: bool = dataclasses.field(default=False, metadata=_RESUMABLE)
  steps_per_loop: int = dataclasses.field(default=1, metadata=_RESUMABLE)
  mixed_precision: str = 'float32'    # or 'mixed_float16', 'mixed_bfloat16' (compute dtype)
  deterministic: bool = dataclasses.field(default=False, metadata=_RESUMABLE)

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

  def validate(self, num_replicas=1, objectives=OBJECTIVES):
    """ValueError naming the flag to change; `objectives`: the names that exist (the trainer
    adds objectives registered or passed in Python)."""
    def need(ok, message):
      if not ok:
        raise ValueError(message)
    need(self.norm in ('Linf', 'L2'), f"Unknown norm {self.norm!r}; choose 'Linf' or 'L2'.")
    need(self.objective in objectives,
         f'Unknown objective {self.objective!r}; choose one of {tuple(objectives)}.')
    model_source_kind(self.model)
    need(self.trades_beta >= 0, f'--trades_beta must be >= 0; got {self.trades_beta}.')
    need(self.num_validation is None or self.num_validation >= 1,
         f'--num_validation must be >= 1 (validation picks the best checkpoint); got '
         f'{self.num_validation}.')
    need(len(self.input_range) == 2 and self.input_range[0] < self.input_range[1],
         f'--input_range must be two numbers lo,hi with lo < hi; got {self.input_range}.')
    for name in ('hinge_maxeps', 'attack_mineps', 'pgd_eps', 'test_eps', 'test_eps_iter',
                 'learning_rate', 'eps_iter_scale'):
      need(getattr(self, name) > 0, f'--{name} must be > 0; got {getattr(self, name)}.')
    if self.norm == 'Linf':
      for name in ('hinge_maxeps', 'attack_mineps', 'pgd_eps', 'test_eps'):
        need(getattr(self, name) <= 1, f'--{name}={getattr(self, name)} is beyond the [0, 1] '
             'image box in Linf; radii are fractions of the pixel range for every dataset, '
             'not pixel counts: write 8/255 (= 0.0314), not 8.')
    need(self.objective not in MMA_OBJECTIVES or self.attack_mineps <= self.hinge_maxeps,
         f'--attack_mineps ({self.attack_mineps}) must not exceed --hinge_maxeps (d_max, '
         f'{self.hinge_maxeps}): AN-PGD starts at attack_mineps and searches up to 1.05 d_max.')
    need(0 <= self.clean_loss_coeff <= 1,
         f'--clean_loss_coeff must be in [0, 1]; got {self.clean_loss_coeff}.')
    need(not (self.objective == 'omma' and self.clean_loss_coeff != 0),
         'OMMA is MMA without the clean loss: use --objective=omma with --clean_loss_coeff=0 '
         '(or leave the coefficient unset).')
    need(self.search_bn_mode in ('train', 'eval'),
         f"--search_bn_mode must be 'train' or 'eval'; got {self.search_bn_mode!r}.")
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
    need(not (self.perturbation_memory and self.objective == 'standard'),
         '--perturbation_memory stores the training attack\'s perturbation, and '
         '--objective=standard has no training attack; drop the flag.')
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

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


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


# Fields whose effect depends on the configuration: (field, does it act in config c, why not).
# Every other field acts in every configuration: nb_iter, num_search_steps (and their test_
# versions), released_quirks,
# test_eps, test_eps_iter and hinge_maxeps (through the validation margin search, whose range is
# 1.05 d_max) drive the validation monitor of every objective.
_EFFECT_RULES = (
    ('clean_loss_coeff', lambda c: c.objective in MMA_OBJECTIVES,
     lambda c: f'only MMA has a clean-loss term, and --objective={c.objective} is not MMA; '
               'drop it'),
    ('attack_mineps', lambda c: c.objective in MMA_OBJECTIVES,
     lambda c: f"it is AN-PGD's starting radius, and --objective={c.objective} runs no AN-PGD; "
               'drop it'),
    ('search_bn_mode', lambda c: c.objective in MMA_OBJECTIVES and MODELS.get(c.model, True),
     lambda c: (f'--objective={c.objective} runs no AN-PGD search; drop it'
                if c.objective not in MMA_OBJECTIVES else
                f'--model={c.model} has no BatchNorm, so both modes compute the same; drop it')),
    ('pgd_eps', lambda c: c.objective in FIXED_RADIUS_OBJECTIVES,
     lambda c: f'it is the PGD-AT / TRADES training radius, and --objective={c.objective} is '
               'neither (the validation radius is --test_eps); drop it'),
    ('trades_beta', lambda c: c.objective == 'trades',
     lambda c: f'it weighs the TRADES KL term, and --objective={c.objective} is not trades; '
               'drop it'),
    ('eps_iter_scale', lambda c: c.objective != 'standard',
     lambda c: 'it scales the training attack\'s step, and --objective=standard has no training '
               'attack (the validation step is --test_eps_iter); drop it'),
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


def resume_conflicts(saved, config):
  """How `config` differs from a run's saved config.json (a dict), as one message per field.

  Resumable fields (train_steps, cadence, speed switches) may differ. A field missing from
  `saved` was added by a later version; the run behaved as its dataclass default, so it resumes
  if `config` keeps that default, and is refused (naming the field) otherwise.
  """
  mine = json.loads(config.to_json())
  out = []
  for field in dataclasses.fields(config):
    name = field.name
    if field.metadata.get('resumable'):
      continue
    if name in saved:
      if saved[name] != mine[name]:
        out.append(f'{name}: saved {saved[name]!r}, now {mine[name]!r}')
      continue
    if field.default is not dataclasses.MISSING:
      default = _json_value(field.default)
    elif field.default_factory is not dataclasses.MISSING:
      default = _json_value(field.default_factory())
    else:
      default = dataclasses.MISSING
    if default != mine[name]:
      out.append(f'{name}: not in the saved config.json (written before the field existed, '
                 f'so the run used {default!r}), now {mine[name]!r}')
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
  """A TrainConfig from `fields` (missing ones at the dataclass defaults) with `overrides` (None
  values ignored) applied, refusing overrides that do nothing (see `resolve`)."""
  fields = dict(fields)
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
  if unknown:
    raise ValueError(f'Unknown configuration fields: {sorted(unknown)}.')
  fields.update(overrides)
  if fields.get('objective') == 'omma' and 'clean_loss_coeff' not in overrides:
    fields['clean_loss_coeff'] = 0.0
  if fields.get('perturbation_memory') and 'eps_iter_scale' not in overrides:
    # Warm starts want small steps: 0.5 eps per iteration measured best (docs/RESULTS.md,
    # "Cheaper robustness"); the released 2.5 eps / nb_iter throws the stored start away.
    fields['eps_iter_scale'] = 0.5 * fields.get('nb_iter', TrainConfig.nb_iter)
  for name in ('lr_boundaries', 'lr_values', 'input_range'):
    if name in fields:
      fields[name] = tuple(fields[name])
  config = TrainConfig(**fields)
  check_overrides_take_effect(config, set(overrides))
  return config

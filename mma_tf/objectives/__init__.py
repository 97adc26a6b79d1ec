"""What a training step minimises. One contract for every objective; the trainer knows none by name.

An objective runs inside one replica under the trainer's GradientTape and knows nothing about
strategies, checkpoints or files. Called with (model, images, labels, eps0, seeds, stop_recording)
it returns an `ObjectiveOutput`: the per-example loss (the trainer sums it over the global batch
and divides by the global batch size), the per-example eps to remember (objectives with
`uses_eps_memory`), and per-example statistics that the trainer sums across replicas and the
objective turns into logged metrics with `summarize`. Attacks run inside `stop_recording()`, so
their inner gradients are never recorded on the trainer's tape.

Perturbation memory (`config.perturbation_memory`, objectives with a training attack: those whose
settings derive from `configs.AttackSettings`, see `configs.has_training_attack`): the call also
gets `warm_start=(delta [B, ...], known [B] bool)`, each example's perturbation from its previous
step (known = it has one), to start the training attack from; the output's `perturbation` is what
to remember, written for the examples in `perturbation_mask` (all if None).

A new objective is one file: subclass `Objective`, decorate it with `@register`, and import the
module (or pass an instance to `Trainer(objective=...)`). Its own hyperparameters are a dataclass
named by the class attribute `settings` (see `configs.MMASettings`); `configs.resolve` and the
Trainer then take them by name, and `self.config.<name>` reads them.
"""
import dataclasses
from typing import Dict, Optional

import tensorflow as tf

from mma_tf import configs
from mma_tf import precision
from mma_tf.evaluation.common import is_correct

OBJECTIVES = {}


@dataclasses.dataclass
class ObjectiveOutput:
  loss: tf.Tensor                 # [B] per-example loss
  eps: Optional[tf.Tensor]        # [B] eps to remember, or None (the memory is left alone)
  stats: Dict[str, tf.Tensor]     # name -> [B] per-example values, summed over the global batch
  perturbation: Optional[tf.Tensor] = None       # [B, ...] to remember (perturbation memory)
  perturbation_mask: Optional[tf.Tensor] = None  # [B] bool: rows to write (None: all)


class Objective:
  """Base class. Class attributes declare what the trainer needs to know:

  name: the registry name (config.objective).
  settings: the dataclass of its own settings (config.settings; fields read as config.<name>).
  uses_eps_memory: the per-example eps table is read (eps0) and rewritten from `eps`.
  selection_metric: the validation metric (of `Trainer.evaluate`: clean_acc, pgd_acc,
    avg_margin) whose maximum picks the best checkpoint, the one exported.
  `has_training_attack` (read from `settings`, see `configs.has_training_attack`): the objective
    trains at an attack, which can start from a remembered perturbation (the call takes
    `warm_start`, the output carries `perturbation`).
  """
  name = None
  settings = configs.NoSettings
  uses_eps_memory = False
  selection_metric = 'avg_margin'
  # Under mixed_float16 the task sets this to a function returning the attacks' loss scale.
  attack_loss_scale = None

  def __init__(self, config):
    self.config = config

  @property
  def has_training_attack(self):
    return configs.has_training_attack(self.settings)

  @staticmethod
  def logits(model, x, training):
    """float32 logits, whatever the model's compute dtype."""
    return tf.cast(model(x, training=training), tf.float32)

  def attack_predictor(self, model, training):
    """images -> float32 logits for an attack (loss-scaled under float16)."""
    predict = precision.float32_logits(model, training)
    if self.attack_loss_scale is not None:
      predict = precision.loss_scaled(predict, self.attack_loss_scale())
    return predict

  def __call__(self, model, x, y, eps0, seeds, stop_recording):
    raise NotImplementedError

  def summarize(self, sums, count):
    """Logged metrics from the summed statistics of `count` examples (default: their means)."""
    return {k: v / count for k, v in sums.items()}


def register(cls):
  """Class decorator: makes the objective available as config.objective = cls.name, with its
  settings dataclass (`cls.settings`) in configs.OBJECTIVE_SETTINGS, which the CLI reads."""
  if not cls.name:
    raise ValueError(f'{cls.__name__} needs a class attribute `name`.')
  if not dataclasses.is_dataclass(cls.settings):
    raise ValueError(f'{cls.__name__}.settings must be a dataclass; got {cls.settings!r}.')
  OBJECTIVES[cls.name] = cls
  configs.OBJECTIVE_SETTINGS[cls.name] = cls.settings
  return cls


def unregister(name):
  """Removes the objective registered as `name` (and its settings) from the registry."""
  OBJECTIVES.pop(name, None)
  configs.OBJECTIVE_SETTINGS.pop(name, None)


def build_objective(config):
  if config.objective not in OBJECTIVES:
    raise ValueError(f'Unknown objective {config.objective!r}; choose one of {sorted(OBJECTIVES)}.')
  return OBJECTIVES[config.objective](config)


def compiled(attack, config):
  """The attack XLA-compiled when --jit_compile (it holds no cross-replica ops, so it compiles
  inside strategy.run); plain graph otherwise, which is faster on CPU (BUILD.md)."""
  return tf.function(attack, jit_compile=True) if config.jit_compile else attack


def correct(logits, y):
  return tf.cast(is_correct(logits, y), tf.float32)


# The built-in objectives register themselves on import.
from mma_tf.objectives import mma, pgd_at, standard, trades  # noqa: E402,F401

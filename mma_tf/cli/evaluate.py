"""Evaluate the robustness of an exported SavedModel (any [0, 1] images -> logits classifier).

  mma-evaluate --saved_model=runs/mnist_5k-Linf-mma/export --dataset=mnist_5k --norm=Linf

Default protocol: AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square), each on the
points still robust (adapted, and then called AutoAttack-like, for models with fewer than 10
classes). --protocol=rand runs AutoAttack's version for models with randomness at inference (APGD
with EOT); --protocol=paper the MMA paper's PGD restarts (half cross-entropy, half CW, optional
transfer from --source_saved_model); --protocol=fast a cheaper protocol meant to reach AutoAttack's
verdict (not standard AutoAttack: APGD-T and FAB-T toward MALT's nearest classes, a short Square);
--protocol=all AutoAttack, the paper's and fast on the same points, and a list (autoattack,fast)
the ones named.
Also margin estimates and gradient-masking checks. Writes results.json, results.md,
per_example.npz and PNG plots to --output_dir. --split=validation takes the training run's
validation split from its config.json next to the export, when there is one.
"""
import json
import os
import sys

from absl import app, flags

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf import protocol_names
from mma_tf import setting_names
from mma_tf.cli import common

F = flags.FLAGS
flags.DEFINE_string('saved_model', None, 'SavedModel directory to evaluate.')
flags.DEFINE_string('protocol', 'autoattack',
                    "autoattack: AutoAttack's standard version; paper: the MMA paper's PGD "
                    "restarts; fast: AutoAttack's verdict for a fraction of its cost, not standard "
                    "AutoAttack (docs/autoattack.md 6); rand: AutoAttack's version for models with "
                    'randomness at inference (APGD-CE and APGD-DLR with EOT); all: autoattack, '
                    'paper and fast on the same points, and their worst case; or a comma-separated '
                    'list, e.g. autoattack,fast.')
flags.DEFINE_list('attacks', None, 'Run only these attacks, in this order (overrides --protocol): '
                  'apgd-ce, apgd-dlr, apgd-t, fab-t, square, pgd.')
flags.DEFINE_string('source_saved_model', None,
                    'Optional SavedModel to craft transfer attacks on (paper protocol).')
flags.DEFINE_string('signature', None, "Signature of --saved_model to call (default "
                    "'serving_default'; the source model always uses its default).")
flags.DEFINE_string('dataset', 'mnist_5k', 'Evaluation data, as mma-train\'s --dataset: '
                    f'{", ".join(sorted(data_lib.DATASETS))}, tfds:NAME or npz:PATH.')
flags.DEFINE_integer('num_validation', None, 'With --split=validation: the validation size the '
                     'model was trained with (default: from the run\'s config.json next to the '
                     'export, else the dataset\'s default).')
flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'Which split.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (mnist, cifar10, tfds:NAME).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_list('eps', None, "Radii in the unit of the [0, 1] image range, never rescaled: "
                  "numbers or fractions a/b (0.3, 8/255); default the paper's list.")
flags.DEFINE_integer('nb_iter', 100, 'Paper protocol: PGD iterations per restart.')
flags.DEFINE_integer('nb_restart', 10, 'Paper protocol: restarts per eps (half CE, half CW).')
flags.DEFINE_float('step_fraction', None, 'Paper protocol: PGD step as a fraction of eps '
                   '(default 1/40 for MNIST Linf, 1/4 otherwise).')
flags.DEFINE_integer('apgd_nb_iter', 100, 'APGD iterations (AutoAttack standard: 100).')
flags.DEFINE_integer('fab_nb_iter', 100, 'FAB iterations per target (standard: 100).')
flags.DEFINE_integer('n_target_classes', 9, 'Targets of APGD-T and FAB-T (standard: 9).')
flags.DEFINE_integer('square_queries', 5000, 'Square queries (standard: 5000).')
flags.DEFINE_integer('eot_iter', None, 'APGD gradient passes averaged per step (EOT; default 20 '
                     'with --protocol=rand, as the reference, else 1).')
flags.DEFINE_list('margins', ['anpgd', 'pgd_bisection', 'fab'],
                  'Margin estimates: anpgd, pgd_bisection, fab (empty: none).')
flags.DEFINE_float('margin_maxeps', None, 'Upper end of the margin searches (default 1.5 x max '
                   'eps).')
flags.DEFINE_integer('margin_nb_iter', 40, 'PGD iterations inside the margin estimates.')
flags.DEFINE_integer('num_examples', None, 'Evaluate only the first N examples of the split.')
flags.DEFINE_integer('batch_size', 100, 'Global batch size (split across replicas).')
flags.DEFINE_integer('seed', 0, 'Seed of the random starts.')
flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker'],
                  'default: one device; mirrored: all local GPUs; multi_worker: hosts in '
                  'TF_CONFIG. Results are identical to one device.')
flags.DEFINE_bool('jit_compile', False, 'XLA-compile the attacks (per replica).')
flags.DEFINE_string('output_dir', None, 'Where to write the report (default '
                    '<saved_model>/../eval-<split>-<norm>).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing report in --output_dir.')
flags.DEFINE_bool('verbose_tf', False, 'Show TensorFlow C++ logs.')
flags.mark_flag_as_required('saved_model')

# EvalConfig fields whose flag has another name (messages name settings as flags).
_FLAG_NAMES = {'margin_estimates': 'margins', 'rel_step': 'step_fraction'}


def _recorded_validation(saved_model, dataset):
  """What the training run of `saved_model` used as its validation split, from its config.json
  (<saved_model>/../config.json): {'path', 'num_validation', 'validation_split' ('first' or
  'random:SEED'; runs recorded before the field validated on their first images)}; None when
  there is no record for `dataset`."""
  path = os.path.join(os.path.dirname(os.path.abspath(saved_model.rstrip('/'))), 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = configs.flat_record(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} is unreadable ({e}); restore it, or pass --num_validation and '
                     'evaluate a copy of the export without it.') from e
  identity = record.get('data') or {}
  if record.get('dataset') != dataset:
    print(f'{path} records a run on {record.get("dataset")!r}, not {dataset!r}: its validation '
          'split does not apply.', flush=True)
    return None
  return {'path': path, 'validation_split': identity.get('validation_split', 'first'),
          'num_validation': identity.get('num_validation', record.get('num_validation'))}


def _describe_split(data, recorded):
  """Which images the validation split is, and where that came from."""
  source = (f'from {recorded["path"]}' if recorded else '--num_validation'
            if F.num_validation is not None else
            "the dataset's default; no config.json next to the export")
  rule = getattr(data, 'validation_split', 'first')
  which = ('the first' if rule == 'first' else
           f'a fixed random selection ({rule}) of')
  return f'{which} {data.num_validation} training images ({source})'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  out_dir = F.output_dir or os.path.join(
      os.path.dirname(os.path.abspath(F.saved_model.rstrip('/'))), f'eval-{F.split}-{F.norm}')
  setting_names.use_flags(_FLAG_NAMES)
  try:
    # Flag errors before TensorFlow starts.
    if os.path.exists(out_dir) and os.listdir(out_dir) and not F.overwrite:
      raise ValueError(f'{out_dir} already holds a report; pass --overwrite or another '
                       '--output_dir.')
    if F.num_examples is not None and F.num_examples < 1:
      raise ValueError(f'--num_examples must be >= 1; got {F.num_examples}.')
    protocol_names.parse(F.protocol)
    eps = common.parse_radii(F.eps, '--eps') if F.eps else None
    data_lib.describe_dataset_name(F.dataset)
    recorded = _recorded_validation(F.saved_model, F.dataset) if F.split == 'validation' else None
    num_validation = F.num_validation
    if recorded:
      if num_validation not in (None, recorded['num_validation']):
        raise ValueError(f'--num_validation={num_validation}, but the run trained with '
                         f'{recorded["num_validation"]} validation images ({recorded["path"]}); '
                         'drop --num_validation.')
      num_validation = recorded['num_validation']
    common.optional_import('matplotlib', 'plots', "The report's PNG plots")
    common.import_tensorflow(F.verbose_tf)
    from mma_tf import evaluation, export, trainer
    eps = eps or evaluation.default_eps(F.dataset, F.norm)
    config = evaluation.EvalConfig(
        norm=F.norm, eps=tuple(eps), protocol=F.protocol,
        attacks=tuple(F.attacks) if F.attacks else None, nb_iter=F.nb_iter,
        nb_restart=F.nb_restart,
        rel_step=F.step_fraction or evaluation.default_rel_step(F.dataset, F.norm),
        apgd_nb_iter=F.apgd_nb_iter, fab_nb_iter=F.fab_nb_iter,
        n_target_classes=F.n_target_classes, square_queries=F.square_queries,
        eot_iter=F.eot_iter, margin_estimates=tuple(m for m in F.margins if m),
        margin_maxeps=F.margin_maxeps, margin_nb_iter=F.margin_nb_iter,
        batch_size=F.batch_size, seed=F.seed, jit_compile=F.jit_compile)
    builtin = data_lib.DATASETS.get(F.dataset)  # its shape is known before any download
    if builtin:
      config.validate(builtin.image_shape)
    strategy = trainer.make_strategy(F.strategy)
    with strategy.scope():  # the weights are then copied to every replica's device
      predict, input_spec = export.load_classifier(F.saved_model, F.signature)
      source = None
      if F.source_saved_model:
        source, _ = export.load_classifier(F.source_saved_model)
    shape_clash = lambda shape: ValueError(
        f'{F.saved_model} takes images of shape {input_spec.shape[1:]}, but {F.dataset} images '
        f'are {tuple(shape)}; evaluate on the dataset the model was trained for.')
    if builtin and not input_spec.shape[1:].is_compatible_with(builtin.image_shape):
      raise shape_clash(builtin.image_shape)
    split_rule = recorded['validation_split'] if recorded and F.dataset.startswith('npz:') \
        else None
    data = data_lib.load(F.dataset, F.tfds_data_dir, num_validation=num_validation,
                         validation_split=split_rule)
    config.validate(data.image_shape)
    if not input_spec.shape[1:].is_compatible_with(data.image_shape):
      raise shape_clash(data.image_shape)
    split = 'the test split'
    images, labels, _ = data.eval_split(F.split, limit=F.num_examples)
    if F.split == 'validation':
      split = f'the validation split: {_describe_split(data, recorded)}'
    protocols = config.protocol_attacks()
    attacks = ', '.join(f'{p}: {" -> ".join(a.name for a in attack_list)}'
                        for p, attack_list in protocols.items())
    print(f'Evaluating {F.saved_model} on {len(labels)} {F.dataset} images ({split}), '
          f'{F.norm} eps {", ".join(f"{e:g}" for e in eps)} on {strategy.num_replicas_in_sync} '
          f'replica(s); {attacks}{" + transfer" if source else ""}'
          f'{" (fast: not standard AutoAttack)" if "fast" in protocols else ""}', flush=True)
    results, per_example = evaluation.evaluate(
        predict, images, labels, config, source, progress=lambda t: print(f'  {t}', flush=True),
        strategy=strategy)
  except (ValueError, ImportError, data_lib.DataUnavailableError) as e:  # incl. SavedModelError
    print(f'error: {e}', file=sys.stderr)
    return 2
  results.update(saved_model=os.path.abspath(F.saved_model), dataset=F.dataset, split=F.split,
                 split_images=split, source_saved_model=F.source_saved_model)
  title = f'{F.saved_model} ({F.dataset} {F.split})'
  if trainer.is_chief(strategy):
    evaluation.write_report(results, per_example, out_dir, title=title)
  print(evaluation.markdown_table(results, title))
  print(f'{results["timing"]["seconds"]:.0f} s. Report: {out_dir}')
  return 0


def run():
  """Console-script entry point."""
  common.run_main(main, __doc__)


if __name__ == '__main__':
  run()

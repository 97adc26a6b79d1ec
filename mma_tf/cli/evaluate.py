"""Evaluate the robustness of an exported SavedModel (any [0, 1] images -> logits classifier).

  python bin/evaluate.py --saved_model=runs/mnist_5k-Linf-mma/export --dataset=mnist_5k \
      --norm=Linf --eps=0.1,0.2,0.3,0.4

Whitebox PGD with restarts (half cross-entropy, half CW) on the loaded artifact itself, optional
transfer attacks from --source_saved_model, two margin estimates and gradient-masking checks.
Writes results.json, results.md, per_example.npz and PNG plots to --output_dir.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402

F = flags.FLAGS
flags.DEFINE_string('saved_model', None, 'SavedModel directory to evaluate.')
flags.DEFINE_string('source_saved_model', None,
                    'Optional SavedModel to craft transfer attacks on (PAPER.md 5.1).')
flags.DEFINE_string('signature', None, "Signature to call (default 'serving_default').")
flags.DEFINE_enum('dataset', 'mnist_5k', sorted(data_lib.DATASETS), 'Evaluation data.')
flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'Which split.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (mnist / cifar10).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_list('eps', None, "Radii; default the paper's list for the dataset and norm. "
                  'CIFAR-10 Linf values above 1 are read as /255.')
flags.DEFINE_integer('nb_iter', 100, 'PGD iterations per restart.')
flags.DEFINE_integer('nb_restart', 10, 'Random restarts per eps (half CE, half CW loss).')
flags.DEFINE_float('step_fraction', None, 'PGD step as a fraction of eps (default 1/40 for '
                   'MNIST Linf, 1/4 otherwise).')
flags.DEFINE_float('margin_maxeps', None, 'Upper end of the margin searches (default 1.5 x max '
                   'eps).')
flags.DEFINE_integer('margin_nb_iter', 40, 'PGD iterations inside the margin estimates.')
flags.DEFINE_integer('num_examples', None, 'Evaluate only the first N examples of the split.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('seed', 0, 'Seed of the random starts.')
flags.DEFINE_string('output_dir', None, 'Where to write the report (default '
                    '<saved_model>/../eval-<split>-<norm>).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing report in --output_dir.')
flags.mark_flag_as_required('saved_model')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import numpy as np
  import tensorflow as tf
  from tqdm import tqdm
  from mma_tf import evaluation, export
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  out_dir = F.output_dir or os.path.join(
      os.path.dirname(os.path.abspath(F.saved_model.rstrip('/'))), f'eval-{F.split}-{F.norm}')
  try:
    if os.path.exists(out_dir) and os.listdir(out_dir) and not F.overwrite:
      raise ValueError(f'{out_dir} already holds a report; pass --overwrite or another '
                       '--output_dir.')
    eps = (evaluation.parse_eps(F.eps, F.dataset, F.norm) if F.eps
           else evaluation.default_eps(F.dataset, F.norm))
    config = evaluation.EvalConfig(
        norm=F.norm, eps=tuple(eps), nb_iter=F.nb_iter, nb_restart=F.nb_restart,
        rel_step=F.step_fraction or evaluation.default_rel_step(F.dataset, F.norm),
        batch_size=F.batch_size, seed=F.seed, margin_maxeps=F.margin_maxeps,
        margin_nb_iter=F.margin_nb_iter)
    spec = data_lib.DATASETS[F.dataset]
    config.validate(spec.image_shape)
    if F.num_examples is not None and F.num_examples < 1:
      raise ValueError(f'--num_examples must be >= 1; got {F.num_examples}.')
    predict, input_spec = export.load_classifier(F.saved_model, F.signature)
    source = None
    if F.source_saved_model:
      source, _ = export.load_classifier(F.source_saved_model, F.signature)
    if not input_spec.shape[1:].is_compatible_with(spec.image_shape):
      raise ValueError(f'{F.saved_model} takes images of shape {input_spec.shape[1:]}, but '
                       f'{F.dataset} images are {spec.image_shape}; evaluate on the dataset the '
                       'model was trained for.')
    data = data_lib.load(F.dataset, F.tfds_data_dir)
    images, labels, _ = data.eval_split(F.split)
    images, labels = images[:F.num_examples], labels[:F.num_examples]
    images = images.astype(np.float32) / 255.0
    print(f'Evaluating {F.saved_model} on {len(labels)} {F.dataset} {F.split} images, {F.norm} '
          f'eps {", ".join(f"{e:g}" for e in eps)}: PGD-{config.nb_iter} x {config.nb_restart} '
          f'restarts{" + transfer" if source else ""}', flush=True)
    bar = tqdm(total=1, unit='batch', dynamic_ncols=True)

    def progress(done, total, text):
      bar.total = total
      bar.set_description(text)
      bar.update(done - bar.n)

    results, per_example = evaluation.evaluate(predict, images, labels, config, source, progress)
    bar.close()
  except (ValueError, export.SavedModelError, data_lib.DataUnavailableError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results.update(saved_model=os.path.abspath(F.saved_model), dataset=F.dataset, split=F.split,
                 source_saved_model=F.source_saved_model)
  evaluation.write_report(results, per_example, out_dir, title=f'{F.saved_model} ({F.dataset})')
  print(evaluation.markdown_table(results, f'{F.saved_model} ({F.dataset} {F.split})'))
  t = results['timing']
  print(f'{t["seconds"]:.0f}s; whitebox throughput {t["whitebox_throughput"]:.0f} '
        f'{t["throughput_unit"]}. Report: {out_dir}')
  return 0


def run():
  """Console-script entry point."""
  sys.modules['__main__'].__doc__ = __doc__  # absl's --help shows the main module's docstring
  app.run(main)


if __name__ == '__main__':
  run()

"""Which points do AutoAttack's later attacks break, ranked by how close APGD-CE came?

  python bench/analyze_triage.py --saved_model=DIR --report=DIR [--dataset=mnist_5k] [--eps=0.3]

--report: an `mma-evaluate` report of the same model, points and eps with the autoattack protocol
(its per_example.npz says which attack broke each point). Reruns AutoAttack's APGD-CE (its seeds,
so the same points) on the clean points and, at the point it returns for each survivor, takes
g: the logit gap z_y - max_{j!=y} z_j (--measure=gap), or that gap over z_y - z_(3), z_(3) the
third largest logit (--measure=ratio, scale-free). Prints, for the points APGD-T, FAB-T or Square
broke after APGD-CE, their rank by g among the survivors (1 = closest to the boundary) and the
share of survivors at or below each: a rule that runs the later attacks only on the survivors
with the smallest g must reach the largest of these ranks.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402
from mma_tf import export  # noqa: E402
from mma_tf.attacks import get_attack  # noqa: E402
from mma_tf.evaluation.runner import run_stage  # noqa: E402

flags.DEFINE_string('saved_model', None, 'The SavedModel.')
flags.DEFINE_string('report', None, 'Its autoattack report directory.')
flags.DEFINE_string('dataset', 'mnist_5k', 'Test data, as mma-evaluate --dataset.')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_float('eps', 0.3, 'Radius (the report must hold it).')
flags.DEFINE_integer('batch_size', 250, 'Batch size.')
flags.DEFINE_enum('measure', 'gap', ['gap', 'ratio'],
                  'gap: z_y - max other logit; ratio: that gap over z_y - z_(3).')
flags.mark_flags_as_required(['saved_model', 'report'])
FLAGS = flags.FLAGS


def gaps(logits, y):
  own = logits[np.arange(len(y)), y]
  gap = own - np.where(np.arange(logits.shape[1])[None] == y[:, None], -np.inf, logits).max(1)
  if FLAGS.measure == 'gap':
    return gap
  return gap / np.maximum(own - np.sort(logits, 1)[:, -3], 1e-12)


def main(_):
  per_example = np.load(os.path.join(FLAGS.report, 'per_example.npz'))
  e_i = int(np.argmin(np.abs(per_example['eps'] - FLAGS.eps)))
  broken_by = per_example['autoattack_broken_by'][e_i]
  names = list(per_example['autoattack_attack_names'])
  n = len(broken_by)
  predict, _ = export.load_classifier(FLAGS.saved_model)
  x, y, index = data_lib.load(FLAGS.dataset).eval_split('test', limit=n)
  survivors = np.flatnonzero(per_example['clean_correct'] & (broken_by != 0))
  # AutoAttack's APGD-CE as the evaluator (seed 0, mma-evaluate's default) ran it.
  apgd_ce = get_attack('apgd-ce', FLAGS.norm)
  fn = tf.function(lambda a, b, i: run_stage(apgd_ce, predict, a, b, FLAGS.eps, 0, i, 0)[0])
  g = []
  for lo in range(0, len(survivors), FLAGS.batch_size):
    p = survivors[lo:lo + FLAGS.batch_size]
    x_adv = fn(tf.constant(x[p]), tf.constant(y[p]), tf.constant(index[p]))
    g.append(gaps(predict(x_adv).numpy(), y[p]))
  g = np.concatenate(g)
  if (g <= 0).any():
    print(f'warning: {int((g <= 0).sum())} survivors are misclassified at the rerun point')
  rank = np.argsort(np.argsort(g, kind='stable'), kind='stable') + 1
  later = broken_by[survivors] > 0
  print(f'{FLAGS.saved_model}: {n} points, eps {FLAGS.eps:g}; {len(survivors)} survive APGD-CE, '
        f'{int(later.sum())} of them broken later')
  for i in np.flatnonzero(later):
    print(f'  point {survivors[i]}: broken by {names[broken_by[survivors[i]]]}; gap {g[i]:.4f}, '
          f'rank {rank[i]} of {len(survivors)} ({rank[i] / len(survivors):.1%})')
  if later.any():
    worst = rank[later].max()
    print(f'smallest share of survivors covering every later break: {worst / len(survivors):.1%} '
          f'(gap <= {np.sort(g)[worst - 1]:.4f})')
  print('survivors by g, percentiles 10/25/50/75/90: ' +
        ' / '.join(f'{v:.4g}' for v in np.percentile(g, [10, 25, 50, 75, 90])))

if __name__ == '__main__':
  app.run(main)

"""AN-PGD's boundary search on a trained model: the illinois search (--search=illinois) against
the released bisection, along the same PGD directions.

  python bench/bench_search.py --saved_model=DIR [--num_examples=500 --eps0=0.1,remembered,0.3 \
      --nb_iter=40 --hinge_maxeps=0.45 --search_steps=2,3,4]

On the first N validation digits that the model classifies with p_y > 1/2 (the examples MMA
attacks), PGD at eps0 (the SLM loss, step 2.5 eps0 / nb_iter, random start: the training attack)
gives a direction u; then, on the same u, the released bisection (10 steps, 1 + 10 forwards, the
last margin unused) returns its scale and its final bracket [lower, upper], and the illinois
search with k forwards (after the one at the PGD point) returns its estimate. eps0 is a number,
or 'remembered': what the eps memory holds in training, the example's bisection estimate from a
PGD at 0.1, times a factor drawn from U(0.8, 1.2) (the model has moved since its last visit).
Printed, per eps0 and k: the share of examples where the two scales are within one width of the
bisection's own final bracket, the absolute difference (percentiles, and the share above 0.01),
its mean (a bias), and the share where either search found no success up to maxeps = 1.05 d_max
(both return about maxeps there).
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import configs, data as data_lib, export, losses, norms  # noqa: E402
from mma_tf.attacks import bisection_search, example_seeds, illinois_search, pgd  # noqa: E402

flags.DEFINE_string('saved_model', None, 'A trained classifier (SavedModel).')
flags.DEFINE_string('dataset', 'mnist_5k', 'Dataset (its training split).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_integer('num_examples', 500, 'First N training examples.')
flags.DEFINE_list('eps0', ['0.1', 'remembered', '0.3'],
                 "Starting radii (the eps memory of the examples): numbers, or 'remembered'.")
flags.DEFINE_integer('nb_iter', 40, 'PGD iterations (the MNIST preset: 40).')
flags.DEFINE_float('hinge_maxeps', 0.45, 'd_max; the search spans 1.05 d_max.')
flags.DEFINE_list('search_steps', ['2', '3', '4'], 'Illinois forwards to compare.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.mark_flag_as_required('saved_model')
FLAGS = flags.FLAGS
BISECTION_STEPS = configs.AttackConfig.num_search_steps  # the released bisection


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  predict, _ = export.load_classifier(FLAGS.saved_model)
  data = data_lib.load(FLAGS.dataset)
  x, y, index = data.eval_split('validation')  # any labelled digits, as the training attack sees
  x, y, index = x[:FLAGS.num_examples], y[:FLAGS.num_examples], index[:FLAGS.num_examples]
  maxeps = 1.05 * FLAGS.hinge_maxeps
  steps = [int(k) for k in FLAGS.search_steps]
  margin_of = lambda yb: (lambda images: losses.soft_logit_margin(predict(images), yb))

  @tf.function(reduce_retracing=True)
  def direction(xb, yb, eps0, seeds):
    x_pgd = pgd(predict, xb, yb, eps0, norm=FLAGS.norm, nb_iter=FLAGS.nb_iter,
                rel_step_size=2.5 / FLAGS.nb_iter, loss='slm', seed=seeds)
    u = (x_pgd - xb) / norms.per_example(eps0 + 1e-12, xb)
    return u, margin_of(yb)(x_pgd), margin_of(yb)(xb)

  @tf.function(reduce_retracing=True)
  def bisect(xb, yb, u, eps0, first_margin):
    return bisection_search(margin_of(yb), xb, u, eps0, first_margin, maxeps, BISECTION_STEPS)

  searches = {k: tf.function(lambda xb, yb, u, eps0, first, zero, k=k: illinois_search(
      margin_of(yb), xb, u, eps0, first, zero, maxeps, k), reduce_retracing=True) for k in steps}

  slm = np.concatenate([margin_of(tf.constant(y[lo:lo + 100]))(tf.constant(x[lo:lo + 100]))
                        .numpy() for lo in range(0, len(y), 100)])
  keep = slm < 0
  x, y, index = x[keep], y[keep], index[keep]
  print(f'{FLAGS.saved_model}: {len(y)} of {len(keep)} examples with p_y > 1/2; maxeps '
        f'{maxeps:.4f}; forwards per search: bisection 1 + {BISECTION_STEPS} (its last margin '
        f'unused), illinois 1 + k (the margin at x comes from the clean pass)')
  print('| eps0 | k | within 1 bracket width | abs. difference p50 / p90 / p99 / max | above '
        '0.01 | mean difference | no success up to maxeps: bisection / illinois |')
  print('|---|---|---|---|---|---|---|')
  for name in FLAGS.eps0:
    rows = {k: [] for k in steps}
    bis = []
    for lo in range(0, len(y), FLAGS.batch_size):
      xb, yb = tf.constant(x[lo:lo + FLAGS.batch_size]), tf.constant(y[lo:lo + FLAGS.batch_size])
      seeds = example_seeds([0, 1], index[lo:lo + len(yb)])
      if name == 'remembered':
        e0 = tf.fill([len(yb)], 0.1)
        u, first, _ = direction(xb, yb, e0, seeds)
        factor = tf.random.stateless_uniform([len(yb)], [lo, 2], 0.8, 1.2)
        e0 = tf.minimum(bisect(xb, yb, u, e0, first)[0] * factor, maxeps)
        seeds = example_seeds([0, 2], index[lo:lo + len(yb)])
      else:
        e0 = tf.fill([len(yb)], float(name))
      u, first, zero = direction(xb, yb, e0, seeds)
      bis.append([v.numpy() for v in bisect(xb, yb, u, e0, first)] + [e0.numpy()])
      for k in steps:
        rows[k].append(searches[k](xb, yb, u, e0, first, zero)[0].numpy())
    scale, lower, upper, eps0 = (np.concatenate(v) for v in zip(*bis))
    width = np.maximum(upper - lower, 1e-12)  # 0 where eps0 = maxeps failed: both say maxeps
    bis_none = scale > maxeps - (maxeps - eps0) / 2**(BISECTION_STEPS - 1) - 1e-7
    for k in steps:
      est = np.concatenate(rows[k])
      diff = np.abs(est - scale)
      q = np.percentile(diff, [50, 90, 99, 100])
      print(f'| {name} | {k} | {np.mean(diff <= width):.1%} | '
            + ' / '.join(f'{v:.4f}' for v in q) + f' | {np.mean(diff > 0.01):.1%} | '
            f'{np.mean(est - scale):+.5f} | {bis_none.mean():.1%} / '
            f'{np.mean(est >= maxeps - 1e-7):.1%} |')


if __name__ == '__main__':
  app.run(main)

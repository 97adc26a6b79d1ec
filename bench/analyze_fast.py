"""Where AutoAttack's time goes after APGD-CE, and what the fast protocol may drop.

  python bench/analyze_fast.py --saved_model=DIR --norm=Linf --eps=0.3 --num_examples=200
  python bench/analyze_fast.py ... --points=385,412   # only these (e.g. the points a report says
                                                      # fast left robust and AutoAttack broke)

On the points APGD-CE leaves robust it runs, without compaction, every APGD-T target by logit
rank, every FAB-T target and Square with its full budget (AutoAttack's seeds), and prints:
- for each point AutoAttack breaks there, the classes whose APGD-T run breaks it and their best
  position in four target orders: by logit (AutoAttack's), by MALT, and both at the probe point;
- per order, the fewest targets whose APGD-T runs break every point AutoAttack's APGD-T breaks;
- the query at which Square broke each point (a shorter Square run is a prefix of the full one);
- wasted passes: the share of each attack's row-passes spent on rows already misclassified
  earlier in the same call (what dropping broken points inside an attack could save at most).
Every run gives a point the result it gets inside the evaluator (per-example seeds).
"""
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402
from mma_tf import export  # noqa: E402
from mma_tf.attacks import get_attack, square  # noqa: E402
from mma_tf.attacks.malt import malt_order, probe, logit_order  # noqa: E402
from mma_tf.evaluation.common import is_correct, stream_example_seeds  # noqa: E402
from mma_tf.evaluation.runner import run_stage  # noqa: E402

flags.DEFINE_string('saved_model', None, 'SavedModel to analyse.')
flags.DEFINE_string('dataset', 'mnist_5k', 'Dataset (as mma-evaluate).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_float('eps', 0.3, 'Radius.')
flags.DEFINE_integer('num_examples', 200, 'First N test examples.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('seed', 0, 'The evaluator seed.')
flags.DEFINE_list('points', [], 'Analyse only these positions of the evaluated set (default: '
                  'every clean-correct point).')
flags.mark_flag_as_required('saved_model')
FLAGS = flags.FLAGS


class Tally:
  """predict that counts row-passes, and those on rows misclassified at an earlier pass of the
  same call (`start` resets): the passes that dropping broken rows would save."""

  def __init__(self, predict):
    self.predict = predict
    self.labels = tf.Variable(tf.zeros([1], tf.int32), shape=tf.TensorShape([None]))
    self.broken = tf.Variable(tf.zeros([1], tf.bool), shape=tf.TensorShape([None]))
    self.passes = tf.Variable(0, dtype=tf.int64)
    self.wasted = tf.Variable(0, dtype=tf.int64)

  def start(self, labels):
    self.labels.assign(labels)
    self.broken.assign(tf.zeros_like(self.labels, tf.bool))

  def __call__(self, x):
    logits = self.predict(x)
    wrong = tf.argmax(logits, -1, output_type=tf.int32) != self.labels
    updates = [self.passes.assign_add(tf.cast(tf.shape(x)[0], tf.int64)),
               self.wasted.assign_add(tf.reduce_sum(tf.cast(self.broken, tf.int64)))]
    with tf.control_dependencies(updates):
      update = self.broken.assign(self.broken | wrong)
    with tf.control_dependencies([update]):
      return tf.identity(logits)


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  predict, _ = export.load_classifier(FLAGS.saved_model)
  x, y, index = data_lib.load(FLAGS.dataset).eval_split('test', limit=FLAGS.num_examples)
  norm, eps, bs, seed = FLAGS.norm, FLAGS.eps, FLAGS.batch_size, FLAGS.seed
  tally = Tally(predict)
  totals = {}

  def run(name, attack, points):
    """attack(x, y, eps, index) -> (x_adv, success[, extra]) on `points`, by chunks;
    returns success [len(points)] and the extra output; books passes under `name`."""
    fn = tf.function(attack, reduce_retracing=True)
    before = (tally.passes.numpy(), tally.wasted.numpy())
    start = time.perf_counter()
    outs = []
    for lo in range(0, len(points), bs):
      p = points[lo:lo + bs]
      tally.start(y[p])
      out = fn(tf.constant(x[p]), tf.constant(y[p]), tf.fill([len(p)], eps),
               tf.constant(index[p]))
      outs.append([np.asarray(o) for o in out[1:]])
    t = totals.setdefault(name, [0, 0, 0.0])
    t[0] += tally.passes.numpy() - before[0]
    t[1] += tally.wasted.numpy() - before[1]
    t[2] += time.perf_counter() - start
    return [np.concatenate(o) for o in zip(*outs)]

  def stage(name, s):
    """Stage s of the registered attack `name`, seeded as the evaluator seeds it."""
    attack = get_attack(name, norm)
    return lambda a, b, e, i: run_stage(attack, tally, a, b, e, seed, i, s)

  clean = is_correct(predict(tf.constant(x)), y).numpy()
  todo = np.flatnonzero(clean)
  if FLAGS.points:
    todo = np.intersect1d(todo, [int(p) for p in FLAGS.points])
  ce, = run('apgd-ce', stage('apgd-ce', 0), todo)
  left = todo[~ce]
  print(f'{FLAGS.saved_model}: {len(y)} points, {norm} eps {eps:g}; clean {clean.sum()}, '
        f'robust after APGD-CE {len(left)}')

  num_classes = predict(tf.constant(x[:1])).shape[-1]
  # AutoAttack's own APGD-T runs, one per stage (the target of clean-logit rank stage + 2): the
  # fast protocol reruns exactly these (same seeds) for the classes its order puts first, so a
  # point AutoAttack's APGD-T breaks is broken by fast's with k targets iff one of its breaking
  # classes is in the order's top k.
  stages = range(get_attack('apgd-t', norm).num_stages(num_classes))
  by_logit = np.stack([run('apgd-t', stage('apgd-t', s), left)[0] for s in stages], 1)
  by_fab = np.stack([run('fab-t', stage('fab-t', s), left)[0] for s in stages], 1)
  # Square's own call: it also returns the query at which each point broke.
  square_stream = get_attack('square', norm).stream
  sq, queries = run('square', lambda a, b, e, i: square(
      tally, a, b, e, norm=norm, seed=stream_example_seeds(seed, square_stream, i, 0)), left)

  xl, yl = tf.constant(x[left]), y[left]
  at_probe = probe(predict, xl, yl, eps, norm)
  orders = {'logit': logit_order(predict(xl), yl), 'malt': malt_order(predict, xl, yl, norm),
            'logit@probe': logit_order(predict(at_probe), yl),
            'malt@probe': malt_order(predict, at_probe, yl, norm)}
  orders = {o: v.numpy()[:, :-1] for o, v in orders.items()}  # the label last: drop it
  breaking = [set(orders['logit'][i, :len(stages)][by_logit[i]]) for i in range(len(left))]
  position = {o: np.array([min([int(np.flatnonzero(v[i] == c)[0]) + 1 for c in breaking[i]],
                               default=0) for i in range(len(left))]) for o, v in orders.items()}
  apgd_t = by_logit.any(1)
  print(f'AutoAttack after APGD-CE breaks {(apgd_t | by_fab.any(1) | sq).sum()} of {len(left)}: '
        f'APGD-T {apgd_t.sum()}, FAB-T {by_fab.any(1).sum()} (only FAB-T: '
        f'{(by_fab.any(1) & ~apgd_t).sum()}), Square {sq.sum()} (only Square: '
        f'{(sq & ~apgd_t & ~by_fab.any(1)).sum()})')
  print('| point | classes whose APGD-T run breaks it | their best position in: ' +
        ' / '.join(orders) + ' | FAB-T breaks | Square query |')
  print('|---|---|---|---|---|')
  for i in np.flatnonzero(apgd_t | by_fab.any(1) | sq):
    print(f'| {left[i]} | {sorted(int(c) for c in breaking[i]) or "-"} | '
          + ' / '.join(str(position[o][i] or '-') for o in orders)
          + f' | {"yes" if by_fab[i].any() else "-"} | {queries[i] if sq[i] else "-"} |')
  for o in orders:
    need = position[o][apgd_t]
    print(f'{o}: targets needed to cover every point APGD-T breaks: '
          f'{need.max() if need.size else 0} (per point: {sorted(need.tolist())})')
  for k in (1, 2, 3):
    union = [len(set(orders['malt'][i, :k]) | set(orders['malt@probe'][i, :k]))
             for i in range(len(left))]
    missed = apgd_t & (np.minimum(position['malt'], position['malt@probe']) > k)
    print(f'top {k} by MALT at x and top {k} at the probe: {np.mean(union):.2f} classes per '
          f'point on average; misses {missed.sum()} of the points APGD-T breaks')
  print('| attack | row-passes | on rows already misclassified | seconds (no compaction) |')
  print('|---|---|---|---|')
  for name, (passes, wasted, seconds) in totals.items():
    print(f'| {name} | {passes:,} | {wasted / max(passes, 1):.1%} | {seconds:.1f} |')


if __name__ == '__main__':
  app.run(main)

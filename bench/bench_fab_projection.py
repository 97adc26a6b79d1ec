"""FAB's projection onto hyperplane and box, alone, on the problems FAB-T meets on MNIST digits.

  python bench/bench_fab_projection.py --saved_model=runs/study-Linf/mma-seed0/export

For each target rank 2..10, FAB-T's first iteration projects the digits and the originals (the
same points at that iteration: 2B rows) onto the linearised boundary between the true class and
the target. The script builds those problems from the model's gradients and prints the median
time of one projection of 2B x 784 values, Linf and L2 (one tf.function looping over the nine
problems, so call overhead is shared). Without --saved_model it uses an untrained LeNet5Madry.
"""
import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402
from mma_tf import export, losses  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402
from mma_tf.attacks.fab_attack import project_onto_hyperplane_in_box  # noqa: E402
from mma_tf.models import lenet5_madry  # noqa: E402

flags.DEFINE_string('saved_model', None, 'An MNIST SavedModel (default: untrained LeNet5Madry).')
flags.DEFINE_integer('num_examples', 100, 'First N embedded test digits (2N rows per problem).')
flags.DEFINE_integer('repeats', 20, 'Timed repetitions (the median is reported).')
FLAGS = flags.FLAGS


def main(_):
  if FLAGS.saved_model:
    predict, _ = export.load_classifier(FLAGS.saved_model)
  else:
    model = lenet5_madry()
    predict = lambda x: model(x, training=False)
  x, y, _ = data_lib.load('mnist_5k').eval_split('test', limit=FLAGS.num_examples)
  x, y = tf.constant(x), tf.constant(y)
  flat = tf.reshape(x, [x.shape[0], -1])
  clean = predict(x)
  ts, ws, bs = [], [], []
  for rank in range(2, 11):
    target = losses.target_by_rank(clean, rank)

    def gap_fn(logits, labels, target=target):  # z_target - z_y: FAB's linearised boundary
      return (tf.gather(logits, target, axis=1, batch_dims=1)
              - tf.gather(logits, labels, axis=1, batch_dims=1))

    gap = gap_fn(clean, y)
    w = tf.reshape(input_gradient(predict, gap_fn, x, y), flat.shape)
    b = tf.reduce_sum(w * flat, axis=1) - gap
    ts.append(tf.concat([flat, flat], 0))
    ws.append(tf.concat([w, w], 0))
    bs.append(tf.concat([b, b], 0))
  ts, ws, bs = tf.stack(ts), tf.stack(ws), tf.stack(bs)
  rows = int(ts.shape[1])
  print(f'{rows} rows x {int(ts.shape[2])} values per projection, 9 problems (target ranks 2..10)')
  for norm in ('Linf', 'L2'):
    @tf.function
    def all_problems(ts, ws, bs, norm=norm):
      def body(i, total):
        d = project_onto_hyperplane_in_box(ts[i], ws[i], bs[i], norm)
        return i + 1, total + tf.reduce_sum(tf.abs(d))
      return tf.while_loop(lambda i, _: i < 9, body, (0, 0.0))[1]

    all_problems(ts, ws, bs).numpy()  # trace
    times = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      all_problems(ts, ws, bs).numpy()
      times.append(time.perf_counter() - start)
    print(f'{norm}: {statistics.median(times) / 9 * 1e3:.2f} ms per projection '
          f'(median of {FLAGS.repeats})')


if __name__ == '__main__':
  app.run(main)

"""Attack-core speed: PGD-40 (Linf) on LeNet5Madry vs 40 plain forward+backward passes.

Prints, per batch size, the median time of one PGD-40 call (tf.function, and with XLA) and of 40
separate forward+backward calls (gradient to the input), and the attack efficiency
  efficiency = (40 x one forward+backward) / attack time.
Run: python bench/bench_attack.py [--batch_sizes=50,256] [--repeats=5]
"""
import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import losses  # noqa: E402
from mma_tf.attacks import input_gradient, pgd  # noqa: E402
from mma_tf.models import lenet5_madry  # noqa: E402

flags.DEFINE_list('batch_sizes', ['50', '256'], 'Batch sizes to time.')
flags.DEFINE_integer('repeats', 5, 'Timed repetitions (the median is reported).')
flags.DEFINE_integer('nb_iter', 40, 'PGD iterations.')
FLAGS = flags.FLAGS


def median_seconds(fn, repeats):
  fn()  # trace / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(_):
  model = lenet5_madry()
  predict = lambda x: model(x, training=False)
  n = FLAGS.nb_iter
  print(f'TF {tf.__version__}, {os.cpu_count()} CPU cores, LeNet5Madry, PGD-{n} Linf eps 0.3')
  print(f'{"batch":>6} {"fwd+bwd x{n}":>12} {"PGD":>8} {"PGD XLA":>8} {"eff":>6} {"eff XLA":>8}'
        .replace('{n}', str(n)))
  for batch in [int(b) for b in FLAGS.batch_sizes]:
    x = tf.random.uniform([batch, 28, 28, 1], seed=0)
    y = tf.random.uniform([batch], 0, 10, tf.int32, seed=1)
    grad_fn = tf.function(lambda x, y: input_gradient(predict, losses.cross_entropy, x, y))

    def forward_backward_n():
      for _ in range(n):
        g = grad_fn(x, y)
      g.numpy()

    attack = lambda x, y: pgd(predict, x, y, 0.3, nb_iter=n, seed=0)
    graph_fn = tf.function(attack)
    xla_fn = tf.function(attack, jit_compile=True)
    t_fb = median_seconds(forward_backward_n, FLAGS.repeats)
    t_pgd = median_seconds(lambda: graph_fn(x, y).numpy(), FLAGS.repeats)
    t_xla = median_seconds(lambda: xla_fn(x, y).numpy(), FLAGS.repeats)
    print(f'{batch:>6} {t_fb:>11.3f}s {t_pgd:>7.3f}s {t_xla:>7.3f}s {t_fb / t_pgd:>6.2f} '
          f'{t_fb / t_xla:>8.2f}')


if __name__ == '__main__':
  app.run(main)

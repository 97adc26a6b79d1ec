"""Evaluation throughput on an exported LeNet5Madry SavedModel, and the evaluator's overhead.

Times the whitebox part of `mma_tf.evaluation.evaluate` (PGD with restarts on the loaded
artifact) and compares it with the same number of bare forward+backward passes of the loaded
SavedModel timed alone:
  overhead = whitebox time / (restarts x iterations x batches x one forward+backward) - 1
Run: python bench/bench_evaluate.py [--num_examples=200] [--nb_restart=4] [--nb_iter=50]
"""
import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import evaluation, export, losses  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402
from mma_tf.models import lenet5_madry  # noqa: E402

flags.DEFINE_integer('num_examples', 200, 'Examples evaluated.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('nb_restart', 4, 'Restarts.')
flags.DEFINE_integer('nb_iter', 50, 'PGD iterations.')
FLAGS = flags.FLAGS


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  path = os.path.join(tempfile.mkdtemp(), 'export')
  export.export_saved_model(lenet5_madry(), path)
  predict, _ = export.load_classifier(path)
  rng = np.random.RandomState(0)
  n, bs = FLAGS.num_examples, FLAGS.batch_size
  x = rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
  y = rng.randint(0, 10, n).astype(np.int32)
  config = evaluation.EvalConfig(norm='Linf', eps=(0.3,), nb_iter=FLAGS.nb_iter,
                                 nb_restart=FLAGS.nb_restart, batch_size=bs, margin_nb_iter=5,
                                 search_steps=2)
  evaluation.evaluate(predict, x[:bs], y[:bs], config)  # trace
  results, _ = evaluation.evaluate(predict, x, y, config)
  t_attack = results['timing']['whitebox_attack_seconds']

  grad = tf.function(lambda x, y: input_gradient(predict, losses.cross_entropy, x, y))
  xb, yb = tf.constant(x[:bs]), tf.constant(y[:bs])
  grad(xb, yb)
  times = []
  for _ in range(20):
    t = time.perf_counter()
    grad(xb, yb).numpy()
    times.append(time.perf_counter() - t)
  t_fb = statistics.median(times)
  passes = FLAGS.nb_restart * FLAGS.nb_iter * (n // bs)
  raw = passes * t_fb
  print(f'LeNet5Madry SavedModel, batch {bs}: one forward+backward {t_fb * 1000:.1f} ms')
  print(f'whitebox: {n} examples x {FLAGS.nb_restart} restarts x {FLAGS.nb_iter} iterations in '
        f'{t_attack:.2f} s = {results["timing"]["whitebox_throughput"]:.0f} '
        f'{results["timing"]["throughput_unit"]}')
  print(f'bare passes: {raw:.2f} s = {n * FLAGS.nb_restart * FLAGS.nb_iter / raw:.0f} per second')
  print(f'evaluator overhead around the attack: {100 * (t_attack / raw - 1):+.1f}% '
        f'(efficiency {raw / t_attack:.2f})')
  print(f'whole evaluate() incl. margins, noise, sanity: {results["timing"]["seconds"]:.2f} s')


if __name__ == '__main__':
  app.run(main)

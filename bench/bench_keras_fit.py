"""fit() against the Trainer: one epoch of `AdversarialModel.fit` and the same number of steps
through the Trainer's compiled step, on the same data, weights and settings, in one process.

  python bench/bench_keras_fit.py [--examples=2000] [--rounds=2]

MMA with the mnist_5k preset (small CNN, batch 50, nb_iter 10, 10 search steps) on the embedded
digits. Both paths are traced before timing (a warm-up step each); each round times the Trainer's
steps (one host sync per step, as `Trainer.train` with steps_per_loop=1) and then one fit()
epoch, and prints their ratio in wall time and in this process's CPU time (all its threads),
which other processes on a shared machine disturb less.
"""
import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import configs, data as data_lib, models  # noqa: E402
from mma_tf import keras as keras_lib  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402
from bench_throughput import cpu_description  # noqa: E402

flags.DEFINE_integer('examples', 2000, 'Training examples (one fit() epoch: examples / 50 steps).')
flags.DEFINE_integer('rounds', 2, 'Timed rounds (Trainer steps, then a fit() epoch, each).')
FLAGS = flags.FLAGS


def main(_):
  digits = data_lib.load('mnist_5k')
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  x, y = digits.train_images[:FLAGS.examples], digits.train_labels[:FLAGS.examples]
  config = configs.resolve('mnist_5k', 'Linf', {'num_validation': 100})
  steps = FLAGS.examples // config.batch_size
  # The Trainer trains on the rows after its validation split; it is given 100 more rows.
  source = data_lib.from_arrays(digits.train_images[:FLAGS.examples + 100],
                                digits.train_labels[:FLAGS.examples + 100], num_validation=100)
  trainer = trainer_lib.Trainer(config, tempfile.mkdtemp(), data=source, log=lambda m: None)
  base = models.build_model(config.model, x.shape[1:], 10)
  base.set_weights(trainer.task.model.get_weights())
  model = keras_lib.AdversarialModel(base, num_examples=FLAGS.examples,
                                     **keras_lib.settings_of(config))
  model.compile(optimizer=trainer_lib.build_optimizer(config))
  print(f'CPU: {cpu_description()}; TF {tf.__version__}; MMA, {config.model}, batch '
        f'{config.batch_size}, nb_iter {config.nb_iter}: {steps} steps per round', flush=True)

  iterator = iter(trainer.task.train_batches(0))
  float(trainer.task.train_step(iterator)['total_loss'])  # traces
  model.fit(x[:2 * config.batch_size], y[:2 * config.batch_size],
            batch_size=config.batch_size, verbose=0)  # traces
  def timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu

  def trainer_steps(epoch):
    iterator = iter(trainer.task.train_batches(epoch))
    for _ in range(steps):
      float(trainer.task.train_step(iterator)['total_loss'])

  ratios = {'wall': [], 'cpu': []}
  print('| round | Trainer ms / step (CPU ms) | fit() ms / step (CPU ms) | fit / Trainer wall | '
        'fit / Trainer CPU |')
  print('|---|---|---|---|---|')
  for r in range(FLAGS.rounds):
    a = timed(lambda: trainer_steps(r + 1))
    b = timed(lambda: model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0))
    ratios['wall'].append(b[0] / a[0])
    ratios['cpu'].append(b[1] / a[1])
    ms = lambda t: f'{1000 * t[0] / steps:.0f} ({1000 * t[1] / steps:.0f})'
    print(f'| {r + 1} | {ms(a)} | {ms(b)} | {ratios["wall"][-1]:.3f} | {ratios["cpu"][-1]:.3f} |',
          flush=True)
  print(f'median fit / Trainer: wall {statistics.median(ratios["wall"]):.3f}, CPU '
        f'{statistics.median(ratios["cpu"]):.3f}')


if __name__ == '__main__':
  app.run(main)

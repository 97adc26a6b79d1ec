"""fit() against the Trainer: one epoch of `AdversarialModel.fit` and the same number of steps
through the Trainer's compiled step, on the same data, weights and settings, in one process.

  python bench/bench_keras_fit.py [--examples=2000] [--rounds=2]

MMA with the mnist_5k preset (small CNN, batch 50, nb_iter 10, 10 search steps) on the embedded
digits. Both paths are traced before timing (a warm-up step each); each round times the Trainer's
steps (one host sync per step, as `Trainer.train` with steps_per_loop=1) and then one fit()
epoch, and prints their ratio. Timings are noisy on a shared machine: compare the ratios.
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
  settings = {k: getattr(config, k) for k, v in keras_lib.SETTINGS.items()
              if getattr(config, k) != v}
  model = keras_lib.AdversarialModel(base, num_examples=FLAGS.examples, **settings)
  model.compile(optimizer=trainer_lib.build_optimizer(config))
  print(f'CPU: {cpu_description()}; TF {tf.__version__}; MMA, {config.model}, batch '
        f'{config.batch_size}, nb_iter {config.nb_iter}: {steps} steps per round', flush=True)

  iterator = iter(trainer.task.train_batches(0))
  float(trainer.task.train_step(iterator)['total_loss'])  # traces
  model.fit(x[:2 * config.batch_size], y[:2 * config.batch_size],
            batch_size=config.batch_size, verbose=0)  # traces
  ratios = []
  print('| round | Trainer ms / step | fit() ms / step | fit / Trainer |')
  print('|---|---|---|---|')
  for r in range(FLAGS.rounds):
    iterator = iter(trainer.task.train_batches(r + 1))
    start = time.perf_counter()
    for _ in range(steps):
      float(trainer.task.train_step(iterator)['total_loss'])
    trainer_s = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)
    fit_s = time.perf_counter() - start
    ratios.append(fit_s / trainer_s)
    print(f'| {r + 1} | {1000 * trainer_s / steps:.0f} | {1000 * fit_s / steps:.0f} | '
          f'{ratios[-1]:.3f} |', flush=True)
  print(f'median fit / Trainer: {statistics.median(ratios):.3f}')


if __name__ == '__main__':
  app.run(main)

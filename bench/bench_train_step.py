"""Training-step cost: MMA vs PGD-AT vs standard, MMA with perturbation memory at nb_iter 1 / 2 /
5 against the faithful MMA step, and MMA against its own passes timed alone.

LeNet5Madry, batch 50, nb_iter 40 (the MNIST Linf preset), on the embedded digits (same shapes as
MNIST). Prints the median step time per objective, the MMA / PGD-AT ratio, the memory steps as
fractions of the faithful step (one run, back to back; a step costs the same whether its rows
hold perturbations or not),
and the MMA step against the sum of the passes it is made of, each timed alone:
  2 x (forward+backward to the weights, train mode)      clean pass and mixed-batch pass
  nb_iter x (forward+backward to the input, eval mode)   PGD inside AN-PGD
  (num_search_steps + 1) x forward                       bisection search
Run: python bench/bench_train_step.py [--steps=10]
"""
import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import configs, data as data_lib, losses  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402

flags.DEFINE_integer('steps', 10, 'Timed steps per objective (median reported).')
flags.DEFINE_string('model', 'lenet5_madry', 'Model.')
FLAGS = flags.FLAGS


def median_call(fn, n):
  fn()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  data = data_lib.load('mnist_5k')
  results = {}
  variants = [('mma', {}), ('pgd_at', {}), ('standard', {})] + [
      (f'mma+memory k={k}', dict(perturbation_memory=True, nb_iter=k)) for k in (1, 2, 5)]
  for name, overrides in variants:
    config = configs.resolve('mnist', 'Linf', dict(objective=name.split('+')[0],
                                                   model=FLAGS.model, **overrides))
    trainer = trainer_lib.Trainer(config, tempfile.mkdtemp(), data=data, log=lambda m: None)
    dataset = data_lib.train_dataset(data, config.batch_size, config.seed, 0)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    trainer.task.train_step(iterator)  # trace
    # The step's outputs are fetched, as the loop does (loss check, progress).
    results[name] = median_call(
        lambda: float(trainer.task.train_step(iterator)['total_loss']), FLAGS.steps)
    print(f'{name:>17} step: {results[name] * 1000:8.1f} ms', flush=True)
  model, c = trainer.task.model, configs.resolve('mnist', 'Linf', dict(model=FLAGS.model))
  x = tf.random.uniform([c.batch_size, 28, 28, 1])
  y = tf.random.uniform([c.batch_size], 0, 10, tf.int32)
  fb_input = tf.function(lambda x, y: input_gradient(lambda v: model(v, training=False),
                                                     losses.soft_logit_margin, x, y))
  fwd = tf.function(lambda x: model(x, training=True))

  @tf.function
  def fb_weights(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(losses.cross_entropy(model(x, training=True), y))
    return tape.gradient(loss, model.trainable_variables)

  t_in = median_call(lambda: fb_input(x, y).numpy(), 20)
  t_fwd = median_call(lambda: fwd(x).numpy(), 20)
  t_w = median_call(lambda: [g.numpy() for g in fb_weights(x, y)], 20)
  parts = 2 * t_w + c.nb_iter * t_in + (c.num_search_steps + 1) * t_fwd
  print(f'passes alone: fwd+bwd(input) {t_in * 1000:.2f} ms, fwd {t_fwd * 1000:.2f} ms, '
        f'fwd+bwd(weights) {t_w * 1000:.2f} ms; MMA sum of passes {parts * 1000:.1f} ms')
  print(f'MMA / PGD-AT step = {results["mma"] / results["pgd_at"]:.3f} (target <= 1.15)')
  print(f'MMA step / sum of its passes = {results["mma"] / parts:.3f} (target <= 1.15)')
  print(f'PGD-AT / standard step = {results["pgd_at"] / results["standard"]:.1f}')
  for k in (1, 2, 5):
    name = f'mma+memory k={k}'
    print(f'{name} / faithful MMA (nb_iter {c.nb_iter}) step = '
          f'{results[name] / results["mma"]:.3f}')


if __name__ == '__main__':
  app.run(main)

"""Training-step cost: every objective's step, each cheaper-MMA lever alone and together as a
fraction of the faithful MMA step, and every step against the sum of the passes it is made of.

LeNet5Madry, batch 50, nb_iter 40 (the MNIST Linf preset), on the embedded digits (same shapes as
MNIST). The levers: the illinois boundary search (--search=illinois: 1 + 3 forwards instead of the
bisection's 1 + 10), the perturbation memory at nb_iter 1 / 2 / 5 (--perturbation_memory), and
both; where the hardware has native bfloat16, the faithful and the memory + illinois steps in
mixed_bfloat16 too (fractions of the float32 faithful step). One run, back to back (a step costs
the same whether its memory rows hold perturbations or not). The passes, each timed alone on the
same batch size (float32):
  fwd+bwd to the weights (train mode)   MMA: clean and mixed-batch pass (OMMA: the mixed only,
                                        its clean pass is a forward); PGD-AT: 1; TRADES: 2
  fwd+bwd to the input (eval mode)      nb_iter, the PGD inside the training attack
  forward                               the search: 1 at the PGD point + num_search_steps (the
                                        bisection's last margin is unused, and TF prunes its
                                        forward on a model without BatchNorm); OMMA's clean
                                        pass; TRADES' clean target
Run: python bench/bench_train_step.py [--steps=10] [--variants=mma,mma+illinois,...]
"""
import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import configs, data as data_lib, losses, precision  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402

# name -> the overrides of the MNIST Linf preset.
VARIANTS = {
    'mma': {},
    'omma': dict(objective='omma'),
    'pgd_at': dict(objective='pgd_at'),
    'trades': dict(objective='trades'),
    'standard': dict(objective='standard'),
    'mma+illinois': dict(search='illinois'),
    **{f'mma+memory k={k}': dict(perturbation_memory=True, nb_iter=k) for k in (1, 2, 5)},
    **{f'mma+memory k={k}+illinois': dict(perturbation_memory=True, nb_iter=k,
                                          search='illinois') for k in (1, 2, 5)},
}
# 16-bit arithmetic (--mixed_precision=mixed_bfloat16), timed by default only where the hardware
# has native bfloat16: elsewhere TF emulates it, slower than float32.
BF16 = ('mma', 'mma+memory k=1+illinois', 'mma+memory k=2+illinois')
BF16_VARIANTS = {f'{name} bf16': dict(VARIANTS[name], mixed_precision='mixed_bfloat16')
                 for name in BF16}
VARIANTS.update(BF16_VARIANTS)
flags.DEFINE_integer('steps', 10, 'Timed steps per variant (median reported).')
flags.DEFINE_string('model', 'lenet5_madry', 'Model.')
flags.DEFINE_list('variants', None, f'Steps to time, of: {", ".join(VARIANTS)}; default all (the '
                  'bf16 ones where the hardware has native bfloat16).')
FLAGS = flags.FLAGS


def median_call(fn, n):
  fn()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def passes(c):
  """(fwd+bwd to the weights, fwd+bwd to the input, forwards) of one step of config c."""
  if c.objective == 'standard':
    return 1, 0, 0
  if c.objective == 'pgd_at':
    return 1, c.nb_iter, 0
  if c.objective == 'trades':
    return 2, c.nb_iter, 1
  search = c.num_search_steps + (1 if c.search == 'illinois' else 0)  # + the PGD point's - pruned
  if c.objective == 'omma':
    return 1, c.nb_iter, search + 1
  return 2, c.nb_iter, search


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  names = FLAGS.variants
  if names is None:
    native = precision.has_native_bfloat16()
    names = [n for n in VARIANTS if native or n not in BF16_VARIANTS]
    print('bfloat16 steps: ' + ('timed (native bfloat16 here)' if native else
                                'left out (no native bfloat16 here; --variants times them)'))
  unknown = set(names) - set(VARIANTS)
  if unknown or not names:
    raise app.UsageError(f'Unknown variants {sorted(unknown)} or none; choose from '
                         f'{list(VARIANTS)}.')
  if set(names) <= set(BF16_VARIANTS):
    raise app.UsageError('Time a float32 variant too: the passes are timed on its model.')
  data = data_lib.load('mnist_5k')
  results, counts = {}, {}
  for name in names:
    config = configs.resolve('mnist', 'Linf', dict(model=FLAGS.model, **VARIANTS[name]))
    trainer = trainer_lib.Trainer(config, tempfile.mkdtemp(), data=data, log=lambda m: None)
    dataset = data_lib.train_dataset(data, config.batch_size, config.seed, 0)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    trainer.task.train_step(iterator)  # trace
    # The step's outputs are fetched, as the loop does (loss check, progress).
    results[name] = median_call(
        lambda: float(trainer.task.train_step(iterator)['total_loss']), FLAGS.steps)
    counts[name] = passes(config)
    if config.mixed_precision == 'float32':
      model = trainer.task.model  # the passes below are timed in float32
    print(f'{name:>26} step: {results[name] * 1000:8.1f} ms', flush=True)
  c = configs.resolve('mnist', 'Linf', dict(model=FLAGS.model))
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
  print(f'passes alone: fwd+bwd(weights) {t_w * 1000:.2f} ms, fwd+bwd(input) {t_in * 1000:.2f} '
        f'ms, fwd {t_fwd * 1000:.2f} ms')
  faithful = results.get('mma')
  print('| step | ms | / faithful MMA | passes: fwd+bwd weights / input, fwd | sum of passes '
        'ms | step / sum |')
  print('|---|---|---|---|---|---|')
  for name, t in results.items():
    w, i, f = counts[name]
    parts = w * t_w + i * t_in + f * t_fwd
    ratio = f'{t / faithful:.3f}' if faithful else '-'
    per_pass = '-' if name in BF16_VARIANTS else f'{t / parts:.3f}'  # passes timed in float32
    print(f'| {name} | {t * 1000:.1f} | {ratio} | {w} / {i} / {f} | {parts * 1000:.1f} | '
          f'{per_pass} |')


if __name__ == '__main__':
  app.run(main)

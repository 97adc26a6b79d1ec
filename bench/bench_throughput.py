"""Training throughput: steps per loop, mixed precision and XLA, against the plain float32 step.

  python bench/bench_throughput.py [--steps=40] [--model=lenet5_madry]

MMA on the embedded digits (MNIST shapes), the mnist_5k preset (batch 50, nb_iter 10). For each
setting: the median time per step over loops of `steps_per_loop` steps (compiled functions
reused; tracing and XLA compilation excluded), and the host syncs per 100 steps of a real
`Trainer.train()` (calls that return to Python, counted). Prints the CPU model and its bf16 flags:
bfloat16 is emulated (slow) on CPUs without avx512_bf16 / amx_bf16.
"""
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import configs, data as data_lib, precision  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402

flags.DEFINE_integer('steps', 40, 'Timed steps per setting.')
flags.DEFINE_string('model', 'lenet5_madry', 'Model.')
flags.DEFINE_list('settings', ['float32', 'float32 spl10', 'float32 xla', 'float32 xla spl10',
                               'mixed_bfloat16 spl10', 'mixed_float16 spl10'],
                  'Settings: precision, then "xla" and/or "splN".')
FLAGS = flags.FLAGS


def cpu_description():
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform.processor() or 'unknown CPU'
  model = next((line.split(':', 1)[1].strip() for line in info.splitlines()
                if line.startswith('model name')), 'unknown CPU')
  flag_set = set(next((line.split(':', 1)[1].split() for line in info.splitlines()
                       if line.startswith('flags')), []))
  wanted = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flag_set]
  return f'{model} ({", ".join(wanted) or "no AVX2"}); {os.cpu_count()} cores'


def parse(setting):
  words = setting.split()
  spl = next((int(w[3:]) for w in words if w.startswith('spl')), 1)
  return dict(mixed_precision=words[0], jit_compile='xla' in words, steps_per_loop=spl)


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  data = data_lib.load('mnist_5k')
  print(f'CPU: {cpu_description()}; TF {tf.__version__}; native bf16: '
        f'{precision.has_native_bfloat16()}', flush=True)
  print('| setting | ms / step | vs float32 | host syncs / 100 steps |')
  print('|---|---|---|---|')
  baseline = None
  for setting in FLAGS.settings:
    fields = parse(setting)
    config = configs.resolve('mnist_5k', 'Linf', dict(model=FLAGS.model, **fields))
    trainer = trainer_lib.Trainer(config, tempfile.mkdtemp(), data=data, log=lambda m: None)
    task, n = trainer.task, fields['steps_per_loop']
    iterator = iter(task.train_batches(0))
    loop = lambda: float(task.train_loop(iterator, tf.constant(n, tf.int64))['total_loss'])
    loop()  # trace (and XLA compile)
    times = []
    for _ in range(max(1, FLAGS.steps // n)):
      t = time.perf_counter()
      loop()
      times.append((time.perf_counter() - t) / n)
    per_step = statistics.median(times)
    baseline = baseline or per_step
    # Host syncs of the real loop: every train_loop call returns to Python once.
    calls = []
    real = trainer_lib.Trainer(
        configs.resolve('mnist_5k', 'Linf', dict(model=FLAGS.model, train_steps=100,
                                                 log_every=50, checkpoint_every=100,
                                                 nb_iter=1, num_search_steps=1, **fields)),
        tempfile.mkdtemp(), data=data, log=lambda m: None)
    inner = real.task.train_loop
    real.task.train_loop = lambda *a: (calls.append(1), inner(*a))[1]
    real.train()
    print(f'| {setting} | {per_step * 1000:.1f} | {per_step / baseline:.2f} | {len(calls)} |',
          flush=True)


if __name__ == '__main__':
  app.run(main)

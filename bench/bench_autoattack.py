"""The standard AutoAttack ensemble on a LeNet5Madry SavedModel: time and model passes per attack.

  python bench/bench_autoattack.py --saved_model=runs/study-Linf/mma-seed0/export

For each attack it counts the forward and forward+backward passes it really made (counters in
the graph, one run), times it in a second, uncounted run, and reports
  efficiency = (fwd x t_fwd + fwd_bwd x t_fwd_bwd) / attack time,
with t_fwd and t_fwd_bwd the per-example cost of one pass of the loaded model timed alone at the
evaluation batch size. 1.0 means the attack costs exactly its model passes.
Without --saved_model it exports an untrained LeNet5Madry (few points then survive APGD-CE).
"""
import os
import platform
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402
from mma_tf import evaluation, export, losses  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402
from mma_tf.evaluation.runner import run_attacks  # noqa: E402
from mma_tf.models import lenet5_madry  # noqa: E402

flags.DEFINE_string('saved_model', None, 'An MNIST SavedModel (default: untrained LeNet5Madry).')
flags.DEFINE_integer('num_examples', 200, 'First N embedded test digits.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_float('eps', 0.3, 'Linf radius.')
FLAGS = flags.FLAGS


def _counting(predict, counts):
  """predict that adds the batch size to counts['fwd'] per forward and to counts['bwd'] per
  backward pass through it (in the graph, so passes inside tf.while_loop are counted)."""

  @tf.custom_gradient
  def mark_backward(x):
    def grad(dy):
      with tf.control_dependencies([counts['bwd'].assign_add(tf.shape(dy, tf.int64)[0])]):
        return tf.identity(dy)
    return tf.identity(x), grad

  def counted(x):
    with tf.control_dependencies([counts['fwd'].assign_add(tf.shape(x, tf.int64)[0])]):
      return predict(mark_backward(x))
  return counted


def _median_time(fn, *args, repeats=20):
  fn(*args)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    tf.nest.map_structure(lambda v: v.numpy(), fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  path = FLAGS.saved_model
  if path is None:
    path = os.path.join(tempfile.mkdtemp(), 'export')
    export.export_saved_model(lenet5_madry(), path)
  predict, _ = export.load_classifier(path)
  n, bs = FLAGS.num_examples, FLAGS.batch_size
  x, y, _ = data_lib.load('mnist_5k').eval_split('test', limit=n)  # float32 in [0, 1]

  xb, yb = tf.constant(x[:bs]), tf.constant(y[:bs])
  t_fwd = _median_time(tf.function(predict), xb) / bs
  t_fb = _median_time(tf.function(
      lambda x, y: input_gradient(predict, losses.cross_entropy, x, y)), xb, yb) / bs

  config = evaluation.EvalConfig(norm='Linf', eps=(FLAGS.eps,), protocol='autoattack',
                                 margin_estimates=(), batch_size=bs)
  counts = {'fwd': tf.Variable(0, dtype=tf.int64), 'bwd': tf.Variable(0, dtype=tf.int64)}
  counted = _counting(predict, counts)
  # Counted run: the attacks alone (no clean pass, noise or sanity checks), in order, each on the
  # points the earlier ones left robust.
  robust = np.argmax(predict(tf.constant(x)).numpy(), 1) == y
  passes = {}
  runner = evaluation.Runner(bs)
  for attack in config.protocol_attacks()['autoattack']:
    for v in counts.values():
      v.assign(0)
    out = run_attacks(runner, counted, [attack], x, y, np.arange(n, dtype=np.int32), FLAGS.eps,
                      robust, config.seed, 10)
    robust = out['robust']
    passes[attack.name] = (int(counts['fwd'].numpy()), int(counts['bwd'].numpy()))
  # Timed run: the ensemble as users run it (the first call traces; evaluate() keeps its compiled
  # functions for the same model and config, so time the second).
  evaluation.evaluate(predict, x[:bs], y[:bs], config)
  t0 = time.perf_counter()
  results, _ = evaluation.evaluate(predict, x, y, config)
  total = time.perf_counter() - t0
  aa = results['protocols']['autoattack']
  cpu = subprocess.run(['bash', '-c', "lscpu | grep 'Model name' | cut -d: -f2"],
                       capture_output=True, text=True).stdout.strip() or platform.processor()
  flags_line = subprocess.run(['bash', '-c', 'grep -o -w -E "avx2|avx512f|avx512_bf16|amx_bf16" '
                               '/proc/cpuinfo | sort -u | tr "\\n" " "'],
                              capture_output=True, text=True).stdout.strip()
  print(f'CPU: {cpu} ({flags_line}); {os.cpu_count()} cores; TF {tf.__version__}')
  print(f'{path}: {n} MNIST test digits, Linf eps {FLAGS.eps:g}, batch {bs}; clean accuracy '
        f'{results["clean_acc"]:.4f}; one pass alone per example: forward {t_fwd * 1e6:.0f} us, '
        f'forward+backward {t_fb * 1e6:.0f} us')
  print('| attack | robust acc after | seconds | forward passes | fwd+bwd passes | efficiency |')
  print('|---|---|---|---|---|---|')
  key = f'{FLAGS.eps:g}'
  for name in evaluation.AUTOATTACK:
    fwd, bwd = passes[name]
    # Every backward pass comes with its forward: count those as fwd+bwd, the rest as forwards.
    ideal = (fwd - bwd) * t_fwd + bwd * t_fb
    seconds = aa['seconds'][name]
    print(f'| {name} | {aa["acc_after"][key][name]:.4f} | {seconds:.2f} | {fwd - bwd:,} | '
          f'{bwd:,} | {ideal / max(seconds, 1e-9):.2f} |')
  print(f'whole evaluate() (clean pass, four attacks, noise and sanity checks): {total:.1f} s')


if __name__ == '__main__':
  app.run(main)

"""AutoAttack's standard ensemble, and the fast protocol, on a SavedModel: time and model passes
per attack, and fast's verdict against AutoAttack's on the same points.

  python bench/bench_autoattack.py --saved_model=runs/study-Linf/mma-seed0/export
  python bench/bench_autoattack.py --saved_model=DIR --norm=L2 --eps=2 --protocols=autoattack,fast

Each protocol's attacks run twice, in order, each on the points the earlier ones left robust; the
first run traces every function, the second reuses them (as evaluate() does for the same model and
config). With both protocols, the last lines compare them: robust accuracy, attack seconds of the
timed runs and the points on which the verdicts differ (fast's goal: none it leaves robust that
AutoAttack breaks). Counters in the graph record the forward and forward+backward passes each
attack really made, per batch size, and the script reports
  efficiency = sum over batch sizes b of (fwd_b x t_fwd(b) + fwd_bwd_b x t_fwd_bwd(b)) / attack time
with t_fwd(b) and t_fwd_bwd(b) the mean time of one pass of the loaded model on a batch of b,
called alone. This shared machine's speed swings by 15% or more from one second to the next (the
median of 20 passes at batch 100 ranged over 49-67 ms within a minute), so those passes are not
timed once: after every compiled call of the timed run (one chunk of one attack stage), the
script times passes alone at that call's batch size for a tenth of the call's duration, and
leaves that time out of the attack's seconds. 1.0 means the attack costs exactly its model
passes. Compaction pads each chunk to the next of a few bucket sizes; padded rows are passes the
model really makes, so they count.
Without --saved_model it exports an untrained LeNet5Madry (few points then survive APGD-CE).
"""
import collections
import os
import platform
import subprocess
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import mma_tf  # noqa: E402,F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
import tensorflow as tf  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402
from mma_tf import evaluation, export, losses  # noqa: E402
from mma_tf.attacks import input_gradient  # noqa: E402
from mma_tf.evaluation import fast, sanity  # noqa: E402
from mma_tf.evaluation.runner import run_attacks  # noqa: E402
from mma_tf.models import lenet5_madry  # noqa: E402

flags.DEFINE_string('saved_model', None, 'A SavedModel (default: untrained LeNet5Madry).')
flags.DEFINE_string('dataset', 'mnist_5k', 'Test data, as mma-evaluate --dataset.')
flags.DEFINE_integer('num_examples', 200, 'First N test examples.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_float('eps', 0.3, 'Radius.')
flags.DEFINE_string('protocols', 'autoattack', "Protocols to run, e.g. 'autoattack,fast'.")
flags.DEFINE_integer('fast_n_target_classes', evaluation.EvalConfig.fast_n_target_classes,
                     'The fast protocol: MALT targets per ranking.')
flags.DEFINE_integer('fast_square_queries', evaluation.EvalConfig.fast_square_queries,
                     "The fast protocol: Square's short budget.")
flags.DEFINE_float('fast_square_continue_below', evaluation.EvalConfig.fast_square_continue_below,
                   "The fast protocol: Square's per-point continuation threshold.")
FLAGS = flags.FLAGS


def _counting(predict, counts):
  """predict that adds 1 to counts['fwd'][b] per forward and to counts['bwd'][b] per backward
  pass through it on a batch of b (in the graph, so passes inside tf.while_loop are counted)."""

  def count(name, batch):
    return counts[name].scatter_nd_add(tf.reshape(tf.shape(batch)[0], [1, 1]),
                                       tf.ones([1], tf.int64))

  @tf.custom_gradient
  def mark_backward(x):
    def grad(dy):
      with tf.control_dependencies([count('bwd', dy)]):
        return tf.identity(dy)
    return tf.identity(x), grad

  def counted(x):
    with tf.control_dependencies([count('fwd', x)]):
      return predict(mark_backward(x))
  return counted


def _seconds(fn, *args):
  start = time.perf_counter()
  tf.nest.map_structure(lambda v: v.numpy(), fn(*args))
  return time.perf_counter() - start


class _SamplingRunner(evaluation.Runner):
  """A Runner that, while `sample` is on, times passes alone after each compiled call at that
  call's batch size, for a tenth of the call's duration (at least 4 of each kind), so every
  stretch of an attack is sampled in proportion to its length: pass_seconds[(kind, b)] collects
  them, and sampling_seconds the time they took (to leave out of the attack's own time)."""

  def __init__(self, batch_size, passes, fraction=0.1, min_repeats=4):
    super().__init__(batch_size)
    self.passes, self.fraction, self.min_repeats, self.sample = passes, fraction, min_repeats, False
    self.pass_seconds, self.sampling_seconds = collections.defaultdict(list), 0.0

  def _compile(self, key, fn):
    step = super()._compile(key, fn)

    def step_then_sample(args):
      start = time.perf_counter()
      out = [v.numpy() for v in step(args)]  # the attack's call ends here
      if self.sample:
        call = time.perf_counter() - start
        start, b, repeats = time.perf_counter(), len(out[0]), 0
        while repeats < self.min_repeats or time.perf_counter() - start < self.fraction * call:
          for kind, (pass_fn, batch) in self.passes(b).items():
            self.pass_seconds[kind, b].append(_seconds(pass_fn, *batch))
          repeats += 1
        self.sampling_seconds += time.perf_counter() - start
      return out
    return step_then_sample


def main(_):
  tf.get_logger().setLevel('ERROR')
  logging.set_verbosity(logging.WARNING)
  path = FLAGS.saved_model
  if path is None:
    path = os.path.join(tempfile.mkdtemp(), 'export')
    export.export_saved_model(lenet5_madry(), path)
  predict, _ = export.load_classifier(path)
  n, bs = FLAGS.num_examples, FLAGS.batch_size
  x, y, _ = data_lib.load(FLAGS.dataset).eval_split('test', limit=n)  # float32 in [0, 1]

  forward = tf.function(predict)
  forward_backward = tf.function(lambda x, y: input_gradient(predict, losses.cross_entropy, x, y))
  batches = {}

  def passes_alone(b):
    """{kind: (function, args)}: one forward, one forward+backward pass on a batch of b."""
    if b not in batches:
      batches[b] = (tf.constant(x[np.arange(b) % n]), tf.constant(y[np.arange(b) % n]))
      forward(batches[b][0]), forward_backward(*batches[b])  # trace outside any timing
    return {'fwd': (forward, batches[b][:1]), 'fwd+bwd': (forward_backward, batches[b])}

  config = evaluation.EvalConfig(norm=FLAGS.norm, eps=(FLAGS.eps,), protocol=FLAGS.protocols,
                                 margin_estimates=(), batch_size=bs,
                                 fast_n_target_classes=FLAGS.fast_n_target_classes,
                                 fast_square_queries=FLAGS.fast_square_queries,
                                 fast_square_continue_below=FLAGS.fast_square_continue_below)
  checks = sanity.model_checks(predict, x[:bs], y[:bs])  # the fast protocol's Square reads them
  counts = {k: tf.Variable(tf.zeros([bs + 1], tf.int64)) for k in ('fwd', 'bwd')}
  counted = _counting(predict, counts)
  clean_logits = predict(tf.constant(x))
  start_robust = evaluation.common.is_correct(clean_logits, y).numpy()
  runner = _SamplingRunner(bs, passes_alone)
  index = np.arange(n, dtype=np.int32)

  def ensemble(protocol, attacks):
    """The attacks alone (no clean pass, noise or sanity checks), in order, each on the points
    the earlier ones left robust (the fast protocol's Square continued where its budget rule
    says so): per attack, passes per batch size, seconds, robust accuracy and (while
    runner.sample is on) the mean seconds of one pass alone per kind and batch size; and the
    final robust set."""
    robust, passes, seconds, acc, alone = start_robust, {}, {}, {}, {}
    for attack in attacks:
      for v in counts.values():
        v.assign(tf.zeros_like(v))
      runner.pass_seconds.clear()
      runner.sampling_seconds = 0.0
      out = run_attacks(runner, counted, [attack], x, y, index, FLAGS.eps, robust, config.seed,
                        clean_logits.shape[-1], checks=checks)
      if 'square_queries' in out['facts'][0]:
        squares[protocol] = (out['facts'][0]['square_queries'], out['facts'][0]['square_reason'])
      robust = out['robust']
      passes[attack.name] = (counts['fwd'].numpy(), counts['bwd'].numpy())
      seconds[attack.name] = out['seconds'][0] - runner.sampling_seconds
      acc[attack.name] = out['acc_after'][0]
      alone[attack.name] = {k: np.mean(v) for k, v in runner.pass_seconds.items()}
    return passes, seconds, acc, alone, robust

  # The first run traces every function; the second meets the same points and bucket sizes and
  # reuses them, as evaluate() does for the same model and config. The counters cost one
  # scatter-add per pass (microseconds against milliseconds), so both runs are counted.
  squares, tables, robust_sets = {}, {}, {}
  for protocol, attacks in config.protocol_attacks().items():
    runner.sample = False
    passes, first_seconds, _, _, _ = ensemble(protocol, attacks)
    runner.sample = True
    passes_again, seconds, acc, alone, robust_sets[protocol] = ensemble(protocol, attacks)
    for name in passes:
      if any((a != b).any() for a, b in zip(passes[name], passes_again[name])):
        raise SystemExit(f'{name} made different passes in its two runs: not deterministic?')
    tables[protocol] = (attacks, passes, first_seconds, seconds, acc, alone)
  cpu = subprocess.run(['bash', '-c', "lscpu | grep 'Model name' | cut -d: -f2"],
                       capture_output=True, text=True).stdout.strip() or platform.processor()
  flags_line = subprocess.run(['bash', '-c', 'grep -o -w -E "avx2|avx512f|avx512_bf16|amx_bf16" '
                               '/proc/cpuinfo | sort -u | tr "\\n" " "'],
                              capture_output=True, text=True).stdout.strip()
  print(f'CPU: {cpu} ({flags_line}); {os.cpu_count()} cores; TF {tf.__version__}')
  print(f'{path}: {n} {FLAGS.dataset} test images, {FLAGS.norm} eps {FLAGS.eps:g}, batch {bs}; '
        f'clean accuracy {start_robust.mean():.4f}')
  total = {}
  for protocol, (attacks, passes, first_seconds, seconds, acc, alone) in tables.items():
    print(f'\n{protocol}' + (f' (not standard AutoAttack; Square: {squares[protocol][0]} queries'
                              f'{", " + squares[protocol][1] if squares[protocol][1] else ""})'
                              if protocol == 'fast' else ''))
    print('| attack | robust acc after | seconds (traced) | seconds (first call) | forward passes '
          '| fwd+bwd passes | one pass alone, mean ms: fwd / fwd+bwd | efficiency |')
    print('|---|---|---|---|---|---|---|---|')
    for attack in attacks:
      name = attack.name
      (fwd, bwd), t = passes[name], alone[name]
      sizes = sorted({b for _, b in t})
      # Every backward pass comes with its forward: count those as fwd+bwd, the rest as forwards.
      ideal = sum((fwd[b] - bwd[b]) * t['fwd', b] + bwd[b] * t['fwd+bwd', b] for b in sizes)
      ms = ', '.join(f"b={b}: {t['fwd', b] * 1e3:.1f} / {t['fwd+bwd', b] * 1e3:.1f}"
                     for b in sizes)
      print(f'| {name} | {acc[name]:.4f} | {seconds[name]:.2f} | {first_seconds[name]:.2f} | '
            f'{int((fwd - bwd).sum()):,} | {int(bwd.sum()):,} | {ms} | '
            f'{ideal / max(seconds[name], 1e-9):.2f} |')
    total[protocol] = sum(seconds.values())
    print(f'{protocol}, all attacks: {total[protocol]:.1f} s traced, '
          f'{sum(first_seconds.values()):.1f} s on the first call (tracing included)')
  if {'autoattack', 'fast'} <= set(robust_sets):
    aa, f = robust_sets['autoattack'], robust_sets['fast']
    diff = fast.compare(aa[None], f[None], ['eps'])['eps']
    print(f'\nfast vs AutoAttack on the same {n} points: robust accuracy {f.mean():.4f} vs '
          f'{aa.mean():.4f}; attack seconds {total["fast"]:.1f} vs {total["autoattack"]:.1f} '
          f'({total["fast"] / max(total["autoattack"], 1e-9):.3f} of AutoAttack\'s); robust under '
          f'fast but broken by AutoAttack: {diff["broken_only_by_autoattack"] or "none"}; broken '
          f'only by fast: {diff["broken_only_by_fast"] or "none"}')
    # The load-free cost: passes, a fwd+bwd pass weighted by its measured cost in forwards.
    weights = [alone[('fwd+bwd', b)] / alone[('fwd', b)]
               for _, _, _, _, _, per_attack in tables.values() for alone in per_attack.values()
               for kind, b in alone if kind == 'fwd' and ('fwd+bwd', b) in alone]
    r = float(np.median(weights))
    cost = {p: sum(int((fwd - bwd).sum()) + r * int(bwd.sum()) for fwd, bwd in passes.values())
            for p, (_, passes, *_) in tables.items()}
    print(f'model passes in forward-pass units (one fwd+bwd = {r:.2f} forwards, measured here): '
          f'fast {cost["fast"]:,.0f} vs AutoAttack {cost["autoattack"]:,.0f} '
          f'({cost["fast"] / cost["autoattack"]:.3f} of AutoAttack\'s)')


if __name__ == '__main__':
  app.run(main)

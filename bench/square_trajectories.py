"""Square's margin, query by query, on the points AutoAttack's gradient attacks leave robust.

  python bench/square_trajectories.py record --saved_model=DIR --report=DIR/eval --eps=0.3 \
      --num_examples=500 --out=DIR/square_trajectories.npz [--dataset=mnist_5k --norm=Linf]
  python bench/square_trajectories.py summarize NAME=FILE.npz ...

`record` reads an AutoAttack report of the model (`mma-evaluate --protocol=autoattack[,...]`,
its per_example.npz) for the points APGD-CE left robust, and runs AutoAttack's Square on them,
with the evaluator's seeds, in pieces resumed from one another (`square_search(resume=...)`: bit
for bit one full run), keeping each point's best margin (z_y - max_{j != y} z_j; <= 0 once
broken) after every piece. Points that APGD-T or FAB-T broke in the report are kept (with the
attack that broke them): where Square breaks them too, it shows how a late Square break looks,
and a cheaper protocol whose targeted attacks miss them needs Square to find them. It checks that
on the points the report's Square ran on, it breaks the ones the report's Square broke.

`summarize` prints, per model, the points still searching after the fast protocol's prefix
(`--prefix` queries) split into those Square breaks later and those it never breaks, with what
the search looked like at the prefix: the margin left as a fraction of the margin at Square's
initial point, its fall over the last half of the prefix, and how many points of each kind the
rule `--continue_below` continues. The fast protocol's continuation
rule (mma_tf.evaluation.fast) was chosen from these tables (docs/autoattack.md 6).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

# Margins are recorded after these iterations: dense where the window schedule changes
# (attacks/square_attack.P_BOUNDARIES), then every 250.
CHECKPOINTS = (1, 5, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1250, 1500,
               1750, 2000, 2250, 2500, 2750, 3000, 3250, 3500, 3750, 4000, 4250, 4500, 4750, 5000)


def record(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string('saved_model', None, 'SavedModel to attack.')
  flags.DEFINE_string('report', None, 'Directory of an AutoAttack report of it (per_example.npz).')
  flags.DEFINE_string('dataset', 'mnist_5k', 'Dataset (as mma-evaluate).')
  flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
  flags.DEFINE_float('eps', 0.3, 'Radius (one of the report\'s).')
  flags.DEFINE_integer('num_examples', 500, 'First N test examples (as the report).')
  flags.DEFINE_integer('batch_size', 100, 'Batch size.')
  flags.DEFINE_integer('seed', 0, 'The evaluator seed (as the report).')
  flags.DEFINE_string('out', None, 'Output .npz.')
  flags.mark_flags_as_required(['saved_model', 'report', 'out'])
  f = flags.FLAGS
  f(argv)
  import mma_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mma_tf import data as data_lib, export  # pylint: disable=import-outside-toplevel
  from mma_tf.attacks import get_attack  # pylint: disable=import-outside-toplevel
  from mma_tf.attacks.square_attack import square_search  # pylint: disable=import-outside-toplevel
  from mma_tf.evaluation.common import stream_example_seeds  # pylint: disable=import-outside-toplevel

  tf.get_logger().setLevel('ERROR')
  report = np.load(os.path.join(f.report, 'per_example.npz'))
  e_i = int(np.argmin(np.abs(report['eps'] - f.eps)))
  if abs(report['eps'][e_i] - f.eps) > 1e-6:
    sys.exit(f'eps {f.eps} is not in the report (it has {report["eps"].tolist()}).')
  names = list(report['autoattack_attack_names'])
  square_index = names.index('square')
  broken_by = report['autoattack_broken_by'][e_i]
  points = np.flatnonzero(report['clean_correct'] & (broken_by != names.index('apgd-ce')))
  predict, _ = export.load_classifier(f.saved_model)
  x, y, _ = data_lib.load(f.dataset).eval_split('test', limit=f.num_examples)
  if len(y) != len(broken_by):
    sys.exit(f'The report has {len(broken_by)} points, --num_examples {len(y)}.')
  @tf.function
  def trajectory(xb, yb, index):
    """Square's margins after each checkpoint [B, checkpoints], its queries [B] and the margin at
    its initial point [B] (what the fast protocol's continuation rule compares with)."""
    # The evaluator's Square seeds: Square's stream, stage 0, keyed by the position.
    seeds = stream_example_seeds(f.seed, get_attack('square', f.norm).stream, index, 0)
    state, done, margins = None, 0, []
    for n in CHECKPOINTS:
      state = square_search(predict, xb, yb, f.eps, norm=f.norm, n_queries=n, seed=seeds,
                            resume=None if state is None else (done, state))
      done = n
      margins.append(state.margin)
    return tf.stack(margins, 1), state.queries, state.start_margin

  margins = np.zeros((len(points), len(CHECKPOINTS)), np.float32)
  queries = np.zeros(len(points), np.int32)
  start = np.zeros(len(points), np.float32)
  for lo in range(0, len(points), f.batch_size):
    p = points[lo:lo + f.batch_size]
    padded = np.concatenate([p, np.repeat(p[:1], f.batch_size - len(p))])  # one trace
    m, q, s = trajectory(tf.constant(x[padded]), tf.constant(y[padded]),
                         tf.constant(padded.astype(np.int32)))
    margins[lo:lo + len(p)], queries[lo:lo + len(p)] = m.numpy()[:len(p)], q.numpy()[:len(p)]
    start[lo:lo + len(p)] = s.numpy()[:len(p)]
    print(f'{lo + len(p)}/{len(points)} points', flush=True)
  broken = margins[:, -1] <= 0
  ran = (broken_by[points] < 0) | (broken_by[points] == square_index)  # in the report's Square
  expected = broken_by[points] == square_index
  if not np.array_equal(broken[ran], expected[ran]):
    sys.exit(f'Square broke {points[ran & broken].tolist()} here, the report '
             f'{points[expected].tolist()}.')
  np.savez_compressed(f.out, points=points, margins=margins, queries=queries, start_margin=start,
                      checkpoints=np.array(CHECKPOINTS), labels=y[points], eps=f.eps,
                      norm=f.norm, saved_model=f.saved_model,
                      broken_by=np.array(names + ['none'])[broken_by[points]])
  print(f'{len(points)} points, Square broke {broken.sum()}: {f.out}')


def summarize(argv):
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser()
  parser.add_argument('models', nargs='+', help='NAME=FILE.npz')
  parser.add_argument('--prefix', type=int, default=1000)
  parser.add_argument('--continue_below', type=float, default=None,
                      help='The rule: continue the points whose margin left is at most this '
                      '(default: the fast protocol\'s, EvalConfig.fast_square_continue_below).')
  opts = parser.parse_args(argv[1:])
  if opts.continue_below is None:
    from mma_tf.evaluation import EvalConfig  # pylint: disable=import-outside-toplevel
    opts.continue_below = EvalConfig.fast_square_continue_below
  print('| model | points | broken by Square (<= prefix / later) | still searching at the prefix, '
        'never broken | later-broken: margin left at the prefix | never broken: margin left '
        '(percentiles 0 / 5 / 50) | later-broken: fall over the prefix\'s last half | never '
        'broken: fall (percentiles 100 / 95 / 50) | continued by the rule: later-broken / never '
        'broken |')
  print('|---' * 9 + '|')
  for item in opts.models:
    name, path = item.split('=', 1)
    d = np.load(path)
    c = list(d['checkpoints'])
    at, half, first = c.index(opts.prefix), c.index(opts.prefix // 2), 0
    m = d['margins']
    broken = m[:, -1] <= 0
    early = m[:, at] <= 0
    later = broken & ~early
    never = ~broken
    # The margin at the initial point (recorded since the rule reads it; older files: after the
    # first iteration, which is at most that, so their fractions are at least the rule's).
    start = d['start_margin'] if 'start_margin' in d.files else m[:, first]
    left = m[:, at] / start
    fall = (m[:, half] - m[:, at]) / start
    rule = left <= opts.continue_below
    pct = lambda v, qs: ' / '.join(f'{np.percentile(v, q):.3f}' for q in qs) if v.size else '-'
    vals = lambda v: ', '.join(f'{a:.3f}' for a in v) or '-'
    print(f'| {name} | {len(m)} | {early.sum()} / {later.sum()} | {never.sum()} | '
          f'{vals(left[later])} | {pct(left[never], (0, 5, 50))} | {vals(fall[later])} | '
          f'{pct(fall[never], (100, 95, 50))} | {(rule & later).sum()} of {later.sum()} / '
          f'{(rule & never).sum()} of {never.sum()} |')


if __name__ == '__main__':
  {'record': record, 'summarize': summarize}[sys.argv[1]](sys.argv[1:])

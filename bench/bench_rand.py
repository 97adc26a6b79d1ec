"""What AutoAttack's rand version (APGD with EOT) finds on a model with randomness at inference
that single-draw attacks miss.

  python bench/bench_rand.py [--norm=Linf] [--points=64]

The model is the tests' NoisyLinearProblem: linear logits with known per-point margins, plus a
small term oscillating fast in the input with a fresh random phase at every call. Predictions
barely move (the noise shifts logits by ~0.05), but one call's input gradient is mostly noise;
its mean over calls is the linear model's. At a radius between the margins, the truth is known:
a point is breakable iff its margin is below eps. Prints the robust accuracy after each attack of
  - rand: the rand version (APGD-CE, APGD-DLR; 100 iterations, 20 gradient passes per step);
  - rand, eot_iter=1: the same attacks with one pass per step (single draws);
  - rand, eot_iter=1, 2000 iterations: single draws with as many passes as EOT spends;
  - standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square at the standard budgets).
"""
import os
import sys
import time

from absl import app, flags

import mma_tf  # noqa: F401  (before TensorFlow: CPU kernels)
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from helpers import NoisyLinearProblem  # noqa: E402
from mma_tf import evaluation  # noqa: E402

flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_integer('points', 64, 'Evaluation points.')
F = flags.FLAGS


def main(_):
  tf.random.set_seed(0)  # the model's own noise
  p = NoisyLinearProblem(F.norm, 10, batch=F.points, max_margin=0.3 if F.norm == 'Linf' else 0.8)
  eps = float(np.median(p.margin))
  key = f'{eps:g}'
  print(f'{F.norm}, {F.points} points, eps {eps:.4f}: truth (margin > eps) '
        f'{np.mean(p.margin > eps):.4f}')
  runs = {'rand': dict(protocol='rand'),
          'rand, eot_iter=1': dict(protocol='rand', eot_iter=1),
          'rand, eot_iter=1, 2000 iterations': dict(protocol='rand', eot_iter=1,
                                                     apgd_nb_iter=2000),
          'standard AutoAttack': dict(protocol='autoattack')}
  for name, kw in runs.items():
    config = evaluation.EvalConfig(norm=F.norm, eps=(eps,), batch_size=F.points,
                                   margin_estimates=(), **kw)
    start = time.time()
    results, _ = evaluation.evaluate(p.predict, p.x, p.y, config)
    (protocol, r), = results['protocols'].items()
    after = ', '.join(f'{a} {v:.4f}' for a, v in r['acc_after'][key].items())
    print(f'{name}: clean {results["clean_acc"]:.4f}, {after} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
  app.run(main)

"""Why perturbation memory can lose robustness: its training attack against the faithful one, on
the same model, the same examples and the same eps0.

  python docs/study/memory_diagnosis.py --run=runs/cheaper/fmnist/memory-k1-seed0 [--examples=2000]

Restores a run of `cheaper_robustness.py` with --perturbation_memory (its last checkpoint: the
model, the eps memory and the stored perturbations) and, on its first N training examples that
are SLM-correct (the ones MMA attacks), compares:
- how stale the stored starts are: the share still adversarial (SLM >= 0) at the current weights,
  and their norm against the eps0 the next visit starts from;
- the run's own training attack (AN-PGD from the stored start, the run's nb_iter, step and
  search) with the faithful attack (AN-PGD from a random start, nb_iter 10, the released step and
  bisection), from the same eps0, both on eval-mode predictions (the study's models have no
  BatchNorm, so the search's BN mode does not matter): the eps each returns, how often the
  memory attack finds no success where the faithful one does, and how often each puts the
  example at or above d_max (out of the hinge, so out of the loss);
- both per class.
Prints one table.
"""
import argparse
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', required=True, help='a run directory (config.json, checkpoints)')
  parser.add_argument('--examples', type=int, default=2000)
  parser.add_argument('--faithful_nb_iter', type=int, default=10)
  opts = parser.parse_args()

  import mma_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mma_tf import configs, data as data_lib, losses  # pylint: disable=import-outside-toplevel
  from mma_tf import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  from mma_tf.attacks import anpgd, example_seeds  # pylint: disable=import-outside-toplevel
  tf.get_logger().setLevel('ERROR')

  with open(os.path.join(opts.run, 'config.json')) as f:
    record = json.load(f)
  fields = configs.flat_record(record['config'])
  config = configs.build(fields)
  if not config.perturbation_memory:
    raise SystemExit(f'{opts.run} trained without --perturbation_memory: nothing to diagnose.')
  # The run's data (an npz at the path it trained from); resuming restores its validation split.
  data = data_lib.load(config.dataset, num_validation=config.num_validation)
  trainer = trainer_lib.Trainer(config, opts.run, data=data, log=lambda m: None)
  step = trainer.restore()
  task = trainer.task
  model = task.model
  index = data.train_indices[:opts.examples].astype(np.int32)
  images = np.asarray(data.train_images[index], np.float32)
  images = images / 255.0 if data.pixels == 'uint8' else images
  labels = data.train_labels[index].astype(np.int32)
  eps_memory = task.eps_memory.numpy()[index]
  stored = task.perturbation_memory.stored().numpy()[index]
  known = task.perturbation_memory.known.numpy()[index]
  predict = lambda x: tf.cast(model(x, training=False), tf.float32)
  slm = lambda x, y: losses.soft_logit_margin(predict(x), y)

  rows = []
  for lo in range(0, len(index), 100):
    sl = slice(lo, lo + 100)
    x, y = tf.constant(images[sl]), tf.constant(labels[sl])
    correct = slm(x, y).numpy() < 0
    eps0 = np.maximum(eps_memory[sl], config.attack_mineps).astype(np.float32)
    delta = stored[sl]
    still = slm(tf.clip_by_value(x + delta, 0, 1), y).numpy() >= 0
    norm = np.abs(delta).reshape(len(delta), -1).max(1) if config.norm == 'Linf' else \
        np.linalg.norm(delta.reshape(len(delta), -1), axis=1)
    seeds = example_seeds([config.seed, 10**6 + step], index[sl])
    common = dict(maxeps=config.maxeps, norm=config.norm, seed=seeds, mask=tf.constant(correct),
                  released_quirks=config.released_quirks)
    _, eps_memory_attack = anpgd(predict, x, y, eps0, nb_iter=config.nb_iter,
                                 eps_iter_scale=config.eps_iter_scale, search=config.search,
                                 num_search_steps=config.num_search_steps,
                                 warm_start=(tf.constant(delta), tf.constant(known[sl])),
                                 **common)
    _, eps_faithful = anpgd(predict, x, y, eps0, nb_iter=opts.faithful_nb_iter, **common)
    rows.append(dict(correct=correct, known=known[sl], still=still, norm=norm, eps0=eps0,
                     memory=eps_memory_attack.numpy(), faithful=eps_faithful.numpy(),
                     label=labels[sl]))
  r = {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}
  sel = r['correct'] & r['known']
  d_max, maxeps = config.hinge_maxeps, config.maxeps
  print(f'{opts.run} at step {step}: {sel.sum()} of {len(index)} examples SLM-correct with a '
        f'stored perturbation; d_max {d_max:g}; memory attack nb_iter {config.nb_iter}, step '
        f'{config.eps_iter_scale:g} x eps / nb_iter; faithful: nb_iter {opts.faithful_nb_iter}, '
        'step 2.5 x eps / nb_iter, random start')

  def summary(m):
    mem, full = r['memory'][m], r['faithful'][m]
    none = lambda e: e > maxeps - (maxeps - r['eps0'][m]) / 2**9 - 1e-7
    return (f'{m.sum()} | {r["still"][m].mean():.1%} | {np.mean(r["norm"][m] / r["eps0"][m]):.2f}'
            f' | {mem.mean():.4f} / {full.mean():.4f} | {np.mean(mem - full):+.4f} | '
            f'{np.mean(none(mem) & ~none(full)):.1%} / {np.mean(none(full) & ~none(mem)):.1%} | '
            f'{np.mean(mem >= d_max):.1%} / {np.mean(full >= d_max):.1%}')

  print('| class | examples | stored start still adversarial | stored norm / eps0 | mean eps: '
        'memory / faithful attack | memory - faithful | no success only for: memory / faithful '
        '| at or above d_max: memory / faithful |')
  print('|---' * 8 + '|')
  print(f'| all | {summary(sel)} |')
  for c in range(int(r['label'].max()) + 1):
    print(f'| {c} | {summary(sel & (r["label"] == c))} |')


if __name__ == '__main__':
  main()

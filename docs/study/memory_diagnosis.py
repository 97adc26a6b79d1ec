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
- on the examples the memory attack loses (no success where the faithful attack has one), how
  often other attacks a fix could use succeed (RESTARTS): one iteration from a random start (a
  refreshed start) or from x with a step of the whole radius (FGSM's vertex in Linf), and 2 or 5
  iterations from the stored or a random start;
- both per class.
Prints two tables.
"""
import argparse
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402


# Attacks tried on the examples the memory attack loses: (nb_iter, step as a multiple of eps0
# (eps_iter_scale), start). 'zero' with step 1 is FGSM's vertex in Linf; 'stored' with 2 / 5
# iterations is what the memory rows nb_iter 2 / 5 would run.
RESTARTS = {
    'random-1': (1, 0.5, 'random'),
    'zero-1': (1, 1.0, 'zero'),
    'stored-2': (2, 1.0, 'stored'),
    'stored-5': (5, 2.5, 'stored'),
    'random-5': (5, 2.5, 'random'),
}


def diagnose(run, examples=2000, faithful_nb_iter=10, data=None):
  """Per example of `run`'s first `examples` training examples: the measurements the tables
  summarise (arrays keyed by name), `none` (no success up to maxeps, per attack), and the run's
  step and configuration. data: the run's data source (default: loaded as the run names it)."""
  import mma_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mma_tf import configs, data as data_lib, losses  # pylint: disable=import-outside-toplevel
  from mma_tf import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  from mma_tf.attacks import anpgd, example_seeds  # pylint: disable=import-outside-toplevel
  tf.get_logger().setLevel('ERROR')

  with open(os.path.join(run, 'config.json')) as f:
    record = json.load(f)
  fields = configs.flat_record(record['config'])
  config = configs.build(fields)
  if not config.perturbation_memory:
    raise SystemExit(f'{run} trained without --perturbation_memory: nothing to diagnose.')
  # The run's data (an npz at the path it trained from); resuming restores its validation split.
  data = data or data_lib.load(config.dataset, num_validation=config.num_validation)
  trainer = trainer_lib.Trainer(config, run, data=data, log=lambda m: None)
  step = trainer.restore()
  task = trainer.task
  model = task.model
  index = data.train_indices[:examples].astype(np.int32)
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
    stored_start = (tf.constant(delta), tf.constant(known[sl]))
    common = dict(maxeps=config.maxeps, norm=config.norm, seed=seeds, mask=tf.constant(correct),
                  released_quirks=config.released_quirks)
    _, eps_memory_attack = anpgd(predict, x, y, eps0, nb_iter=config.nb_iter,
                                 eps_iter_scale=config.eps_iter_scale, search=config.search,
                                 num_search_steps=config.num_search_steps,
                                 warm_start=stored_start, **common)
    _, eps_faithful = anpgd(predict, x, y, eps0, nb_iter=faithful_nb_iter, **common)
    # Other starts and strengths a fix could take (their passes: nb_iter fwd+bwd to the input).
    extra = {}
    for name, (nb_iter, scale, start) in RESTARTS.items():
      _, extra[name] = anpgd(
          predict, x, y, eps0, nb_iter=nb_iter, eps_iter_scale=scale, rand_init=start == 'random',
          warm_start=stored_start if start == 'stored' else None,
          search=config.search, num_search_steps=config.num_search_steps, **common)
    rows.append(dict(correct=correct, known=known[sl], still=still, norm=norm, eps0=eps0,
                     memory=eps_memory_attack.numpy(), faithful=eps_faithful.numpy(),
                     label=labels[sl], **{k: v.numpy() for k, v in extra.items()}))
  r = {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}
  # No success up to maxeps: the search's bracket never left maxeps (docs/paper_notes.md 2.4).
  none = {k: r[k] > config.maxeps - (config.maxeps - r['eps0']) / 2**9 - 1e-7
          for k in ('memory', 'faithful', *RESTARTS)}
  return r, none, step, config


def report(run, r, none, step, config, faithful_nb_iter=10):
  """Prints the two tables."""
  sel = r['correct'] & r['known']
  d_max = config.hinge_maxeps
  print(f'{run} at step {step}: {sel.sum()} of {len(sel)} examples SLM-correct with a '
        f'stored perturbation; d_max {d_max:g}; memory attack nb_iter {config.nb_iter}, step '
        f'{config.eps_iter_scale:g} x eps / nb_iter; faithful: nb_iter {faithful_nb_iter}, '
        'step 2.5 x eps / nb_iter, random start')

  def summary(m):
    mem, full = r['memory'][m], r['faithful'][m]
    none_mem, none_full = none['memory'][m], none['faithful'][m]
    return (f'{m.sum()} | {r["still"][m].mean():.1%} | {np.mean(r["norm"][m] / r["eps0"][m]):.2f}'
            f' | {mem.mean():.4f} / {full.mean():.4f} | {np.mean(mem - full):+.4f} | '
            f'{np.mean(none_mem & ~none_full):.1%} / {np.mean(none_full & ~none_mem):.1%} | '
            f'{np.mean(mem >= d_max):.1%} / {np.mean(full >= d_max):.1%}')

  print('| class | examples | stored start still adversarial | stored norm / eps0 | mean eps: '
        'memory / faithful attack | memory - faithful | no success only for: memory / faithful '
        '| at or above d_max: memory / faithful |')
  print('|---' * 8 + '|')
  print(f'| all | {summary(sel)} |')
  for c in np.unique(r['label'][sel]):
    print(f'| {c} | {summary(sel & (r["label"] == c))} |')

  lost = sel & none['memory'] & ~none['faithful']
  print(f'\nThe {lost.sum()} examples the memory attack loses (no success where the faithful '
        'attack has one), attacked again from the same eps0:')
  print('| attack: nb_iter, step / eps, start | success | mean eps where it succeeds | '
        'faithful eps there |')
  print('|---|---|---|---|')
  for name, (nb_iter, scale, start) in RESTARTS.items():
    won = lost & ~none[name]
    mean = lambda e: f'{e[won].mean():.4f}' if won.any() else '-'
    print(f'| {nb_iter}, {scale:g}, {start} | {won.sum() / max(lost.sum(), 1):.1%} | '
          f'{mean(r[name])} | {mean(r["faithful"])} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', required=True, help='a run directory (config.json, checkpoints)')
  parser.add_argument('--examples', type=int, default=2000)
  parser.add_argument('--faithful_nb_iter', type=int, default=10)
  opts = parser.parse_args()
  report(opts.run, *diagnose(opts.run, opts.examples, opts.faithful_nb_iter),
         faithful_nb_iter=opts.faithful_nb_iter)


if __name__ == '__main__':
  main()

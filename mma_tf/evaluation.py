"""Robustness evaluation of any image -> logits classifier (a loaded SavedModel or a callable).

The paper's whitebox protocol (PAPER.md 5.2): per eps, `nb_restart` PGD runs from random starts,
half with cross-entropy and half with the CW loss (kappa 50), `nb_iter` iterations each; an
example is robust only if every run fails. Optional transfer attacks from a source model (5.1).
Margins come from two independent minimal-norm estimates: AN-PGD's search along one PGD
direction, and a bisection on the radius of PGD itself, so a weakness of one shows as
disagreement. Sanity checks look for gradient masking and a broken attack.
"""
import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from mma_tf import losses, norms
from mma_tf.attacks import anpgd_test, check_attack_inputs, example_seeds, input_gradient, pgd

# The paper's eps lists (PAPER.md 5.3); the embedded digits use MNIST's.
DEFAULT_EPS = {
    ('mnist', 'Linf'): [0.1, 0.2, 0.3, 0.4],
    ('mnist', 'L2'): [1.0, 2.0, 3.0, 4.0],
    ('cifar10', 'Linf'): [round(e / 255, 4) for e in (4, 8, 12, 16, 20, 24, 28, 32)],
    ('cifar10', 'L2'): [0.5, 1.0, 1.5, 2.0, 2.5],
}


def default_eps(dataset, norm):
  return DEFAULT_EPS[('mnist' if dataset.startswith('mnist') else dataset, norm)]


def default_rel_step(dataset, norm):
  """Step as a fraction of eps: eps/40 for MNIST Linf, eps/4 otherwise (released evaluator)."""
  return 1 / 40 if dataset.startswith('mnist') and norm == 'Linf' else 1 / 4


def parse_eps(values, dataset, norm):
  """CIFAR-10 Linf radii above 1 are in /255 units and rounded to 4 decimals, as released."""
  eps = [float(v) for v in values]
  if dataset == 'cifar10' and norm == 'Linf':
    eps = [round(e / 255, 4) if e > 1 else e for e in eps]
  return eps


@dataclasses.dataclass
class EvalConfig:
  norm: str = 'Linf'
  eps: tuple = (0.1, 0.2, 0.3, 0.4)
  nb_iter: int = 100
  nb_restart: int = 10          # half CE, half CW (an odd count gives CE the extra run)
  rel_step: float = 1 / 40
  batch_size: int = 100
  seed: int = 0
  margin_maxeps: float = None   # default: 1.5 x the largest eps
  margin_nb_iter: int = 40
  search_steps: int = 10

  def validate(self, image_shape):
    if self.norm not in ('Linf', 'L2'):
      raise ValueError(f"Unknown norm {self.norm!r}; choose 'Linf' or 'L2'.")
    if not self.eps:
      raise ValueError('Give at least one eps.')
    limit = 1.0 if self.norm == 'Linf' else math.sqrt(math.prod(image_shape))
    for e in self.eps:
      if not 0 < e <= limit:
        raise ValueError(f'eps {e} is outside (0, {limit:.4g}], the sensible range for {self.norm} '
                         f'on {tuple(image_shape)} images in [0, 1].')
    for name in ('nb_iter', 'nb_restart', 'batch_size', 'margin_nb_iter', 'search_steps'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1; got {getattr(self, name)}.')
    if not self.rel_step > 0:
      raise ValueError(f'The step fraction must be > 0; got {self.rel_step}.')

  @property
  def maxeps(self):
    return self.margin_maxeps or 1.5 * max(self.eps)

  def restart_losses(self):
    n_ce = (self.nb_restart + 1) // 2
    return ['ce'] * n_ce + ['cw'] * (self.nb_restart - n_ce)


def _is_correct(predict, x, y):
  return tf.equal(tf.argmax(predict(x), -1, output_type=tf.int32), y)


class Evaluator:
  """Compiled per-batch attacks on one classifier `predict` (images in [0, 1] -> logits)."""

  def __init__(self, predict, config):
    self.predict = predict
    self.config = config
    self._whitebox = tf.function(self._whitebox_fn)
    self._margins = tf.function(self._margins_fn)
    self._noise = tf.function(self._noise_fn)
    self._correct = tf.function(lambda x, y: _is_correct(predict, x, y))

  def _seeds(self, index, salt):
    return example_seeds(tf.stack([tf.cast(self.config.seed, tf.int64),
                                   tf.cast(salt, tf.int64)]), index)

  def _whitebox_fn(self, x, y, index, eps):
    """Per-restart correctness [R, B] at radius eps, and the adversarial batches [R, B, ...]."""
    c = self.config
    correct, advs = [], []
    for r, loss in enumerate(c.restart_losses()):
      x_adv = pgd(self.predict, x, y, eps, norm=c.norm, nb_iter=c.nb_iter,
                  rel_step_size=c.rel_step, loss=loss, rand_init=True,
                  seed=self._seeds(index, 1000 * r + 1))
      correct.append(_is_correct(self.predict, x_adv, y))
      advs.append(x_adv)
    return tf.stack(correct), tf.stack(advs)

  def _margins_fn(self, x, y, index):
    """Two minimal-norm estimates per example: AN-PGD (test variant) and PGD-radius bisection.

    Both return the smallest radius known to succeed (maxeps if none did), 0 if x is already
    misclassified; both are upper bounds of the true minimal adversarial norm.
    """
    c = self.config
    maxeps = tf.fill(tf.shape(y), tf.cast(c.maxeps, tf.float32))
    clean = _is_correct(self.predict, x, y)
    # At least 2.5 x eps of travel, and no smaller than the whitebox step: from advertorch's
    # L2 start on the sphere, smaller steps leave PGD a few degrees off the best direction.
    rel_step = max(c.rel_step, 2.5 / c.margin_nb_iter)
    _, anpgd_eps = anpgd_test(self.predict, x, y, test_eps=c.maxeps / 2, maxeps=c.maxeps,
                              norm=c.norm, nb_iter=c.margin_nb_iter,
                              test_eps_iter=rel_step * c.maxeps / 2,
                              num_search_steps=c.search_steps, seed=self._seeds(index, 7),
                              released_quirks=False)
    lower, upper = tf.zeros_like(maxeps), maxeps
    for s in range(c.search_steps):
      mid = (lower + upper) / 2
      x_adv = pgd(self.predict, x, y, mid, norm=c.norm, nb_iter=c.margin_nb_iter, loss='ce',
                  rel_step_size=rel_step, seed=self._seeds(index, 100 + s))
      success = tf.logical_not(_is_correct(self.predict, x_adv, y))
      upper = tf.where(success, mid, upper)
      lower = tf.where(success, lower, mid)
    zero = tf.zeros_like(maxeps)
    return tf.where(clean, anpgd_eps, zero), tf.where(clean, upper, zero)

  def _noise_fn(self, x, y, index, eps):
    """Correctness under `nb_restart` random points on the eps-sphere (Linf: random vertices)."""
    c = self.config
    correct = []
    for r in range(c.nb_restart):
      noise = norms.uniform_per_example(self._seeds(index, 50_000 + r), x, -1.0, 1.0)
      if c.norm == 'Linf':
        delta = eps * tf.sign(noise)
      else:
        delta = noise * norms.per_example(eps / tf.maximum(norms.L2Norm.norm(noise), 1e-12), x)
      correct.append(_is_correct(self.predict, tf.clip_by_value(x + delta, 0.0, 1.0), y))
    return tf.reduce_all(tf.stack(correct), axis=0)


def sanity_checks(predict, x, y):
  """Signs of gradient masking or a non-logit output, from one batch."""
  x = tf.convert_to_tensor(x)
  out1, out2 = predict(x).numpy(), predict(x).numpy()
  grad = input_gradient(predict, losses.cross_entropy, x, y).numpy().reshape(len(x), -1)
  zero_grad = float(np.mean(np.all(grad == 0, axis=1)))
  looks_like_probs = bool(np.all(out1 >= 0) and np.all(out1 <= 1)
                          and np.allclose(out1.sum(1), 1, atol=1e-3))
  return {'zero_gradient_fraction': zero_grad,
          'nondeterministic': bool(np.max(np.abs(out1 - out2)) > 1e-5),
          'looks_like_probabilities': looks_like_probs}


def _quartiles(v):
  v = np.asarray(v, np.float64)
  if v.size == 0:
    return {}
  q = np.percentile(v, [25, 50, 75])
  return {'mean': float(v.mean()), 'q25': float(q[0]), 'median': float(q[1]),
          'q75': float(q[2])}


def _batches(n, batch_size):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(a, size):
  """Pads the last batch to `size` by repeating its first example (static shapes, no retrace)."""
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


def evaluate(predict, images, labels, config, source_predict=None, progress=None):
  """Runs the whole evaluation; returns (results dict, per-example arrays dict).

  images: float32 [N, H, W, C] in [0, 1]; labels: int [N]. `progress(done, total, text)` is
  called as batches finish. With `source_predict`, adversarial examples crafted on the source
  (same protocol) are also scored on `predict` (transfer), and an example counts as robust only
  if all whitebox and transfer attacks fail.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  config.validate(images.shape[1:])
  check_attack_inputs(images, labels, max(config.eps))
  n, bs = len(labels), config.batch_size
  target = Evaluator(predict, config)
  source = Evaluator(source_predict, config) if source_predict is not None else None
  eps_list = list(config.eps)
  steps_total = math.ceil(n / bs) * (len(eps_list) + 1)
  done = 0
  t_start = time.time()

  clean = np.zeros(n, bool)
  whitebox = np.zeros((len(eps_list), n), bool)
  transfer = np.ones((len(eps_list), n), bool)
  noise = np.zeros((len(eps_list), n), bool)
  margin_anpgd, margin_bisect = np.zeros(n, np.float32), np.zeros(n, np.float32)
  attack_seconds = 0.0
  index = np.arange(n, dtype=np.int32)
  batches = [(lo, hi, *(_pad(a[lo:hi], bs) for a in (images, labels, index)))
             for lo, hi in _batches(n, bs)]
  for lo, hi, x, y, idx in batches:
    clean[lo:hi] = target._correct(x, y).numpy()[:hi - lo]
    m1, m2 = target._margins(x, y, idx)
    margin_anpgd[lo:hi], margin_bisect[lo:hi] = m1.numpy()[:hi - lo], m2.numpy()[:hi - lo]
    done += 1
    if progress:
      progress(done, steps_total, 'margins')
  for e_i, eps in enumerate(eps_list):
    eps_t = tf.constant(eps, tf.float32)
    for lo, hi, x, y, idx in batches:
      t = time.time()
      per_restart, _ = target._whitebox(x, y, idx, eps_t)
      per_restart = per_restart.numpy()
      attack_seconds += time.time() - t
      whitebox[e_i, lo:hi] = np.all(per_restart, axis=0)[:hi - lo]
      noise[e_i, lo:hi] = target._noise(x, y, idx, eps_t).numpy()[:hi - lo]
      if source is not None:
        _, advs = source._whitebox(x, y, idx, eps_t)
        scored = [target._correct(a, y).numpy() for a in advs]
        transfer[e_i, lo:hi] = np.all(scored, axis=0)[:hi - lo]
      done += 1
      if progress:
        progress(done, steps_total, f'eps {eps:g}')
  robust = whitebox & transfer & clean[None]
  seconds = time.time() - t_start

  results = {
      'num_examples': n,
      'norm': config.norm,
      'eps': eps_list,
      'protocol': {'nb_iter': config.nb_iter, 'nb_restart': config.nb_restart,
                   'restart_losses': config.restart_losses(), 'step': f'eps * {config.rel_step:g}',
                   'random_init': True, 'transfer': source is not None},
      'clean_acc': float(clean.mean()),
      'robust_acc': {f'{e:g}': float(r.mean()) for e, r in zip(eps_list, robust)},
      'whitebox_acc': {f'{e:g}': float((w & clean).mean()) for e, w in zip(eps_list, whitebox)},
      'avg_rob_acc': float(robust.mean()),
  }
  if source is not None:
    results['transfer_acc'] = {f'{e:g}': float((t & clean).mean())
                               for e, t in zip(eps_list, transfer)}
  correct = clean
  censored = lambda m: float(np.mean(m[correct] >= config.maxeps * (1 - 1e-6))) if correct.any() \
      else 0.0
  best = np.minimum(margin_anpgd, margin_bisect)
  disagree = np.abs(margin_anpgd - margin_bisect) > 0.1 * np.maximum(best, 1e-12) + 1e-6
  results['margin'] = {
      'maxeps': config.maxeps,
      'anpgd': dict(_quartiles(margin_anpgd), censored_frac=censored(margin_anpgd)),
      'pgd_bisection': dict(_quartiles(margin_bisect), censored_frac=censored(margin_bisect)),
      'min_of_both': _quartiles(best),
      'disagreement_frac': float(np.mean(disagree[correct])) if correct.any() else 0.0,
      'note': 'per example over all examples (misclassified = 0); both estimates are upper '
              'bounds of the minimal adversarial norm; censored = no success up to maxeps',
  }
  sanity = sanity_checks(predict, images[:bs], labels[:bs])
  noise_acc = {f'{e:g}': float((nz & clean).mean()) for e, nz in zip(eps_list, noise)}
  sanity['random_noise_acc'] = noise_acc
  warnings = []
  if sanity['zero_gradient_fraction'] > 0.01:
    warnings.append(f'{sanity["zero_gradient_fraction"]:.0%} of examples have an all-zero input '
                    'gradient: gradient masking (stop_gradient, saturated softmax, quantisation); '
                    'gradient attacks are unreliable on this model.')
  if sanity['nondeterministic']:
    warnings.append('The model returns different outputs for the same input (dropout or '
                    'randomness at inference): robust accuracy may be overstated.')
  if sanity['looks_like_probabilities']:
    warnings.append('The outputs look like probabilities, not logits: export the logits; '
                    'attacks on softmax outputs suffer from vanishing gradients.')
  for e in eps_list:
    key = f'{e:g}'
    if noise_acc[key] < results['whitebox_acc'][key]:
      warnings.append(f'At eps {key}, random noise ({noise_acc[key]:.4f}) beats PGD '
                      f'({results["whitebox_acc"][key]:.4f}): the gradient attack is broken or '
                      'the gradients are masked.')
  accs = [results['robust_acc'][f'{e:g}'] for e in sorted(eps_list)]
  if any(b > a + 1e-9 for a, b in zip(accs, accs[1:])):
    warnings.append('Robust accuracy rises with eps: the attack is not converging.')
  if results['margin']['disagreement_frac'] > 0.25:
    warnings.append(f'The two margin estimates disagree by >10% on '
                    f'{results["margin"]["disagreement_frac"]:.0%} of correct examples.')
  sanity['warnings'] = warnings
  results['sanity'] = sanity
  work = n * config.nb_restart * config.nb_iter * len(eps_list)
  results['timing'] = {
      'seconds': round(seconds, 2),
      'whitebox_attack_seconds': round(attack_seconds, 2),
      'whitebox_throughput': round(work / max(attack_seconds, 1e-9), 1),
      'throughput_unit': 'examples x restarts x iterations per second',
  }
  per_example = {'clean_correct': clean, 'robust': robust, 'whitebox_robust': whitebox & clean,
                 'margin_anpgd': margin_anpgd, 'margin_pgd_bisection': margin_bisect,
                 'eps': np.array(eps_list, np.float32), 'labels': labels}
  return results, per_example


def markdown_table(results, title):
  eps = [f'{e:g}' for e in results['eps']]
  lines = [f'## {title}', '',
           f'{results["num_examples"]} examples, {results["norm"]}, whitebox PGD-'
           f'{results["protocol"]["nb_iter"]} x {results["protocol"]["nb_restart"]} restarts '
           f'({"+".join(sorted(set(results["protocol"]["restart_losses"])))}), step '
           f'{results["protocol"]["step"]}'
           + (', plus transfer' if results['protocol']['transfer'] else '') + '.', '',
           '| clean | ' + ' | '.join(eps) + ' | AvgRobAcc | mean margin (AN-PGD) | '
           'mean margin (PGD bisection) |',
           '|---' * (len(eps) + 4) + '|',
           f'| {100 * results["clean_acc"]:.2f} | '
           + ' | '.join(f'{100 * results["robust_acc"][e]:.2f}' for e in eps)
           + f' | {100 * results["avg_rob_acc"]:.2f} | {results["margin"]["anpgd"].get("mean", 0):.4f}'
           f' | {results["margin"]["pgd_bisection"].get("mean", 0):.4f} |', '']
  if results['sanity']['warnings']:
    lines += ['**Sanity warnings:**', ''] + [f'- {w}' for w in results['sanity']['warnings']]
  else:
    lines += ['Sanity checks: no warning (gradients present, deterministic logits, PGD beats '
              'random noise, accuracy falls with eps).']
  return '\n'.join(lines) + '\n'


def write_report(results, per_example, out_dir, title='Robustness evaluation'):
  """Writes results.json, results.md, per_example.npz, robust_accuracy.png and margins.png.

  Everything is written to a scratch directory first and moved into place at the end, so an
  interrupted run leaves nothing half-written.
  """
  import matplotlib  # imported here: only reports need it, and it is slow to import
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  tmp = out_dir.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(tmp, 'results.md'), 'w') as f:
    f.write(markdown_table(results, title))
  np.savez_compressed(os.path.join(tmp, 'per_example.npz'), **per_example)

  eps = results['eps']
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([0] + eps, [results['clean_acc']] + [results['robust_acc'][f'{e:g}'] for e in eps],
          'o-', label='robust (all attacks)')
  ax.plot([0] + eps, [results['clean_acc']] + [results['sanity']['random_noise_acc'][f'{e:g}']
                                               for e in eps], 's--', label='random noise')
  ax.set_xlabel(f'{results["norm"]} eps')
  ax.set_ylabel('accuracy')
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(tmp, 'robust_accuracy.png'), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.5))
  correct = per_example['clean_correct']
  bins = np.linspace(0, results['margin']['maxeps'], 40)
  ax.hist(per_example['margin_anpgd'][correct], bins=bins, alpha=0.6, label='AN-PGD')
  ax.hist(per_example['margin_pgd_bisection'][correct], bins=bins, alpha=0.6,
          label='PGD bisection')
  ax.set_xlabel(f'{results["norm"]} margin (correctly classified examples)')
  ax.set_ylabel('examples')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(tmp, 'margins.png'), dpi=120)
  plt.close(fig)

  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return out_dir

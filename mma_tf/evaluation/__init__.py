"""Robustness evaluation of any image -> logits classifier (a loaded SavedModel or a callable).

One package for training-time validation and `mma-evaluate`: one notion of "correct"
(`common.is_correct`), one seed scheme (named streams keyed by dataset index), one padding rule.
`evaluate` runs, per eps, the attacks of the chosen protocols (`protocols`: AutoAttack, its rand
version, the MMA paper's PGD restarts, `fast`) on the points still robust (`runner`), the margin
estimates (`margins`) and the sanity checks (`sanity`); `report` writes JSON, Markdown, NPZ and
plots.
"""
import time

import numpy as np
import tensorflow as tf

from mma_tf.attacks import check_attack_inputs
from mma_tf.attacks.protocol_attacks import Transfer
from mma_tf.evaluation import fast, margins, sanity
from mma_tf.evaluation.common import is_correct
from mma_tf.evaluation.protocols import (AUTOATTACK, DEFAULT_EPS, PAPER, PROTOCOLS, RAND,
                                         EvalConfig, default_eps, default_rel_step,
                                         protocol_label)
from mma_tf.evaluation.report import markdown_table, write_report
from mma_tf.evaluation.runner import Runner, run_attacks

__all__ = ['AUTOATTACK', 'DEFAULT_EPS', 'PAPER', 'PROTOCOLS', 'RAND', 'EvalConfig', 'Runner',
           'default_eps', 'default_rel_step', 'evaluate', 'markdown_table', 'num_classes_of',
           'runner_for', 'write_report']


def runner_for(predict, config, strategy=None):
  """The Runner that evaluate() uses for (predict, config, strategy), made once: a second call
  with the same model and settings reuses every compiled function (one trace per bucket shape).
  Kept on `predict` itself, so it lives as long as the model (a callable that takes no
  attributes, e.g. a bound method, gets a new Runner per call)."""
  strategy = strategy or tf.distribute.get_strategy()
  cache = getattr(predict, '_mma_tf_runners', None)
  if cache is None:
    cache = {}
    try:
      predict._mma_tf_runners = cache
    except AttributeError:
      pass
  key = (repr(config), id(strategy))
  if key not in cache:
    cache[key] = (Runner(config.batch_size, strategy, config.jit_compile), strategy)
  return cache[key][0]


def num_classes_of(predict, images):
  """The number of classes `predict` outputs, from one example; a clear error on a shape clash."""
  try:
    logits = predict(tf.constant(images[:1]))
  except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
    raise ValueError(f'The model cannot take images of shape {tuple(images.shape[1:])}: '
                     f'{str(e).splitlines()[0][:200]}. Evaluate on the data it was trained '
                     'for.') from e
  if logits.shape.rank != 2:
    raise ValueError(f'The model must return logits [batch, classes]; it returned shape '
                     f'{logits.shape}.')
  if logits.shape[-1] < 2:
    raise ValueError(f'The model returns {logits.shape[-1]} logit per example; attacks need one '
                     'per class (at least 2). For a binary model with one logit z, return '
                     '[0, z].')
  return int(logits.shape[-1])


def _attacks_for(config, num_classes, source_predict):
  """{protocol: [Attack]} adapted to a `num_classes`-way model (with transfer attacks from
  `source_predict`), and {protocol: sentences naming every departure from its reference}."""
  protocols, changes = config.protocol_attacks(), {}
  for name, attacks in protocols.items():
    if source_predict is not None and name != 'autoattack':
      attacks += [Transfer(norm=a.norm, inner=a, source=source_predict)
                  for a in list(attacks) if a.name == 'pgd']
    changes[name] = config.budget_changes(name)
    for i, a in enumerate(attacks):
      a.check(num_classes)
      attacks[i], notes = a.for_classes(num_classes)
      changes[name] += notes
  return protocols, changes


def _quartiles(v):
  v = np.asarray(v, np.float64)
  if v.size == 0:
    return {}
  q = np.percentile(v, [25, 50, 75])
  return {'mean': float(v.mean()), 'q25': float(q[0]), 'median': float(q[1]), 'q75': float(q[2])}


def evaluate(predict, images, labels, config, source_predict=None, progress=None, strategy=None,
             runner=None):
  """Runs the whole evaluation; returns (results dict, per-example arrays dict).

  images: float32 [N, H, W, C] in [0, 1]; labels: int [N]. `progress(text)` is called as attacks
  finish. With `source_predict`, the paper protocol also scores PGD examples crafted on the source
  model (transfer). `strategy` splits every batch across its replicas (results are identical to one
  device). Compiled functions are reused across calls with the same predict, config and strategy
  (`runner_for`). A `runner` passed in belongs to one predict and config: its compiled functions
  are looked up by name, not by model.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  config.validate(images.shape[1:])
  check_attack_inputs(images, labels, max(config.eps))
  num_classes = num_classes_of(predict, images)
  if np.any((labels < 0) | (labels >= num_classes)):
    raise ValueError(f'Labels must lie in [0, {num_classes}) for this {num_classes}-class model.')
  protocols, changes = _attacks_for(config, num_classes, source_predict)
  log = progress or (lambda text: None)
  for p, notes in changes.items():
    if notes:
      log(f'{p}: {protocol_label(p, notes)}:' + ''.join(f'\n    - {n}' for n in notes))
  runner = runner or runner_for(predict, config, strategy)
  n = len(labels)
  index = np.arange(n, dtype=np.int32)
  everything = np.arange(n)
  t_start = time.time()

  clean = runner.map('clean', lambda x, y: (is_correct(predict(x), y),), [images, labels],
                     everything)[0].astype(bool)
  log(f'clean accuracy {clean.mean():.4f}')
  margin_values = {}
  for name in config.margin_estimates:
    t = time.perf_counter()
    correct = np.nonzero(clean)[0]
    values = np.zeros(n, np.float32)
    if correct.size:
      values[correct] = runner.map(('margin', name), margins.estimator(name, predict, config),
                                   [images, labels, index], correct)[0]
    margin_values[name] = values
    log(f'margin {name}: mean {values.mean():.4f} ({time.perf_counter() - t:.1f} s)')

  eps_list = [float(e) for e in config.eps]
  keys = [f'{e:g}' for e in eps_list]
  per_protocol = {p: {'attacks': [a.name for a in attacks],
                      'attack_config': [a.describe() for a in attacks],
                      'robust': [], 'broken_by': [], 'adv_norm': [], 'acc_after': {},
                      'unconfirmed': {}, 'seconds': {a.name: 0.0 for a in attacks}}
                  for p, attacks in protocols.items()}
  noise = np.zeros((len(eps_list), n), bool)
  noise_fn = sanity.noise_fn(predict, config.norm, config.seed, max(config.nb_restart, 4))
  # Before the attacks: the fast protocol gives Square its full budget when they flag masking.
  checks = sanity.model_checks(predict, images[:config.batch_size], labels[:config.batch_size])
  for e_i, eps in enumerate(eps_list):
    for p, attacks in protocols.items():
      plog = (lambda text, p=p: log(f'{p}: {text}')) if len(protocols) > 1 else log
      if p == 'fast':
        out = fast.run_fast(runner, predict, attacks, images, labels, index, eps, clean,
                            config.seed, num_classes, config.square_queries,
                            fast.masking_signs(checks), plog)
        per_protocol[p].setdefault('square_queries', {})[keys[e_i]] = out['square_queries']
        per_protocol[p].setdefault('square_reason', {})[keys[e_i]] = out['square_reason']
      else:
        out = run_attacks(runner, predict, attacks, images, labels, index, eps, clean,
                          config.seed, num_classes, plog)
      r = per_protocol[p]
      r['robust'].append(out['robust'])
      r['broken_by'].append(out['broken_by'])
      r['adv_norm'].append(out['adv_norm'])
      r['acc_after'][keys[e_i]] = dict(zip(r['attacks'], out['acc_after']))
      r['unconfirmed'][keys[e_i]] = dict(zip(r['attacks'], out['unconfirmed']))
      for a, s in zip(r['attacks'], out['seconds']):
        r['seconds'][a] += s
    eps_vec = np.full(n, eps, np.float32)
    noise[e_i] = runner.map('noise', noise_fn, [images, labels, index, eps_vec],
                            everything)[0].astype(bool) & clean
  robust = np.logical_and.reduce([np.stack(r['robust']) for r in per_protocol.values()])
  seconds = time.time() - t_start

  results = {
      'num_examples': n,
      'num_classes': num_classes,
      'norm': config.norm,
      'eps': eps_list,
      'protocol': config.protocol if not config.attacks else 'custom',
      # Exactly the standard attack list at the standard budgets, unchanged for this model.
      'standard_autoattack': (config.is_standard_autoattack()
                              and not changes.get('autoattack')),
      'clean_acc': float(clean.mean()),
      'robust_acc': {k: float(r.mean()) for k, r in zip(keys, robust)},
      'avg_rob_acc': float(robust.mean()),
      'protocols': {},
  }
  for p, r in per_protocol.items():
    rob = np.stack(r['robust'])
    results['protocols'][p] = {
        'label': protocol_label(p, changes[p]), 'changes': changes[p],
        'attacks': r['attacks'], 'attack_config': r['attack_config'],
        'robust_acc': {k: float(v.mean()) for k, v in zip(keys, rob)},
        'avg_rob_acc': float(rob.mean()),
        'acc_after': r['acc_after'],
        'unconfirmed': r['unconfirmed'],
        'seconds': {a: round(s, 2) for a, s in r['seconds'].items()},
    }
  if 'fast' in per_protocol:
    r = per_protocol['fast']
    results['protocols']['fast'].update(note=fast.describe(config),
                                        square_queries=r['square_queries'],
                                        square_reason=r['square_reason'])
    if 'autoattack' in per_protocol:
      results['protocols']['fast']['vs_autoattack'] = fast.compare(
          np.stack(per_protocol['autoattack']['robust']), np.stack(r['robust']), keys)
  best = np.min(np.stack(list(margin_values.values())), axis=0) if margin_values else None
  censored = lambda m: float(np.mean(m[clean] >= config.maxeps * (1 - 1e-6))) if clean.any() \
      else 0.0
  results['margin'] = {'maxeps': config.maxeps, 'estimates': list(margin_values)}
  for name, values in margin_values.items():
    results['margin'][name] = dict(_quartiles(values), censored_frac=censored(values))
  if best is not None:
    results['margin']['min_of_all'] = _quartiles(best)
    spread = np.max(np.stack(list(margin_values.values())), axis=0) - best
    disagree = spread > sanity.MARGIN_SPREAD * np.maximum(best, 1e-12) + 1e-6
    results['margin']['disagreement_frac'] = (float(np.mean(disagree[clean])) if clean.any()
                                              else 0.0)
  results['margin']['note'] = ('per example over all examples (misclassified = 0); every '
                               'estimate is an upper bound of the minimal adversarial norm; '
                               'censored = no success up to maxeps')
  recount = is_correct(predict(tf.constant(images[:min(n, 7)])), labels[:min(n, 7)]).numpy()
  checks['clean_recount_mismatch'] = bool(np.any(recount != clean[:len(recount)]))
  checks['random_noise_acc'] = {k: float(v.mean()) for k, v in zip(keys, noise)}
  checks.update(sanity.point_checks(keys, clean, robust, noise, per_protocol))
  results['sanity'] = checks
  checks['warnings'] = sanity.warnings_for(results)
  results['timing'] = {'seconds': round(seconds, 2),
                       'attack_seconds': {p: r['seconds'] for p, r in results['protocols'].items()}}

  per_example = {'clean_correct': clean, 'robust': robust, 'labels': labels,
                 'eps': np.array(eps_list, np.float32)}
  for p, r in per_protocol.items():
    per_example[f'{p}_robust'] = np.stack(r['robust'])
    per_example[f'{p}_broken_by'] = np.stack(r['broken_by'])
    per_example[f'{p}_adv_norm'] = np.stack(r['adv_norm'])
    per_example[f'{p}_attack_names'] = np.array(r['attacks'])
  for name, values in margin_values.items():
    per_example[f'margin_{name}'] = values
  if best is not None:
    per_example['margin_min'] = best
  return results, per_example

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
from mma_tf.evaluation import margins, sanity
from mma_tf.evaluation import results as results_lib
from mma_tf.evaluation.common import is_correct
from mma_tf.evaluation.protocols import (DEFAULT_EPS, EvalConfig, default_eps, default_rel_step,
                                         protocol_label)
from mma_tf.evaluation.report import markdown_table, write_report
from mma_tf.evaluation.runner import Runner, run_attacks
from mma_tf.protocol_names import AUTOATTACK, PAPER, PROTOCOLS, RAND

__all__ = ['AUTOATTACK', 'DEFAULT_EPS', 'PAPER', 'PROTOCOLS', 'RAND', 'EvalConfig', 'Runner',
           'default_eps', 'default_rel_step', 'evaluate', 'markdown_table', 'num_classes_of',
           'runner_for', 'write_report']


def runner_for(predict, config, strategy=None):
  """The Runner that evaluate() uses for predict, config.batch_size, config.jit_compile and
  strategy, made once: later calls on the same model reuse every compiled function whose key
  matches (one trace per bucket shape), whatever else changed (radii, attacks, protocols), since
  each function's key names everything else it depends on. Kept on `predict` itself, so it lives
  as long as the model (a callable that takes no attributes, e.g. a bound method, gets a new
  Runner per call)."""
  strategy = strategy or tf.distribute.get_strategy()
  cache = getattr(predict, '_mma_tf_runners', None)
  if cache is None:
    cache = {}
    try:
      predict._mma_tf_runners = cache
    except AttributeError:
      pass
  key = (config.batch_size, config.jit_compile, id(strategy))
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


def _checked_inputs(predict, images, labels, config):
  """(images float32, labels int32, number of classes), or a ValueError naming what is wrong."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  config.validate(images.shape[1:])
  check_attack_inputs(images, labels, max(config.eps))
  num_classes = num_classes_of(predict, images)
  if np.any((labels < 0) | (labels >= num_classes)):
    raise ValueError(f'Labels must lie in [0, {num_classes}) for this {num_classes}-class model.')
  return images, labels, num_classes


def _log_changes(changes, log):
  for p, notes in changes.items():
    if notes:
      log(f'{p}: {protocol_label(p, notes)}:' + ''.join(f'\n    - {n}' for n in notes))


def _clean_pass(runner, predict, images, labels):
  """bool [N]: correctly classified at the clean image."""
  return runner.map('clean', lambda x, y: (is_correct(predict(x), y),), [images, labels],
                    np.arange(len(labels)))[0].astype(bool)


def _margin_estimates(runner, predict, images, labels, clean, config, log):
  """{estimate name: margin [N]} on the clean-correct points (0 on the others)."""
  n = len(labels)
  index = np.arange(n, dtype=np.int32)
  margin_values = {}
  for name in config.margin_estimates:
    t = time.perf_counter()
    correct = np.nonzero(clean)[0]
    values = np.zeros(n, np.float32)
    if correct.size:
      values[correct] = runner.map(('margin', name, repr(config)),
                                   margins.estimator(name, predict, config),
                                   [images, labels, index], correct)[0]
    margin_values[name] = values
    log(f'margin {name}: mean {values.mean():.4f} ({time.perf_counter() - t:.1f} s)')
  return margin_values


def _run_protocol(attacks, record, runner, predict, images, labels, eps, clean, config,
                  num_classes, checks, log):
  """Runs one protocol's attacks at radius eps on the clean-correct points; adds the outcome to
  its record."""
  index = np.arange(len(labels), dtype=np.int32)
  out = run_attacks(runner, predict, attacks, images, labels, index, eps, clean, config.seed,
                    num_classes, log, checks)
  results_lib.add_eps(record, results_lib.eps_key(eps), out)


def _noise_correct(runner, noise_fn, key, images, labels, eps, clean):
  """bool [N]: clean-correct and still correct under every random draw of the noise check."""
  n = len(labels)
  index = np.arange(n, dtype=np.int32)
  eps_vec = np.full(n, eps, np.float32)
  return runner.map(key, noise_fn, [images, labels, index, eps_vec],
                    np.arange(n))[0].astype(bool) & clean


def _attacks_and_noise(runner, predict, protocols, images, labels, clean, config, num_classes,
                       checks, log):
  """Per eps, every protocol's attacks, then the noise check. Returns ({protocol: record}, noise
  [eps, N])."""
  per_protocol = {p: results_lib.protocol_record(attacks) for p, attacks in protocols.items()}
  eps_list = [float(e) for e in config.eps]
  noise = np.zeros((len(eps_list), len(labels)), bool)
  noise_fn = sanity.noise_fn(predict, config.norm, config.seed, sanity.NOISE_DRAWS)
  noise_key = ('noise', config.norm, config.seed)  # what noise_fn depends on besides predict
  for e_i, eps in enumerate(eps_list):
    for p, attacks in protocols.items():
      plog = (lambda text, p=p: log(f'{p}: {text}')) if len(protocols) > 1 else log
      _run_protocol(attacks, per_protocol[p], runner, predict, images, labels, eps, clean,
                    config, num_classes, checks, plog)
    noise[e_i] = _noise_correct(runner, noise_fn, noise_key, images, labels, eps, clean)
  return per_protocol, noise


def _recount_mismatch(predict, images, labels, clean):
  """True when a plain forward pass on the first examples disagrees with the clean pass."""
  n = min(len(labels), 7)
  recount = is_correct(predict(tf.constant(images[:n])), labels[:n]).numpy()
  return bool(np.any(recount != clean[:len(recount)]))


def evaluate(predict, images, labels, config, source_predict=None, progress=None, strategy=None,
             runner=None):
  """Runs the whole evaluation; returns (results dict, per-example arrays dict).

  images: float32 [N, H, W, C] in [0, 1]; labels: int [N]. `progress(text)` is called as attacks
  finish. With `source_predict`, the paper protocol also scores PGD examples crafted on the source
  model (transfer). `strategy` splits every batch across its replicas (results are identical to one
  device). Compiled functions are reused across calls with the same predict, batch size, XLA
  setting and strategy (`runner_for`). A `runner` passed in belongs to one predict: its compiled
  functions are looked up by key, not by model.
  """
  images, labels, num_classes = _checked_inputs(predict, images, labels, config)
  protocols, changes = _attacks_for(config, num_classes, source_predict)
  log = progress or (lambda text: None)
  _log_changes(changes, log)
  runner = runner or runner_for(predict, config, strategy)
  t_start = time.time()
  clean = _clean_pass(runner, predict, images, labels)
  log(f'clean accuracy {clean.mean():.4f}')
  margin_values = _margin_estimates(runner, predict, images, labels, clean, config, log)
  # Before the attacks: the fast protocol's Square takes its full budget when they flag masking.
  checks = sanity.model_checks(predict, images[:config.batch_size], labels[:config.batch_size])
  per_protocol, noise = _attacks_and_noise(runner, predict, protocols, images, labels, clean,
                                           config, num_classes, checks, log)
  seconds = time.time() - t_start
  checks['clean_recount_mismatch'] = _recount_mismatch(predict, images, labels, clean)
  results = results_lib.results_dict(config, num_classes, changes, clean, noise, per_protocol,
                                     margin_values, checks, seconds)
  return results, results_lib.per_example_arrays(config, labels, clean, per_protocol,
                                                 margin_values)

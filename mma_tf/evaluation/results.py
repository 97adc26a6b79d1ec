"""What `evaluate` returns, assembled from what it measured: the per-protocol records (filled eps
by eps), the results dict (the JSON report) and the per-example arrays (the NPZ)."""
import numpy as np

from mma_tf.evaluation import fast, sanity
from mma_tf.evaluation.protocols import protocol_label

MARGIN_NOTE = ('per example over all examples (misclassified = 0); every estimate is an upper '
               'bound of the minimal adversarial norm; censored = no success up to maxeps')


def eps_key(eps):
  """The key of a radius in the results dict: '0.3', '0.0313725'."""
  return f'{eps:g}'


def protocol_record(attacks):
  """An empty record of one protocol's outcomes, filled eps by eps by `add_eps`."""
  return {'attacks': [a.name for a in attacks],
          'attack_config': [a.describe() for a in attacks],
          'robust': [], 'broken_by': [], 'adv_norm': [], 'acc_after': {},
          'unconfirmed': {}, 'seconds': {a.name: 0.0 for a in attacks}}


def add_eps(record, key, out):
  """Adds one radius's outcome (the dict `run_attacks` returns) to a protocol's record."""
  record['robust'].append(out['robust'])
  record['broken_by'].append(out['broken_by'])
  record['adv_norm'].append(out['adv_norm'])
  record['acc_after'][key] = dict(zip(record['attacks'], out['acc_after']))
  record['unconfirmed'][key] = dict(zip(record['attacks'], out['unconfirmed']))
  for a, s in zip(record['attacks'], out['seconds']):
    record['seconds'][a] += s
  for facts in out['facts']:  # e.g. the fast protocol's square_queries, per radius
    for name, value in facts.items():
      record.setdefault(name, {})[key] = value


def overall_robust(per_protocol):
  """bool [eps, N]: robust under every protocol (the pointwise worst case)."""
  return np.logical_and.reduce([np.stack(r['robust']) for r in per_protocol.values()])


def _min_margin(margin_values):
  """The per-example minimum over the margin estimates (the best one), None without estimates."""
  return np.min(np.stack(list(margin_values.values())), axis=0) if margin_values else None


def _quartiles(v):
  v = np.asarray(v, np.float64)
  if v.size == 0:
    return {}
  q = np.percentile(v, [25, 50, 75])
  return {'mean': float(v.mean()), 'q25': float(q[0]), 'median': float(q[1]), 'q75': float(q[2])}


def _protocol_results(p, record, changes, keys):
  rob = np.stack(record['robust'])
  return {
      'label': protocol_label(p, changes), 'changes': changes,
      'attacks': record['attacks'], 'attack_config': record['attack_config'],
      'robust_acc': {k: float(v.mean()) for k, v in zip(keys, rob)},
      'avg_rob_acc': float(rob.mean()),
      'acc_after': record['acc_after'],
      'unconfirmed': record['unconfirmed'],
      'seconds': {a: round(s, 2) for a, s in record['seconds'].items()},
  }


def _add_fast_results(protocols, per_protocol, config, keys):
  """The fast protocol's note, Square budgets and, next to AutoAttack, its agreement with it."""
  r = per_protocol['fast']
  protocols['fast'].update(note=fast.describe(config), square_queries=r['square_queries'],
                           square_reason=r['square_reason'],
                           square_continued=r.get('continued_points', {}))
  if 'autoattack' in per_protocol:
    protocols['fast']['vs_autoattack'] = fast.compare(
        np.stack(per_protocol['autoattack']['robust']), np.stack(r['robust']), keys)


def _margin_summary(margin_values, clean, maxeps):
  """Quartiles and censored share of each margin estimate, of their minimum, and how often they
  disagree."""
  best = _min_margin(margin_values)
  censored = lambda m: float(np.mean(m[clean] >= maxeps * (1 - 1e-6))) if clean.any() else 0.0
  summary = {'maxeps': maxeps, 'estimates': list(margin_values)}
  for name, values in margin_values.items():
    summary[name] = dict(_quartiles(values), censored_frac=censored(values))
  if best is not None:
    summary['min_of_all'] = _quartiles(best)
    spread = np.max(np.stack(list(margin_values.values())), axis=0) - best
    disagree = spread > sanity.MARGIN_SPREAD * np.maximum(best, 1e-12) + 1e-6
    summary['disagreement_frac'] = float(np.mean(disagree[clean])) if clean.any() else 0.0
  summary['note'] = MARGIN_NOTE
  return summary


def results_dict(config, num_classes, changes, clean, noise, per_protocol, margin_values, checks,
                 seconds):
  """The results dict of `evaluate`. `checks` (the model checks so far) gains the noise and
  per-point checks and the warnings, and becomes results['sanity']."""
  eps_list = [float(e) for e in config.eps]
  keys = [eps_key(e) for e in eps_list]
  robust = overall_robust(per_protocol)
  results = {
      'num_examples': len(clean),
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
      'protocols': {p: _protocol_results(p, r, changes[p], keys)
                    for p, r in per_protocol.items()},
  }
  if 'fast' in per_protocol:
    _add_fast_results(results['protocols'], per_protocol, config, keys)
  results['margin'] = _margin_summary(margin_values, clean, config.maxeps)
  checks['random_noise_acc'] = {k: float(v.mean()) for k, v in zip(keys, noise)}
  checks.update(sanity.point_checks(keys, clean, robust, noise, per_protocol))
  results['sanity'] = checks
  checks['warnings'] = sanity.warnings_for(results)
  results['timing'] = {'seconds': round(seconds, 2),
                       'attack_seconds': {p: r['seconds'] for p, r in results['protocols'].items()}}
  return results


def per_example_arrays(config, labels, clean, per_protocol, margin_values):
  """The per-example arrays of `evaluate` ([eps, N] per protocol, [N] per margin estimate)."""
  per_example = {'clean_correct': clean, 'robust': overall_robust(per_protocol), 'labels': labels,
                 'eps': np.array([float(e) for e in config.eps], np.float32)}
  for p, r in per_protocol.items():
    per_example[f'{p}_robust'] = np.stack(r['robust'])
    per_example[f'{p}_broken_by'] = np.stack(r['broken_by'])
    per_example[f'{p}_adv_norm'] = np.stack(r['adv_norm'])
    per_example[f'{p}_attack_names'] = np.array(r['attacks'])
  for name, values in margin_values.items():
    per_example[f'margin_{name}'] = values
  best = _min_margin(margin_values)
  if best is not None:
    per_example['margin_min'] = best
  return per_example

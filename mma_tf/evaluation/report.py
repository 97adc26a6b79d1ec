"""The evaluation report: results.json, results.md, per_example.npz, robust_accuracy.png,
margins.png, written to a scratch directory and moved into place at the end."""
import json
import os
import shutil

import numpy as np


def _pct(v):
  return f'{100 * v:.2f}'


def markdown_table(results, title):
  eps = [f'{e:g}' for e in results['eps']]
  lines = [f'## {title}', '',
           f'{results["num_examples"]} examples, {results["norm"]}, clean accuracy '
           f'{_pct(results["clean_acc"])}%. Robust accuracy (%) per eps: after each attack in '
           'order (cumulative: a point counts as robust only if every attack so far failed).', '']
  for p, r in results['protocols'].items():
    changes = ''.join(f'\n  - {c}' for c in r['changes'])
    lines += [f'- {p}: **{r["label"]}**' + (':' if changes else '') + changes]
  lines.append('')
  header = '| protocol | attack | ' + ' | '.join(eps) + ' | AvgRobAcc | seconds |'
  lines += [header, '|---' * (len(eps) + 4) + '|']
  for p, r in results['protocols'].items():
    for i, a in enumerate(r['attacks']):
      cells = [_pct(r['acc_after'][e][a]) for e in eps]
      avg = np.mean([r['acc_after'][e][a] for e in eps])
      lines.append(f'| {p if i == 0 else ""} | {"+ " if i else ""}{a} | ' + ' | '.join(cells)
                   + f' | {_pct(avg)} | {r["seconds"][a]:.1f} |')
  if len(results['protocols']) > 1:
    lines.append('| worst case | all | ' + ' | '.join(_pct(results['robust_acc'][e]) for e in eps)
                 + f' | {_pct(results["avg_rob_acc"])} | |')
  if 'fast' in results['protocols']:
    lines += ['', _fast_lines(results['protocols']['fast'])]
  m = results['margin']
  if m['estimates']:
    lines += ['', f'Margins ({results["norm"]}, searched up to {m["maxeps"]:.4g}; mean / median '
              'over all examples, misclassified = 0):', '',
              '| estimate | mean | median | censored |', '|---|---|---|---|']
    for name in m['estimates']:
      lines.append(f'| {name} | {m[name].get("mean", 0):.4f} | {m[name].get("median", 0):.4f} | '
                   f'{100 * m[name]["censored_frac"]:.1f}% |')
    lines.append(f'| per-example minimum | {m["min_of_all"].get("mean", 0):.4f} | '
                 f'{m["min_of_all"].get("median", 0):.4f} | |')
  lines.append('')
  if results['sanity']['warnings']:
    lines += ['**Sanity warnings:**', ''] + [f'- {w}' for w in results['sanity']['warnings']]
  else:
    square = [f'{sq["broke"]} of the {sq["left_robust"]} points left at eps {key} ({protocol})'
              for protocol, per_eps in results['sanity']['square'].items()
              for key, sq in per_eps.items()]
    square = (f'Square broke {", ".join(square)} by the gradient attacks, below the share that '
              'signals masking, ' if square else '')
    lines += ['Sanity checks: no warning (deterministic logits, gradients present, attacks beat '
              f'random noise, {square}accuracy falls with eps; thresholds: docs/autoattack.md '
              '5).']
  return '\n'.join(lines) + '\n'


def _fast_lines(r):
  """The fast protocol's label, Square's budget per eps, and its verdict against AutoAttack's."""
  def budget(e, queries):
    why, continued = r['square_reason'][e], r.get('square_continued', {}).get(e)
    if continued is not None:
      why += f'; continued on {continued} point(s)'
    return f'{e}: {queries}' + (f' ({why})' if why else '')

  text = f'**{r["note"]}** Square queries per eps: ' + ', '.join(
      budget(e, q) for e, q in r['square_queries'].items()) + '.'
  for e, c in r.get('vs_autoattack', {}).items():
    text += (f' At eps {e}: the same robust set as AutoAttack.' if c['same'] else
             f' At eps {e}: robust under fast but broken by AutoAttack: '
             f'{c["broken_only_by_autoattack"] or "none"}; broken only by fast: '
             f'{c["broken_only_by_fast"] or "none"}.')
  return text


def write_report(results, per_example, out_dir, title='Robustness evaluation'):
  """Writes the report files; an interrupted run leaves nothing half-written."""
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
  keys = [f'{e:g}' for e in eps]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for p, r in results['protocols'].items():
    for a in r['attacks']:
      ax.plot([0] + eps, [results['clean_acc']] + [r['acc_after'][k][a] for k in keys], '.-',
              alpha=0.8, label=f'{p}: after {a}')
  ax.plot([0] + eps, [results['clean_acc']] + [results['sanity']['random_noise_acc'][k]
                                               for k in keys], 's--', label='random noise')
  ax.set_xlabel(f'{results["norm"]} eps')
  ax.set_ylabel('accuracy')
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(tmp, 'robust_accuracy.png'), dpi=120)
  plt.close(fig)

  if results['margin']['estimates']:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    correct = per_example['clean_correct']
    bins = np.linspace(0, results['margin']['maxeps'], 40)
    for name in results['margin']['estimates']:
      ax.hist(per_example[f'margin_{name}'][correct], bins=bins, alpha=0.5, label=name)
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

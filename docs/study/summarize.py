"""Summarises a study directory written by run_study.sh into a Markdown table, a JSON file and a
plot of robust accuracy against eps for every objective.

  python docs/study/summarize.py runs/study-Linf docs/study/linf

Rows: objective; columns: clean, robust accuracy per eps, AvgRobAcc, mean margin (the smaller of
the two estimates per example), training-loop and evaluation seconds (as measured by
bin/train.py and bin/evaluate.py themselves). Each cell is mean (min-max) over seeds.
"""
import glob
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

ORDER = ('standard', 'pgd_at', 'mma', 'omma', 'mma_dmax4')


def load_runs(study_dir):
  """{objective: [one dict per seed]} from every finished run in study_dir."""
  rows = {}
  for path in sorted(glob.glob(os.path.join(study_dir, '*-seed*', 'eval', 'results.json'))):
    run_dir = os.path.dirname(os.path.dirname(path))
    name, seed = os.path.basename(run_dir).rsplit('-seed', 1)
    with open(path) as f:
      r = json.load(f)
    with open(os.path.join(run_dir, 'summary.json')) as f:
      train = json.load(f)
    rows.setdefault(name, []).append({
        'seed': int(seed), 'clean': r['clean_acc'], 'robust': r['robust_acc'],
        'avg_rob_acc': r['avg_rob_acc'], 'margin': r['margin']['min_of_all']['mean'],
        'warnings': r['sanity']['warnings'], 'train_seconds': train['seconds'],
        'eval_seconds': r['timing']['seconds'], 'eps': r['eps'], 'norm': r['norm']})
  if not rows:
    sys.exit(f'No finished runs (*-seed*/eval/results.json) under {study_dir}.')
  return {n: rows[n] for n in ORDER if n in rows}


def cell(values, scale=100, digits=1):
  v = np.asarray(values, float) * scale
  return f'{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})'


def main(study_dir, out_prefix):
  rows = load_runs(study_dir)
  first = next(iter(rows.values()))[0]
  eps = [f'{e:g}' for e in first['eps']]
  lines = ['| model | seeds | clean | ' + ' | '.join(eps) + ' | AvgRobAcc | mean margin | '
           'train s | eval s |', '|---' * (len(eps) + 7) + '|']
  summary = {}
  for name, rs in rows.items():
    summary[name] = {
        'seeds': [r['seed'] for r in rs],
        'clean': [r['clean'] for r in rs],
        'robust': {e: [r['robust'][e] for r in rs] for e in eps},
        'avg_rob_acc': [r['avg_rob_acc'] for r in rs],
        'margin': [r['margin'] for r in rs],
        'train_seconds': [r['train_seconds'] for r in rs],
        'eval_seconds': [r['eval_seconds'] for r in rs],
        'warnings': [w for r in rs for w in r['warnings']],
    }
    lines.append(f'| {name} | {len(rs)} | {cell([r["clean"] for r in rs])} | '
                 + ' | '.join(cell([r['robust'][e] for r in rs]) for e in eps)
                 + f' | {cell([r["avg_rob_acc"] for r in rs])}'
                 + f' | {cell([r["margin"] for r in rs], 1, 3)}'
                 + f' | {cell([r["train_seconds"] for r in rs], 1, 0)}'
                 + f' | {cell([r["eval_seconds"] for r in rs], 1, 0)} |')
  table = '\n'.join(lines) + '\n'
  with open(out_prefix + '.md', 'w') as f:
    f.write(table)
  with open(out_prefix + '.json', 'w') as f:
    json.dump(summary, f, indent=2)

  # Robust accuracy against eps (eps 0 = clean): mean over seeds, bars from min to max.
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [0.0] + [float(e) for e in eps]
  for name, s in summary.items():
    acc = np.array([s['clean']] + [s['robust'][e] for e in eps]) * 100
    mean = acc.mean(axis=1)
    ax.errorbar(xs, mean, yerr=[mean - acc.min(axis=1), acc.max(axis=1) - mean], marker='o',
                capsize=3, label=f'{name} ({len(s["seeds"])} seeds)')
  ax.set_xlabel(f'{first["norm"]} eps')
  ax.set_ylabel('robust accuracy (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_prefix + '.png', dpi=100)
  print(table)


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  main(sys.argv[1], sys.argv[2])

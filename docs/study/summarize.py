"""Summarises a study directory written by run_study.sh into a Markdown table and a JSON file.

  python docs/study/summarize.py runs/study-Linf docs/study/linf

Rows: objective; columns: clean, robust accuracy per eps, AvgRobAcc, mean margin (the smaller of
the two estimates per example), train / evaluate seconds. Each cell is mean (min-max) over seeds.
"""
import glob
import json
import os
import re
import sys

import numpy as np


def main(study_dir, out_prefix):
  rows = {}
  times = {}
  with open(os.path.join(study_dir, 'times.txt')) as f:
    for line in f:
      m = re.match(r'(\w+) seed (\d+): train (\d+) s, evaluate (\d+) s', line)
      if m:
        times[(m[1], int(m[2]))] = (int(m[3]), int(m[4]))
  for path in sorted(glob.glob(os.path.join(study_dir, '*-seed*', 'eval', 'results.json'))):
    run = os.path.basename(os.path.dirname(os.path.dirname(path)))
    name, seed = run.rsplit('-seed', 1)
    with open(path) as f:
      r = json.load(f)
    train_s, eval_s = times.get((name, int(seed)), (np.nan, np.nan))
    rows.setdefault(name, []).append({
        'seed': int(seed), 'clean': r['clean_acc'], 'robust': r['robust_acc'],
        'avg_rob_acc': r['avg_rob_acc'], 'margin': r['margin']['min_of_both']['mean'],
        'margin_anpgd': r['margin']['anpgd']['mean'],
        'margin_bisection': r['margin']['pgd_bisection']['mean'],
        'warnings': r['sanity']['warnings'], 'train_seconds': train_s,
        'eval_seconds': eval_s, 'eps': r['eps']})
  order = [n for n in ('standard', 'pgd_at', 'mma', 'omma') if n in rows]
  eps = [f'{e:g}' for e in rows[order[0]][0]['eps']]

  def cell(values, scale=100, digits=1):
    v = np.asarray(values, float) * scale
    return f'{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})'

  lines = ['| model | seeds | clean | ' + ' | '.join(eps) + ' | AvgRobAcc | mean margin | '
           'train s | eval s |', '|---' * (len(eps) + 7) + '|']
  summary = {}
  for name in order:
    rs = rows[name]
    summary[name] = {
        'seeds': [r['seed'] for r in rs],
        'clean': [r['clean'] for r in rs],
        'robust': {e: [r['robust'][e] for r in rs] for e in eps},
        'avg_rob_acc': [r['avg_rob_acc'] for r in rs],
        'margin': [r['margin'] for r in rs],
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
  print(table)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])

"""Summarises a `cheaper_robustness.py` study: a Markdown table, a JSON file and, per dataset, a
plot of AutoAttack robust accuracy against training seconds (one point per run and budget, the
faithful runs' budgets joined as the frontier to beat).

  python docs/study/cheaper_robustness.py summarize --out=runs/cheaper --doc=docs/study/cheaper

Columns (mean over seeds, (min-max) after it): training steps, training-step seconds (the
seconds of the training steps alone, cumulative over the run's stages), wall seconds of
bin/train.py (steps, validation every epoch, checkpoints, export), CPU seconds of the training
steps alone and of the whole process, clean and AutoAttack robust accuracy on the evaluated test
points, and the last validation's average margin. CPU seconds marked ~ include an estimate of
seconds a stopped process never recorded (`unrecorded.json` in the stage's directory). The plot's
clock is the training steps' CPU seconds where every run recorded them.
"""
import glob
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def load(out):
  """{data: {(row, steps): [per-seed dict]}} of every evaluated stage, seconds cumulative."""
  table = {}
  for run_dir in sorted(glob.glob(os.path.join(out, '*', '*-seed*'))):
    data = os.path.basename(os.path.dirname(run_dir))
    row, seed = os.path.basename(run_dir).rsplit('-seed', 1)
    stages = []
    for path in glob.glob(os.path.join(run_dir, 'stage-*steps', 'stage.json')):
      with open(path) as f:
        stages.append(json.load(f))
    totals = {'step_seconds': 0.0, 'wall_seconds': 0.0, 'cpu_seconds': 0.0,
              'step_cpu_seconds': 0.0}
    estimated = False
    for stage in sorted(stages, key=lambda s: s['steps']):
      for k in totals:
        totals[k] += stage.get(k, float('nan'))  # step_cpu_seconds: recorded since round two
      # A stage that ran partly in a process stopped before it wrote its record: the seconds
      # never recorded, estimated by hand (unrecorded.json beside stage.json says how).
      stage_dir = os.path.join(run_dir, f'stage-{stage["steps"]}steps')
      unrecorded = os.path.join(stage_dir, 'unrecorded.json')
      if os.path.exists(unrecorded):
        with open(unrecorded) as f:
          extra = json.load(f)
        for k in ('cpu_seconds', 'step_cpu_seconds'):
          totals[k] += extra.get(k, 0.0)
        estimated = True
      results = os.path.join(stage_dir, 'eval', 'results.json')
      if not os.path.exists(results):
        continue
      with open(results) as f:
        r = json.load(f)
      aa = r['protocols'].get('autoattack')
      entry = dict(totals, seed=int(seed), clean=r['clean_acc'], cpu=stage.get('cpu'),
                   estimated=estimated,
                   robust=aa['avg_rob_acc'] if aa else None, num_examples=r['num_examples'],
                   margin=stage['validation']['avg_margin'], warnings=r['sanity']['warnings'])
      for name, p in r['protocols'].items():
        entry[f'robust_{name}'] = p['avg_rob_acc']
      table.setdefault(data, {}).setdefault((row, stage['steps']), []).append(entry)
  return table


def cell(values, scale=100.0, digits=1):
  v = np.asarray(values, float) * scale
  return f'{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})'


def main(out, prefix):
  table = load(out)
  lines, summary = [], {}
  for data, rows in table.items():
    lines += [f'### {data}', '', '| row | steps | seeds | step s | wall s | step CPU s | CPU s | '
              'clean | AutoAttack | val. margin |', '|---' * 10 + '|']
    for (row, steps), rs in sorted(rows.items(), key=lambda kv: (kv[0][0] != 'faithful',
                                                                 kv[0][0], kv[0][1])):
      robust = [r['robust'] for r in rs if r['robust'] is not None]
      about = '~' if any(r['estimated'] for r in rs) else ''  # CPU seconds partly estimated
      lines.append(f'| {row} | {steps} | {len(rs)} | {cell([r["step_seconds"] for r in rs], 1, 0)}'
                   f' | {cell([r["wall_seconds"] for r in rs], 1, 0)}'
                   f' | {about}{cell([r["step_cpu_seconds"] for r in rs], 1, 0)}'
                   f' | {about}{cell([r["cpu_seconds"] for r in rs], 1, 0)}'
                   f' | {cell([r["clean"] for r in rs])}'
                   f' | {cell(robust) if robust else "-"}'
                   f' | {cell([r["margin"] for r in rs], 1, 3)} |')
      summary.setdefault(data, {})[f'{row}@{steps}'] = rs
    lines.append('')
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted({row for row, _ in rows})
    # The training steps' CPU seconds where every run recorded them (round two), else the
    # processes'.
    clock = ('step_cpu_seconds' if all(np.isfinite(r['step_cpu_seconds'])
                                       for rs in rows.values() for r in rs) else 'cpu_seconds')
    for name in names:
      points = sorted((e, rs) for (row, e), rs in rows.items() if row == name)
      xs = [np.mean([r[clock] for r in rs]) for _, rs in points]
      ys = [100 * np.mean([r['robust'] for r in rs]) for _, rs in points]
      style = dict(color='black', lw=2) if name == 'faithful' else {}
      ax.plot(xs, ys, 'o-', label=name, **style)
      for (_, rs) in points:  # each seed's point, faintly
        ax.scatter([r[clock] for r in rs], [100 * r['robust'] for r in rs], s=8,
                   alpha=0.3, color=ax.lines[-1].get_color())
    ax.set_xlabel('CPU seconds of the training steps (cumulative)' if clock == 'step_cpu_seconds'
                  else 'CPU seconds of training (cumulative; the least load-sensitive clock here)')
    ax.set_ylabel('AutoAttack robust accuracy (%)')
    ax.set_title(f'{data}: robustness against training time', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f'{prefix}-{data}.png', dpi=100)
    plt.close(fig)
  text = '\n'.join(lines) + '\n'
  with open(prefix + '.md', 'w') as f:
    f.write(text)
  with open(prefix + '.json', 'w') as f:
    json.dump(summary, f, indent=2)
  print(text)

"""The fast protocol against standard AutoAttack: one Markdown row per report of
`mma-evaluate --protocol=autoattack,fast` (both protocols on the same points, in one process).

  python bench/fast_table.py NAME=REPORT_DIR[,REPORT_DIR] [NAME=... ...]

Two directories: AutoAttack's report and a later fast-only report of the same model and points
(the later one's protocols win).

Per model and eps: points, clean accuracy, robust accuracy under each, whether fast left exactly
AutoAttack's robust set (the points robust under fast but broken by AutoAttack are what fast must
never have), the attack seconds of each and their ratio, and the budget Square finally had in fast
('1000 (61 continued)': 1,000 queries, and the full budget on the 61 points the per-point rule
continued; '5000 (364 continued)': the full budget on every point left).
In one report both protocols share compiled functions (APGD-CE's traces are made once, by
AutoAttack's run), so fast's seconds hold slightly less tracing than AutoAttack's; in two
reports, each paid its own tracing but ran at another moment of a shared machine. Seconds are
over all eps of the report. For a cost that does not move with the load, count model passes:
bench/bench_autoattack.py --protocols=autoattack,fast.
"""
import json
import os
import sys

import numpy as np


def _load(report_dirs):
  """{protocol: its results} and {protocol: robust [eps, N]} over the reports (later ones win)."""
  protocols, robust, r = {}, {}, None
  for d in report_dirs:
    with open(os.path.join(d, 'results.json')) as f:
      r = json.load(f)
    per_example = np.load(os.path.join(d, 'per_example.npz'))
    for p, v in r['protocols'].items():
      protocols[p] = v
      robust[p] = per_example[f'{p}_robust']
  return r, protocols, robust


def _square_budget(fast, eps):
  """Square's queries in fast at eps, and on how many points it went on to the full budget."""
  continued = fast.get('square_continued', {}).get(eps)
  return f'{fast["square_queries"][eps]}' + (f' ({continued} continued)' if continued is not None
                                            else '')


def rows(name, report_dirs):
  """(the table's lines, one per eps; the report's attack seconds (AutoAttack, fast), summed
  over its radii)."""
  r, protocols, robust = _load(report_dirs)
  aa, fast = protocols['autoattack'], protocols['fast']
  aa_s, fast_s = sum(aa['seconds'].values()), sum(fast['seconds'].values())
  lines = []
  for e_i, eps in enumerate(fast['robust_acc']):
    a, f = robust['autoattack'][e_i], robust['fast'][e_i]
    lines.append(f'| {name} | {eps} | {r["num_examples"]} | {100 * r["clean_acc"]:.1f} | '
                 f'{100 * a.mean():.1f} | {100 * f.mean():.1f} | '
                 f'{"yes" if np.array_equal(a, f) else "no"} | {int(np.sum(f & ~a))} | '
                 f'{aa_s:.0f} | {fast_s:.0f} | {fast_s / max(aa_s, 1e-9):.2f} | '
                 f'{_square_budget(fast, eps)} |')
  return lines, (aa_s, fast_s)


def main(args):
  if not args or any('=' not in a for a in args):
    sys.exit(__doc__)
  print('| model | eps | points | clean % | AutoAttack % | fast % | same robust set | robust '
        'under fast, broken by AutoAttack | AutoAttack s | fast s | fast / AutoAttack | '
        'Square queries in fast |')
  print('|---' * 12 + '|')
  total_aa = total_fast = 0.0
  for arg in args:
    name, report_dirs = arg.split('=', 1)
    lines, (aa_s, fast_s) = rows(name, report_dirs.split(','))
    print('\n'.join(lines))
    total_aa += aa_s  # once per report: its seconds cover all its radii
    total_fast += fast_s
  print(f'\nAll rows: fast took {total_fast:.0f} s of attacks, AutoAttack {total_aa:.0f} s '
        f'({total_fast / max(total_aa, 1e-9):.2f}).')


if __name__ == '__main__':
  main(sys.argv[1:])

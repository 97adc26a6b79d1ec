"""The fast protocol against standard AutoAttack: one Markdown row per report of
`mma-evaluate --protocol=autoattack,fast` (both protocols on the same points, in one process).

  python bench/fast_table.py NAME=REPORT_DIR [NAME=REPORT_DIR ...]

Per model and eps: points, clean accuracy, robust accuracy under each, whether fast left exactly
AutoAttack's robust set (the points robust under fast but broken by AutoAttack are what fast must
never have), the attack seconds of each and their ratio, and the budget Square finally had in fast.
Both protocols run in one process and share compiled functions (APGD-CE's traces are made once, by
AutoAttack's run), so fast's seconds hold slightly less tracing than AutoAttack's.
"""
import json
import os
import sys


def rows(name, report_dir):
  with open(os.path.join(report_dir, 'results.json')) as f:
    r = json.load(f)
  aa, fast = r['protocols']['autoattack'], r['protocols']['fast']
  for eps, verdict in fast['vs_autoattack'].items():
    aa_s, fast_s = sum(aa['seconds'].values()), sum(fast['seconds'].values())
    yield (f'| {name} | {eps} | {r["num_examples"]} | {100 * r["clean_acc"]:.1f} | '
           f'{100 * aa["robust_acc"][eps]:.1f} | {100 * fast["robust_acc"][eps]:.1f} | '
           f'{"yes" if verdict["same"] else "no"} | '
           f'{len(verdict["broken_only_by_autoattack"])} | {aa_s:.0f} | {fast_s:.0f} | '
           f'{fast_s / max(aa_s, 1e-9):.2f} | {fast["square_queries"][eps]} |'), (aa_s, fast_s)


def main(args):
  if not args or any('=' not in a for a in args):
    sys.exit(__doc__)
  print('| model | eps | points | clean % | AutoAttack % | fast % | same robust set | robust '
        'under fast, broken by AutoAttack | AutoAttack s | fast s | fast / AutoAttack | '
        'Square queries in fast |')
  print('|---' * 12 + '|')
  total_aa = total_fast = 0.0
  for arg in args:
    name, report_dir = arg.split('=', 1)
    for line, (aa_s, fast_s) in rows(name, report_dir):
      print(line)
      total_aa += aa_s
      total_fast += fast_s
  print(f'\nAll rows: fast took {total_fast:.0f} s of attacks, AutoAttack {total_aa:.0f} s '
        f'({total_fast / max(total_aa, 1e-9):.2f}).')


if __name__ == '__main__':
  main(sys.argv[1:])

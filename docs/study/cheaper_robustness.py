"""The "Cheaper robustness" study of docs/RESULTS.md: faithful MMA at several budgets against MMA
with perturbation memory (--perturbation_memory), judged by AutoAttack; resumable.

  python docs/study/cheaper_robustness.py train --data=digits --out=runs/cheaper
  python docs/study/cheaper_robustness.py evaluate --data=digits --out=runs/cheaper
  python docs/study/cheaper_robustness.py summarize --out=runs/cheaper --doc=docs/study/cheaper

--data: digits (the embedded 5,000 MNIST digits, the README's default run: small CNN, Linf,
d_max 0.45, test radius 0.3) or fmnist (Fashion-MNIST from `docs/study/fashion_mnist_npz.py`,
--fmnist_npz; small CNN, Linf, d_max 0.15, test radius 0.1). --seeds (default 0,1) and --rows
(default: every row of ROWS) restrict the runs. Each run trains in stages, one per budget of its
row (in epochs), resuming the same model_dir (Adam at a constant rate: a stage is exactly the
prefix of the longer run) and keeping each stage's export and summary; re-running skips finished
stages and evaluations. Each stage records its wall seconds, the seconds of its training steps
(bin/train.py's step_seconds: no validation, checkpoints or export) and the CPU seconds of the
process (user + system), which move least when other work shares the machine.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA = {
    # The README's default run: 3,500 training digits, 70 steps per epoch at batch 50.
    'digits': dict(train=['--dataset=mnist_5k'], eval=['--dataset=mnist_5k'], steps_per_epoch=70,
                   test_eps=0.3, epochs=30),
    # 59,000 training images, 460 steps per epoch at batch 128 (the custom preset's batch).
    # Validation: 1,000 images (a fixed random selection), 2% of an epoch's examples.
    'fmnist': dict(train=['--dataset=npz:{npz}', '--hinge_maxeps=0.15', '--attack_mineps=0.03',
                          '--test_eps=0.1', '--test_eps_iter=0.025', '--num_validation=1000',
                          '--checkpoint_every=460', '--log_every=115'],
                   eval=['--dataset=npz:{npz}'], steps_per_epoch=460, test_eps=0.1, epochs=10),
}

# Rows: flags added to the dataset's, and the budgets (fractions of the dataset's epochs) at
# which the run is exported and evaluated. The rows with few attack iterations keep the validation
# monitor at the faithful strength (--test_nb_iter / --test_num_search_steps), so the checkpoint
# selection and the validation margin column compare like with like. The memory rows step 0.5 eps
# per PGD iteration (--eps_iter_scale = 0.5 nb_iter), the best of 0.1-2.5 eps in a pilot on the
# digits' validation split (docs/RESULTS.md); 'no-memory-k2' is the control: the same few
# iterations from random starts, at the released step rule.
_FEW = ['--test_nb_iter=10', '--test_num_search_steps=10']
_MEMORY = ['--perturbation_memory'] + _FEW
_BUDGETS = (1 / 8, 1 / 4, 1 / 2, 1)
ROWS = {
    'faithful': dict(flags=[], budgets=_BUDGETS),
    'memory-k1': dict(flags=_MEMORY + ['--nb_iter=1', '--eps_iter_scale=0.5'], budgets=_BUDGETS),
    'memory-k2': dict(flags=_MEMORY + ['--nb_iter=2', '--eps_iter_scale=1'], budgets=_BUDGETS),
    'memory-k5': dict(flags=_MEMORY + ['--nb_iter=5'], budgets=_BUDGETS),
    'no-memory-k2': dict(flags=_FEW + ['--nb_iter=2'], budgets=_BUDGETS),
}


def _epochs(data, fraction):
  return max(1, round(DATA[data]['epochs'] * fraction))


def _run(args, log_path):
  """Runs a command, its output appended to log_path; returns (wall s, CPU s of the process)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  with open(log_path, 'a') as log:
    result = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if result.returncode:
    sys.exit(f'failed ({result.returncode}): {" ".join(args)}; see {log_path}')
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return time.time() - start, cpu


def _flags(flags, npz):
  return [f.format(npz=npz) for f in flags]


def train(opts):
  spec = DATA[opts.data]
  for seed in opts.seeds:
    for row in opts.rows:
      run_dir = os.path.join(opts.out, opts.data, f'{row}-seed{seed}')
      os.makedirs(run_dir, exist_ok=True)
      for fraction in ROWS[row]['budgets']:
        epochs = _epochs(opts.data, fraction)
        stage = os.path.join(run_dir, f'stage-{epochs}ep')
        if os.path.exists(os.path.join(stage, 'stage.json')):
          continue
        args = [sys.executable, 'bin/train.py', *_flags(spec['train'], opts.fmnist_npz),
                *ROWS[row]['flags'], f'--seed={seed}', f'--model_dir={run_dir}',
                f'--train_steps={epochs * spec["steps_per_epoch"]}']
        print(f'{opts.data} {row} seed {seed}: training to {epochs} epochs', flush=True)
        wall, cpu = _run(args, os.path.join(run_dir, 'train.log'))
        with open(os.path.join(run_dir, 'summary.json')) as f:
          summary = json.load(f)
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(os.path.join(run_dir, 'export'), os.path.join(stage, 'export'))
        record = dict(summary, epochs=epochs, wall_seconds=round(wall, 1),
                      cpu_seconds=round(cpu, 1), args=args[1:])
        with open(os.path.join(stage, 'stage.json'), 'w') as f:
          json.dump(record, f, indent=2)
        print(f'  {epochs} epochs: {wall:.0f} s wall, {summary["step_seconds"]:.0f} s in steps, '
              f'{cpu:.0f} s CPU; validation {summary["validation"]}', flush=True)


def evaluate(opts):
  spec = DATA[opts.data]
  for seed in opts.seeds:
    for row in opts.rows:
      run_dir = os.path.join(opts.out, opts.data, f'{row}-seed{seed}')
      for fraction in ROWS[row]['budgets']:
        if opts.budgets and not any(abs(fraction - b) < 1e-9 for b in opts.budgets):
          continue
        stage = os.path.join(run_dir, f'stage-{_epochs(opts.data, fraction)}ep')
        out = os.path.join(stage, 'eval')
        if not os.path.exists(os.path.join(stage, 'stage.json')):
          continue  # not trained yet
        if os.path.exists(os.path.join(out, 'results.json')):
          continue
        args = [sys.executable, 'bin/evaluate.py', f'--saved_model={stage}/export',
                *_flags(spec['eval'], opts.fmnist_npz), '--norm=Linf',
                f'--eps={spec["test_eps"]}', f'--num_examples={opts.num_examples}',
                f'--protocol={opts.protocol}', '--margins=', f'--output_dir={out}',
                '--overwrite']
        print(f'{opts.data} {row} seed {seed}: evaluating {stage}', flush=True)
        wall, _ = _run(args, os.path.join(stage, 'eval.log'))
        print(f'  {wall:.0f} s', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('command', choices=['train', 'evaluate', 'summarize'])
  parser.add_argument('--data', choices=sorted(DATA), default='digits')
  parser.add_argument('--out', default='runs/cheaper')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--fmnist_npz', default='runs/fashion_mnist.npz')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--protocol', default='autoattack')
  parser.add_argument('--budgets', default='',
                      help='evaluate: only these budgets (fractions, e.g. 1 or 0.25,1); '
                           'default every budget of the row')
  parser.add_argument('--doc', default=None, help='summarize: output prefix (.md, .json, .png)')
  opts = parser.parse_args()
  opts.seeds = [int(s) for s in opts.seeds.split(',') if s]
  opts.rows = [r for r in opts.rows.split(',') if r]
  opts.budgets = [float(b) for b in opts.budgets.split(',') if b]
  unknown = set(opts.rows) - set(ROWS)
  if unknown:
    parser.error(f'unknown rows {sorted(unknown)}; choose from {sorted(ROWS)}')
  if opts.command == 'train':
    train(opts)
  elif opts.command == 'evaluate':
    evaluate(opts)
  else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cheaper_summary  # pylint: disable=import-outside-toplevel
    cheaper_summary.main(opts.out, opts.doc or os.path.join(opts.out, 'cheaper'))


if __name__ == '__main__':
  main()

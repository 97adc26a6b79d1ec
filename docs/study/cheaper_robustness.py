"""The "Cheaper robustness" study of docs/RESULTS.md: faithful MMA at several budgets against MMA
with perturbation memory (--perturbation_memory), judged by AutoAttack; resumable.

  python docs/study/cheaper_robustness.py train --data=digits --out=runs/cheaper
  python docs/study/cheaper_robustness.py evaluate --data=digits --out=runs/cheaper
  python docs/study/cheaper_robustness.py summarize --out=runs/cheaper --doc=docs/study/cheaper

--data: digits (the embedded 5,000 MNIST digits, the README's default run: small CNN, Linf,
d_max 0.45, test radius 0.3), preset (the same digits with the paper's MNIST Linf preset:
LeNet5Madry, nb_iter 40, Adam 1e-4, 2,000 steps) or fmnist (Fashion-MNIST from
`docs/study/fashion_mnist_npz.py`, --fmnist_npz; small CNN, Linf, d_max 0.15, test radius 0.1).
--seeds (default 0,1) and --rows (default: the data's rows) restrict the runs. Each run trains in
stages, one per budget of its row (fractions of the data's steps), resuming the same model_dir
(Adam at a constant rate: a stage is exactly the prefix of the longer run) and keeping each
stage's export and summary; re-running skips finished stages and evaluations. Each stage records
its wall seconds, the wall and CPU seconds of its training steps alone (bin/train.py's
step_seconds, step_cpu_seconds: no validation, checkpoints or export), the CPU seconds of the
process (user + system, including start-up and validation), the CPU model and, with --cpus, the
cores the process was pinned to (taskset): one core per run keeps the CPU seconds of runs that
share the machine comparable.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Per dataset: bin/train.py's and bin/evaluate.py's flags, the steps of a full budget, and
# `monitor`: the flags that keep the validation monitor at the faithful row's strength in the rows
# with few attack iterations, so checkpoint selection and the validation margin compare like with
# like.
_DIGITS_MONITOR = ['--test_nb_iter=10', '--test_num_search_steps=10']
DATA = {
    # The README's default run: 3,500 training digits, 70 steps per epoch at batch 50.
    'digits': dict(train=['--dataset=mnist_5k'], eval=['--dataset=mnist_5k'], steps_per_epoch=70,
                   test_eps=0.3, train_steps=2100, monitor=_DIGITS_MONITOR,
                   rows=('faithful', 'memory-k1', 'memory-k2', 'memory-k5', 'no-memory-k2')),
    # The paper's MNIST Linf preset (configs.PRESETS['mnist', 'Linf']: LeNet5Madry, Adam 1e-4,
    # batch 50, nb_iter 40, d_max 0.45, validation PGD step 0.01) on the same digits, for the
    # 2,000 steps at which this project and the authors' code were compared.
    'preset': dict(train=['--dataset=mnist_5k', '--model=lenet5_madry', '--learning_rate=1e-4',
                          '--nb_iter=40', '--test_eps_iter=0.01'],
                   eval=['--dataset=mnist_5k'], steps_per_epoch=70, test_eps=0.3,
                   train_steps=2000, monitor=['--test_nb_iter=40', '--test_num_search_steps=10'],
                   rows=('faithful', 'memory-k1', 'memory-k2', 'memory-k5')),
    # 59,000 training images, 460 steps per epoch at batch 128 (the custom preset's batch).
    # Validation: 1,000 images (a fixed random selection), 2% of an epoch's examples.
    'fmnist': dict(train=['--dataset=npz:{npz}', '--hinge_maxeps=0.15', '--attack_mineps=0.03',
                          '--test_eps=0.1', '--test_eps_iter=0.025', '--num_validation=1000',
                          '--checkpoint_every=460', '--log_every=115'],
                   eval=['--dataset=npz:{npz}'], steps_per_epoch=460, test_eps=0.1,
                   train_steps=4600, monitor=_DIGITS_MONITOR, rows=('faithful', 'memory-k1')),
}

# Rows: flags added to the dataset's ('{monitor}' stands for the data's monitor flags), and the
# budgets (fractions of the data's train_steps) at which the run is exported and evaluated. The
# memory rows step 0.5 eps per PGD iteration (--eps_iter_scale = 0.5 nb_iter), the best of
# 0.1-2.5 eps in a pilot on the digits' validation split (docs/RESULTS.md); 'no-memory-k2' is the
# control: the same few iterations from random starts, at the released step rule.
_MEMORY = ['--perturbation_memory', '{monitor}']
_BUDGETS = (1 / 8, 1 / 4, 1 / 2, 1)
ROWS = {
    'faithful': dict(flags=[], budgets=_BUDGETS),
    'memory-k1': dict(flags=_MEMORY + ['--nb_iter=1', '--eps_iter_scale=0.5'], budgets=_BUDGETS),
    'memory-k2': dict(flags=_MEMORY + ['--nb_iter=2', '--eps_iter_scale=1'], budgets=_BUDGETS),
    'memory-k5': dict(flags=_MEMORY + ['--nb_iter=5'], budgets=_BUDGETS),
    'no-memory-k2': dict(flags=['{monitor}', '--nb_iter=2'], budgets=_BUDGETS),
}
# The illinois boundary search (--search=illinois, 1 + 3 forwards instead of the bisection's 1 +
# 10; the validation monitor keeps the bisection), alone and with each memory row.
ROWS['faithful-illinois'] = dict(flags=['--search=illinois'], budgets=_BUDGETS)
for _k in (1, 2, 5):
  ROWS[f'memory-k{_k}-illinois'] = dict(
      flags=ROWS[f'memory-k{_k}']['flags'] + ['--search=illinois'], budgets=_BUDGETS)
# 16-bit arithmetic: only where the CPU has native bfloat16 (avx512_bf16 or amx_bf16); where it
# has not, TF emulates it, which measures the emulation, so the study leaves these rows out.
BF16 = ['--mixed_precision=mixed_bfloat16']
for _row in ('faithful', 'memory-k1-illinois', 'memory-k2-illinois'):
  ROWS[f'{_row}-bf16'] = dict(flags=ROWS[_row]['flags'] + BF16, budgets=_BUDGETS)


def cpu_model():
  """The CPU's model name and its 16-bit float features (lscpu): a timing is comparable only with
  one from the same CPU."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return {'model': platform.processor() or 'unknown', 'features': [], 'native_bf16': False}
  fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
  flags = fields.get('Flags', '').split()
  return {'model': fields.get('Model name', 'unknown').strip(),
          'features': [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags],
          'native_bf16': 'avx512_bf16' in flags or 'amx_bf16' in flags}


def _steps(data, fraction):
  return max(1, round(DATA[data]['train_steps'] * fraction))


def _stage_dir(run_dir, steps):
  return os.path.join(run_dir, f'stage-{steps}steps')


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


def _flags(flags, npz, monitor=()):
  out = []
  for flag in flags:
    out += list(monitor) if flag == '{monitor}' else [flag.format(npz=npz)]
  return out


def train(opts):
  spec = DATA[opts.data]
  pin = ['taskset', '-c', opts.cpus] if opts.cpus else []
  machine = cpu_model()
  for seed in opts.seeds:
    for row in opts.rows:
      if BF16[0] in ROWS[row]['flags'] and not machine['native_bf16']:
        print(f'{row}: skipped: this CPU ({machine["model"]}, {", ".join(machine["features"])}) '
              'has no '
              'native bfloat16, and emulated bfloat16 would measure the emulation', flush=True)
        continue
      run_dir = os.path.join(opts.out, opts.data, f'{row}-seed{seed}')
      os.makedirs(run_dir, exist_ok=True)
      for fraction in opts.budgets or ROWS[row]['budgets']:
        steps = _steps(opts.data, fraction)
        stage = _stage_dir(run_dir, steps)
        if os.path.exists(os.path.join(stage, 'stage.json')):
          continue
        args = [sys.executable, 'bin/train.py', *_flags(spec['train'], opts.fmnist_npz),
                *_flags(ROWS[row]['flags'], opts.fmnist_npz, spec['monitor']), f'--seed={seed}',
                f'--model_dir={run_dir}', f'--train_steps={steps}']
        print(f'{opts.data} {row} seed {seed}: training to {steps} steps', flush=True)
        wall, cpu = _run(pin + args, os.path.join(run_dir, 'train.log'))
        with open(os.path.join(run_dir, 'summary.json')) as f:
          summary = json.load(f)
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(os.path.join(run_dir, 'export'), os.path.join(stage, 'export'))
        record = dict(summary, steps=steps, epochs=round(steps / spec['steps_per_epoch'], 2),
                      wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1), args=args[1:],
                      cpus=opts.cpus or None, cpu=machine)
        with open(os.path.join(stage, 'stage.json'), 'w') as f:
          json.dump(record, f, indent=2)
        print(f'  {steps} steps: {wall:.0f} s wall, {summary["step_seconds"]:.0f} s in steps, '
              f'{cpu:.0f} s CPU; validation {summary["validation"]}', flush=True)


def evaluate(opts):
  spec = DATA[opts.data]
  pin = ['taskset', '-c', opts.cpus] if opts.cpus else []
  for seed in opts.seeds:
    for row in opts.rows:
      run_dir = os.path.join(opts.out, opts.data, f'{row}-seed{seed}')
      for fraction in opts.budgets or ROWS[row]['budgets']:
        stage = _stage_dir(run_dir, _steps(opts.data, fraction))
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
        wall, _ = _run(pin + args, os.path.join(stage, 'eval.log'))
        print(f'  {wall:.0f} s', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('command', choices=['train', 'evaluate', 'summarize'])
  parser.add_argument('--data', choices=sorted(DATA), default='digits')
  parser.add_argument('--out', default='runs/cheaper')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--rows', default='', help="default: the data's rows (DATA[data]['rows'])")
  parser.add_argument('--cpus', default='',
                      help='train / evaluate pinned to these cores (taskset -c), e.g. 1')
  parser.add_argument('--fmnist_npz', default='runs/fashion_mnist.npz')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--protocol', default='autoattack')
  parser.add_argument('--budgets', default='',
                      help="train: to these budgets instead of the row's (fractions of the "
                           "data's steps; above 1 continues a run, e.g. a cheap row to the CPU "
                           "seconds of a fraction of faithful's); evaluate: only these budgets; "
                           "default every budget of the row")
  parser.add_argument('--doc', default=None, help='summarize: output prefix (.md, .json, .png)')
  opts = parser.parse_args()
  opts.seeds = [int(s) for s in opts.seeds.split(',') if s]
  opts.rows = [r for r in opts.rows.split(',') if r] or list(DATA[opts.data]['rows'])
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

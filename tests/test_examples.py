"""The README's example script runs as documented: a user model on user arrays, MirroredStrategy
over two logical CPUs, resume on re-run, export, AutoAttack on the export."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # two runs of the example, each with a 500-image validation (CI: --runslow)
def test_train_your_own_model_example_trains_resumes_exports_and_evaluates(tmp_path):
  args = [sys.executable, os.path.join(ROOT, 'examples', 'train_your_own_model.py'),
          f'--model_dir={tmp_path / "run"}', '--train_steps=4', '--eval_examples=20',
          '--cpu_replicas=2', '--quick']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  first = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert '4 steps on 2 replicas' in first.stdout and 'Resumed' not in first.stdout
  assert os.path.exists(tmp_path / 'run' / 'export' / 'saved_model.pb')
  assert '| autoattack | apgd-ce |' in first.stdout and '+ square' in first.stdout
  again = subprocess.run(args[:3] + ['--train_steps=6'] + args[4:], capture_output=True,
                         text=True, timeout=900, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from step 4' in again.stdout and '6 steps on 2 replicas' in again.stdout


@pytest.mark.slow  # the example script, run as a user runs it (CI: --runslow)
def test_keras_fit_example_trains_with_callbacks_exports_and_evaluates(tmp_path):
  out = tmp_path / 'run'
  args = [sys.executable, os.path.join(ROOT, 'examples', 'keras_fit.py'), f'--out_dir={out}',
          '--epochs=2', '--eval_examples=20', '--quick']
  run = subprocess.run(args, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert run.returncode == 0, run.stderr[-3000:]
  assert '2 epochs trained' in run.stdout
  with open(out / 'log.csv') as f:
    header, *rows = f.read().splitlines()
  assert len(rows) == 2 and 'val_avg_margin' in header and 'avg_eps' in header
  assert os.path.exists(out / 'best.weights.h5') and not os.path.exists(out / 'backup')
  assert os.path.exists(out / 'export' / 'saved_model.pb')
  assert '| autoattack | apgd-ce |' in run.stdout and '+ square' in run.stdout

"""Replays the smallest row of docs/RESULTS.md (standard training, seed 0) and checks that it
stays within the recorded spread. Slow (about 4 minutes): run with `pytest --runslow`."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_standard_row_of_the_linf_study_reproduces(tmp_path):
  with open(os.path.join(ROOT, 'docs', 'study', 'linf.json')) as f:
    recorded = json.load(f)['standard']
  run = tmp_path / 'standard-seed0'
  train = [sys.executable, os.path.join(ROOT, 'bin', 'train.py'), '--dataset=mnist_5k',
           '--norm=Linf', '--model=lenet5_madry', '--nb_iter=10', '--train_steps=700',
           '--learning_rate=1e-3', '--checkpoint_every=350', '--log_every=350',
           '--objective=standard', '--seed=0', f'--model_dir={run}']
  subprocess.run(train, check=True, capture_output=True, timeout=1800)
  evaluate = [sys.executable, os.path.join(ROOT, 'bin', 'evaluate.py'),
              f'--saved_model={run / "export"}', '--dataset=mnist_5k', '--norm=Linf',
              '--eps=0.1,0.2,0.3,0.4', '--num_examples=200', '--nb_restart=4',
              '--margin_nb_iter=20',
              f'--output_dir={run / "eval"}']
  subprocess.run(evaluate, check=True, capture_output=True, timeout=1800)
  result = json.loads((run / 'eval' / 'results.json').read_text())

  def within(value, values, slack):
    return min(values) - slack <= value <= max(values) + slack

  assert within(result['clean_acc'], recorded['clean'], 0.02)
  for eps, values in recorded['robust'].items():
    assert within(result['robust_acc'][eps], values, 0.03), eps
  assert within(result['margin']['min_of_both']['mean'], recorded['margin'],
                0.15 * max(recorded['margin']))

"""The study scripts of docs/study: the smallest row of docs/RESULTS.md replayed (standard
training, seed 0; about 10 minutes on one core: `pytest --runslow -m replay`) within the recorded
spread, the summaries' tables, and the perturbation-memory diagnosis on a small run."""
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study_module(name):
  """A script of docs/study, imported as a module."""
  sys.path.insert(0, os.path.join(ROOT, 'docs', 'study'))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.pop(0)


@pytest.mark.slow
@pytest.mark.replay  # not in CI: the longest test by far (BUILD.md, "Test tiers")
def test_standard_row_of_the_linf_study_reproduces(tmp_path):
  with open(os.path.join(ROOT, 'docs', 'study', 'linf.json')) as f:
    recorded = json.load(f)['standard']
  # The study's own script, restricted to this row, so the replay cannot drift from the study.
  env = dict(os.environ, SEEDS='0', ONLY='standard',
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  subprocess.run(['bash', os.path.join('docs', 'study', 'run_study.sh'), 'Linf', str(tmp_path)],
                 cwd=ROOT, env=env, check=True, capture_output=True, timeout=3600)
  run = tmp_path / 'standard-seed0'
  result = json.loads((run / 'eval' / 'results.json').read_text())

  def within(value, values, slack):
    return min(values) - slack <= value <= max(values) + slack

  assert within(result['clean_acc'], recorded['clean'], 0.02)
  for eps, values in recorded['robust'].items():
    assert within(result['robust_acc'][eps], values, 0.03), eps
  assert within(result['margin']['min_of_all']['mean'], recorded['margin'],
                0.15 * max(recorded['margin']))


def _fake_run(study_dir, name, seed, clean, robust, margin):
  run = study_dir / f'{name}-seed{seed}'
  (run / 'eval').mkdir(parents=True)
  (run / 'summary.json').write_text(json.dumps({'seconds': 100.0 + seed}))
  (run / 'eval' / 'results.json').write_text(json.dumps({
      'clean_acc': clean, 'robust_acc': robust, 'avg_rob_acc': sum(robust.values()) / 2,
      'margin': {'min_of_all': {'mean': margin}}, 'sanity': {'warnings': []},
      'timing': {'seconds': 50.0}, 'eps': [0.1, 0.2], 'norm': 'Linf'}))


def test_summarize_reports_mean_and_spread_over_seeds(tmp_path):
  summarize = _study_module('summarize')
  _fake_run(tmp_path, 'mma', 0, 0.9, {'0.1': 0.8, '0.2': 0.6}, 0.30)
  _fake_run(tmp_path, 'mma', 1, 0.7, {'0.1': 0.6, '0.2': 0.2}, 0.20)
  _fake_run(tmp_path, 'standard', 0, 0.95, {'0.1': 0.1, '0.2': 0.0}, 0.10)
  summarize.main(str(tmp_path), str(tmp_path / 'out'))
  table = (tmp_path / 'out.md').read_text().splitlines()
  assert [line.split('|')[1].strip() for line in table[2:]] == ['standard', 'mma']  # paper order
  assert '| mma | 2 | 80.0 (70.0-90.0) | 70.0 (60.0-80.0) | 40.0 (20.0-60.0) |' in table[3]
  assert '0.250 (0.200-0.300) | 100 (100-101) | 50 (50-50) |' in table[3]
  summary = json.loads((tmp_path / 'out.json').read_text())
  assert summary['mma']['robust']['0.2'] == [0.6, 0.2]
  assert (tmp_path / 'out.png').stat().st_size > 1000


def _fake_stage(run, steps, step_cpu, robust, unrecorded=None):
  stage = run / f'stage-{steps}steps'
  (stage / 'eval').mkdir(parents=True)
  (stage / 'stage.json').write_text(json.dumps({
      'steps': steps, 'step_seconds': 1.0, 'wall_seconds': 2.0, 'cpu_seconds': step_cpu + 10,
      'step_cpu_seconds': step_cpu, 'validation': {'avg_margin': 0.2}}))
  (stage / 'eval' / 'results.json').write_text(json.dumps({
      'clean_acc': 0.9, 'num_examples': 10, 'sanity': {'warnings': []},
      'protocols': {'autoattack': {'avg_rob_acc': robust}}}))
  if unrecorded:
    (stage / 'unrecorded.json').write_text(json.dumps(unrecorded))


def test_cheaper_summary_adds_unrecorded_seconds_and_marks_them(tmp_path):
  """A stage whose process stopped before it wrote its record carries a hand estimate in
  unrecorded.json: the cumulative CPU seconds add it from that stage on and say '~'."""
  cheaper_summary = _study_module('cheaper_summary')
  run = tmp_path / 'runs' / 'preset' / 'faithful-seed0'
  _fake_stage(run, 500, 100.0, 0.1)
  _fake_stage(run, 1000, 50.0, 0.2, {'step_cpu_seconds': 70, 'cpu_seconds': 80, 'why': 'test'})
  cheaper_summary.main(str(tmp_path / 'runs'), str(tmp_path / 'out'))
  table = (tmp_path / 'out.md').read_text()
  assert '| faithful | 500 | 1 | 1 (1-1) | 2 (2-2) | 100 (100-100) | 110 (110-110) |' in table
  assert '| faithful | 1000 | 1 | 2 (2-2) | 4 (4-4) | ~220 (220-220) | ~250 (250-250) |' in table
  assert (tmp_path / 'out-preset.png').stat().st_size > 1000


@pytest.mark.slow  # traces seven attacks; a study tool, not the product
def test_memory_diagnosis_measures_every_attacked_example(data8, warm_weights, tmp_path):
  """docs/study/memory_diagnosis.py on a one-epoch memory run: most examples are attacked from a
  stored start, every attack's eps lies in (0, maxeps], 'no success' means at or above d_max,
  and the table's classes add up to its 'all' row."""
  from helpers import tiny_config, warm_start  # pylint: disable=import-outside-toplevel
  from mma_tf import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  memory_diagnosis = _study_module('memory_diagnosis')
  config = tiny_config(model='small_cnn', batch_size=16, perturbation_memory=True, nb_iter=1,
                       eps_iter_scale=0.5, train_steps=10, checkpoint_every=10)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=lambda m: None)
  warm_start([trainer], warm_weights)
  trainer.train()
  r, none, step, run_config = memory_diagnosis.diagnose(str(tmp_path), examples=160, data=data8)
  assert step == 10 and len(r['label']) == 160
  attacked = r['correct'] & r['known']
  assert attacked.sum() >= 80  # the warm model gets most digits right; one epoch visits all
  for name in none:
    eps = r[name][attacked]
    assert np.all((eps > 0) & (eps <= run_config.maxeps)), name
    assert np.all(eps[none[name][attacked]] >= run_config.hinge_maxeps), name
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    memory_diagnosis.report(str(tmp_path), r, none, step, run_config)
  rows = [line.split('|') for line in out.getvalue().splitlines() if line.startswith('| ')]
  counts = {row[1].strip(): int(row[2]) for row in rows if row[1].strip().isdigit()
            or row[1].strip() == 'all'}
  assert counts['all'] == attacked.sum() == sum(v for k, v in counts.items() if k != 'all')

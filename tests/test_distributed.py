"""Distributed paths: two real MultiWorkerMirrored workers (run, crash between the chief's save
and a worker's, restart) and XLA-compiled validation on two replicas (REVIEW P6a, P6b)."""
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config, tiny_data
from mma_tf import trainer as trainer_lib
from test_trainer import _steps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, 'mwms_worker.py')
CRASH_EXIT_CODE = 17  # mwms_worker.CRASH_EXIT_CODE (not imported: it starts TF's logging first)


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _launch(args, config=None, command=(sys.executable, WORKER), stderr=subprocess.STDOUT):
  """Starts the two workers of a loopback cluster (127.0.0.1 only); worker 0 is the chief.
  `config`: extra configuration fields for both workers (mwms_worker.py's MWMS_CONFIG);
  `command`: what each worker runs, with `args` after it (default: mwms_worker.py); `stderr`:
  where both write theirs, or a list of one target per worker."""
  cluster = {'worker': [f'127.0.0.1:{p}' for p in _free_ports(2)]}
  procs = []
  for task in range(2):
    env = dict(os.environ, PYTHONPATH=ROOT, MWMS_CONFIG=json.dumps(config or {}),
               TF_CONFIG=json.dumps({'cluster': cluster,
                                     'task': {'type': 'worker', 'index': task}}))
    procs.append(subprocess.Popen(list(command) + [str(a) for a in args], env=env,
                                  stdout=subprocess.PIPE, text=True,
                                  stderr=stderr[task] if isinstance(stderr, list) else stderr))
  return procs


def _results(procs, timeout=400):
  """Waits (bounded) for both workers; a hang fails the test instead of blocking it."""
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      assert p.returncode == 0, out[-3000:]
      outputs.append(json.loads(out.split('RESULT ')[-1].splitlines()[0]))
  finally:
    for p in procs:
      p.kill()
      p.wait()
  return outputs


@pytest.mark.slow  # two worker processes (CI: --runslow)
@pytest.mark.processes
def test_multi_worker_run_completes_and_workers_agree(tmp_path):
  a, b = _results(_launch([tmp_path / 'run', 40]))
  assert a['step'] == b['step'] == 40 and a['replicas'] == 2 and a['chief'] and not b['chief']
  assert a['weights_sha'] == b['weights_sha']
  np.testing.assert_array_equal(a['eps_memory'], b['eps_memory'])
  assert np.count_nonzero(a['eps_memory']) > 0
  assert os.path.isdir(tmp_path / 'run' / 'export')  # the chief exported
  assert not any(n.startswith('.worker') for n in os.listdir(tmp_path / 'run'))


@pytest.mark.slow  # four worker processes (CI: --runslow)
@pytest.mark.processes
def test_worker_crash_between_saves_restarts_every_worker_from_the_chiefs_step(tmp_path):
  run = tmp_path / 'run'
  # Checkpoints at steps 8, 16, 20 (epoch end) and 24; the non-chief dies after the chief's save
  # of step 24, before its own. (With per-worker restore it would resume at 20, the chief at 24.)
  # 24 steps: enough for the model to classify examples, so the eps table is not all zeros.
  chief, worker = _launch([run, 28, 8, 24])
  try:
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == CRASH_EXIT_CODE, out[-3000:]
  finally:
    for p in (chief, worker):  # the chief now waits for a peer that is gone
      p.kill()
      p.wait()
  assert tf.train.latest_checkpoint(str(run / 'ckpt')).endswith('ckpt-24')
  scratch = run / '.worker_worker_1'
  assert not os.path.exists(scratch / 'ckpt'), 'a non-chief checkpoint outlived its save'

  a, b = _results(_launch([run, 28, 8]))
  assert a['restored']['step'] == b['restored']['step'] == 24
  assert a['restored']['weights_sha'] == b['restored']['weights_sha']
  np.testing.assert_array_equal(a['restored']['eps_memory'], b['restored']['eps_memory'])
  assert np.count_nonzero(a['restored']['eps_memory']) > 0  # the table came back, not zeros
  assert a['step'] == b['step'] == 28
  assert a['weights_sha'] == b['weights_sha']
  np.testing.assert_array_equal(a['eps_memory'], b['eps_memory'])
  assert not any(n.startswith('.worker') for n in os.listdir(run))


def _wait_for_line(proc, pattern, timeout):
  """Reads `proc`'s stdout until a line matches `pattern` (bounded); returns the lines read."""
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
  seen, deadline = [], time.time() + timeout
  while time.time() < deadline:
    try:
      seen.append(lines.get(timeout=1))
    except queue.Empty:
      continue
    if re.match(pattern, seen[-1]):
      return seen
  raise AssertionError(f'no line matching {pattern!r} in {timeout} s: {"".join(seen)[-3000:]}')


@pytest.mark.slow  # two worker processes (CI: --runslow)
@pytest.mark.processes
def test_a_lost_worker_is_one_plain_error_naming_the_step_to_resume_from(tmp_path):
  """mma-train --strategy=multi_worker: when a peer worker is killed, the other one stops with a
  one-line error (what happened, what to do, the step a re-run resumes from: the last checkpoint)
  and exit status 3, not a traceback of the failed collective."""
  run = tmp_path / 'run'
  flags = ['--strategy=multi_worker', '--train_steps=400', '--batch_size=20', '--nb_iter=1',
           '--num_search_steps=2', '--log_every=2', '--checkpoint_every=4',
           '--eval_batch_size=250', f'--model_dir={run}']
  # The chief's stderr to a file: a pipe read only at the end could fill and block it.
  with open(tmp_path / 'chief.stderr', 'w') as chief_stderr:
    chief, worker = _launch(flags, command=(sys.executable, '-m', 'mma_tf.cli.train'),
                            stderr=[chief_stderr, subprocess.DEVNULL])
    try:
      _wait_for_line(chief, r'step 6/400 ', timeout=300)  # the checkpoint of step 4 is saved
      worker.kill()
      worker.wait()
      chief.wait(timeout=120)  # the chief notices, and does not hang
    finally:
      for p in (chief, worker):
        p.kill()
        p.wait()
  stderr = (tmp_path / 'chief.stderr').read_text()
  assert chief.returncode == 3, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith('error: A peer worker is gone'), stderr[-3000:]
  assert 'Re-run every worker with the same command' in last, last
  resumes = int(re.search(r'training resumes from step (\d+)', last).group(1))
  assert resumes >= 4 and tf.train.latest_checkpoint(str(run / 'ckpt')).endswith(f'-{resumes}')


@pytest.fixture(scope='module')
def data():
  return tiny_data()


@pytest.mark.slow  # XLA-compiles the validation step for each of two replicas (CI: --runslow)
def test_jit_compiled_validation_on_two_replicas_matches_graph_validation(data, tmp_path,
                                                                          two_cpu_strategy):
  """--jit_compile with --strategy=mirrored: the validation replica function is compiled inside
  strategy.run (as the training attacks are) and gives the graph-mode numbers."""
  warm = trainer_lib.Trainer(tiny_config(objective='standard'), str(tmp_path / 'warm'),
                             data=data, log=lambda m: None)
  _steps(warm, 25, epochs=2)  # a model that classifies, so margins and PGD accuracy are > 0
  results = {}
  for jit in (False, True):
    # Few search steps and one batch: compiling the unrolled bisection dominates on CPU.
    config = tiny_config(jit_compile=jit, num_search_steps=2, nb_iter=2, eval_batch_size=100)
    trainer = trainer_lib.Trainer(config, str(tmp_path / f'jit{jit}'), two_cpu_strategy,
                                  data=data, log=lambda m: None)
    trainer.task.model.set_weights(warm.task.model.get_weights())
    results[jit] = trainer.evaluate('validation')
    assert trainer.task.eval_step.experimental_get_tracing_count() == 1
  plain, jit = results[False], results[True]
  assert plain['clean_acc'] > 0.5 and plain['avg_margin'] > 0.02, plain
  assert jit['clean_acc'] == plain['clean_acc']
  # XLA may reorder float sums: allow a flip of one or two bisection decisions in 100 examples.
  assert abs(jit['pgd_acc'] - plain['pgd_acc']) <= 0.02, (plain, jit)
  assert abs(jit['avg_margin'] - plain['avg_margin']) <= 0.005, (plain, jit)

"""One worker of the MultiWorkerMirroredStrategy tests: trains MMA steps, prints checksums.

  mwms_worker.py MODEL_DIR STEPS [CHECKPOINT_EVERY [CRASH_STEP]]

MWMS_CONFIG (environment, JSON) adds configuration fields, e.g. {"perturbation_memory": true}.

With CRASH_STEP, the non-chief worker dies (exit code 17) right after the chief's save of step
CRASH_STEP and before its own: the crash REVIEW P6b describes. The chief is then left waiting in
its next collective and the test kills it. The RESULT line gives the step, weights and eps table
just after restore and at the end.
"""
import hashlib
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import tiny_config, tiny_data  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402

CRASH_EXIT_CODE = 17


def _state(trainer):
  weights = np.concatenate([v.numpy().ravel() for v in trainer.task.model.weights])
  return {'step': int(trainer.task.step.numpy()),
          'weights_sha': hashlib.sha256(weights.tobytes()).hexdigest(),
          'weights': float(np.abs(weights).sum()), 'weights_head': weights[:5].tolist(),
          'eps_memory': trainer.task.eps_memory.numpy().tolist(),
          'perturbation_memory_sha': (hashlib.sha256(
              trainer.task.perturbation_memory.stored().numpy().tobytes()
              + trainer.task.perturbation_memory.known.numpy().tobytes()).hexdigest()
                                      if trainer.task.perturbation_memory else None),
          'perturbation_known': (int(trainer.task.perturbation_memory.known.numpy().sum())
                                 if trainer.task.perturbation_memory else 0)}


def _crash_after_chief_save(trainer, crash_step):
  """Wraps the non-chief's checkpoint save: at crash_step, wait for the chief's, then die."""
  save = trainer.checkpoints.manager.save
  chief_dir = os.path.join(trainer.model_dir, 'ckpt')

  def save_or_die(checkpoint_number=None, **kwargs):
    if checkpoint_number == crash_step:
      deadline = time.time() + 120
      while not (tf.train.latest_checkpoint(chief_dir) or '').endswith(f'-{crash_step}'):
        if time.time() > deadline:
          print(f'chief never saved step {crash_step}', flush=True)
          os._exit(1)
        time.sleep(0.1)
      print(f'CRASH after the chief saved step {crash_step}', flush=True)
      os._exit(CRASH_EXIT_CODE)
    return save(checkpoint_number=checkpoint_number, **kwargs)

  trainer.checkpoints.manager.save = save_or_die


def main(model_dir, steps, checkpoint_every=10, crash_step=None):
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  trainer = trainer_lib.Trainer(
      tiny_config(train_steps=steps, learning_rate=3e-3, checkpoint_every=checkpoint_every,
                  **json.loads(os.environ.get('MWMS_CONFIG', '{}'))),
      model_dir, strategy, data=tiny_data(), log=lambda m: None)
  if crash_step is not None and not trainer.is_chief:
    _crash_after_chief_save(trainer, crash_step)
  trainer.restore()
  restored = _state(trainer)
  summary = trainer.train()
  print('RESULT ' + json.dumps(dict(_state(trainer), summary_step=summary['step'],
                                    replicas=strategy.num_replicas_in_sync, chief=trainer.is_chief,
                                    restored=restored)), flush=True)


if __name__ == '__main__':
  main(sys.argv[1], *[int(a) for a in sys.argv[2:]])

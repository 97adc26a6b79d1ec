"""One worker of the MultiWorkerMirroredStrategy test: trains a few MMA steps, prints checksums."""
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import tiny_config, tiny_data  # noqa: E402
from mma_tf import trainer as trainer_lib  # noqa: E402


def main(model_dir, steps):
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  trainer = trainer_lib.Trainer(tiny_config(train_steps=steps, learning_rate=3e-3), model_dir, strategy,
                                data=tiny_data(), log=lambda m: None)
  summary = trainer.train()
  weights = np.concatenate([v.numpy().ravel() for v in trainer.model.weights])
  print('RESULT ' + json.dumps({
      'step': summary['step'], 'replicas': strategy.num_replicas_in_sync,
      'weights': float(np.abs(weights).sum()), 'weights_head': weights[:5].tolist(),
      'eps_memory': trainer.eps_memory.numpy().tolist()}), flush=True)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))

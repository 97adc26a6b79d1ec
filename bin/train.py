"""Same as the `mma-train` command: `python bin/train.py --help` lists the flags."""
from mma_tf.cli.train import run

if __name__ == '__main__':
  run()

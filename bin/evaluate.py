"""Same as the `mma-evaluate` command: `python bin/evaluate.py --help` lists the flags."""
from mma_tf.cli.evaluate import run

if __name__ == '__main__':
  run()

"""A classifier mma_tf did not build or train: a plain Keras CNN fit with `model.fit` on the
embedded digits (no adversarial training), exported with `model.export`. For checking that the
evaluator (e.g. `--protocol=autoattack,fast`) handles any exported classifier.

  python bench/foreign_keras_export.py --out=runs/foreign/export [--epochs=3]
"""
import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mma_tf import data as data_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='export directory (must not exist)')
  parser.add_argument('--epochs', type=int, default=3)
  opts = parser.parse_args()
  if os.path.exists(opts.out):
    parser.error(f'{opts.out} exists; choose another --out')
  keras.utils.set_random_seed(0)
  data = data_lib.load('mnist_5k')
  x, y, _ = data.eval_split('validation')  # any labelled digits; the test split stays unseen
  train_x, train_y = [], []
  for batch in data_lib.train_dataset(data, 100, seed=0, epoch=0):
    train_x.append(batch['image'].numpy())
    train_y.append(batch['label'].numpy())
  model = keras.Sequential([
      keras.Input(data.image_shape),
      keras.layers.Conv2D(16, 5, activation='relu'), keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(32, 5, activation='relu'), keras.layers.MaxPooling2D(),
      keras.layers.Flatten(), keras.layers.Dense(64, activation='relu'), keras.layers.Dense(10)])
  model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  model.fit(np.concatenate(train_x), np.concatenate(train_y), batch_size=50, epochs=opts.epochs,
            validation_data=(x, y), verbose=2)
  model.export(opts.out)
  print(f'exported to {opts.out}')


if __name__ == '__main__':
  main()

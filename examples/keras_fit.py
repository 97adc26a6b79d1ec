"""Train your own Keras model with MMA through compile() and fit(), then attack the export.

  python examples/keras_fit.py --out_dir=runs/keras_fit

Interrupted (Ctrl-C, a preempted machine) and re-run with the same command, BackupAndRestore
resumes from the last finished epoch exactly: weights, optimizer and the eps memory. The best
epoch by validation margin is kept by ModelCheckpoint and exported; AutoAttack then attacks the
export. Replace `build_model` and `load_my_data` with yours.
"""
import argparse
import os

import mma_tf  # first: it picks TensorFlow's CPU kernels before TF loads (mma_tf/__init__.py)
import keras

from mma_tf import data, evaluation, export


def build_model(input_shape, num_classes):
  """Any Keras model from [0, 1] images to logits (no final softmax); here a functional one."""
  images = keras.Input(input_shape)
  x = keras.layers.Conv2D(32, 5, strides=2, padding='same', activation='relu')(images)
  x = keras.layers.Conv2D(64, 5, strides=2, padding='same', activation='relu')(x)
  x = keras.layers.Dense(128, activation='relu')(keras.layers.Flatten()(x))
  return keras.Model(images, keras.layers.Dense(num_classes)(x), name='my_net')


def load_my_data():
  """Your arrays: images [N, H, W, C] as float in [0, 1] (or uint8 0-255) and integer labels.
  Here: the 5,000 real MNIST digits that ship with mma_tf, as (train, test) pairs."""
  digits = data.load('mnist_5k')
  return ((digits.train_images / 255.0).astype('float32'), digits.train_labels), (
      (digits.test_images / 255.0).astype('float32'), digits.test_labels)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default='runs/keras_fit')
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--eval_examples', type=int, default=200)
  parser.add_argument('--quick', action='store_true',
                      help='A few hundred examples and tiny attack budgets: a smoke test of the '
                      'path, not a training run.')
  args = parser.parse_args()

  (x_train, y_train), (x_test, y_test) = load_my_data()
  if args.quick:
    x_train, y_train = x_train[:400], y_train[:400]
  x_val, y_val, x_train, y_train = x_train[:100], y_train[:100], x_train[100:], y_train[100:]
  base = build_model(x_train.shape[1:], 10)
  # MMA with the embedded digits' settings (the CLI's mnist_5k preset); any TrainConfig field
  # that says what a step computes is a keyword here.
  budget = dict(nb_iter=2, num_search_steps=3) if args.quick else dict(nb_iter=10)
  model = mma_tf.keras.AdversarialModel(base, objective='mma', norm='Linf', hinge_maxeps=0.45,
                                        test_eps=0.3, test_eps_iter=0.075, **budget)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  best = os.path.join(args.out_dir, 'best.weights.h5')
  callbacks = [
      keras.callbacks.BackupAndRestore(os.path.join(args.out_dir, 'backup')),
      keras.callbacks.ModelCheckpoint(best, monitor='val_avg_margin', mode='max',
                                      save_best_only=True, save_weights_only=True),
      keras.callbacks.CSVLogger(os.path.join(args.out_dir, 'log.csv'), append=True),
  ]
  os.makedirs(args.out_dir, exist_ok=True)
  history = model.fit(x_train, y_train, batch_size=50, epochs=args.epochs,
                      validation_data=(x_val, y_val), callbacks=callbacks, verbose=2)
  print(f'{len(history.epoch)} epochs trained; validation margin by epoch: '
        f'{[round(m, 4) for m in history.history.get("val_avg_margin", [])]}', flush=True)

  model.load_weights(best)  # the epoch with the best validation margin, as the Trainer exports
  export_dir = os.path.join(args.out_dir, 'export')
  model.export(export_dir, verbose=False)  # [0, 1] images -> logits; the memories stay out
  predict, _ = export.load_classifier(export_dir)
  images, labels = x_test[:args.eval_examples], y_test[:args.eval_examples]
  budgets = dict(apgd_nb_iter=5, fab_nb_iter=5, n_target_classes=2, square_queries=20,
                 margin_estimates=()) if args.quick else {}
  eval_config = evaluation.EvalConfig(norm='Linf', eps=(0.1, 0.2, 0.3), protocol='autoattack',
                                      **budgets)
  results, _ = evaluation.evaluate(predict, images, labels, eval_config,
                                   progress=lambda text: print(' ', text, flush=True))
  print(evaluation.markdown_table(results, f'{export_dir}, AutoAttack'))


if __name__ == '__main__':
  main()

"""Train your own Keras model on your own data with MMA, on every local GPU, then attack the export.

  python examples/train_your_own_model.py --model_dir=runs/my_model

Re-running the same command resumes from the last checkpoint (a finished run just re-evaluates).
Without GPUs, --cpu_replicas=2 splits the CPU into two logical devices, so MirroredStrategy still
runs two replicas (as the tests do). Replace `build_model` and `load_my_data` with yours.
"""
import argparse

import mma_tf  # first: it picks TensorFlow's CPU kernels before TF loads (mma_tf/__init__.py)
import keras
import tensorflow as tf

from mma_tf import data, evaluation, export


def build_model(input_shape, num_classes):
  """Any Keras model from [0, 1] images to logits (no final softmax). The trainer calls it inside
  the strategy's scope, so its variables are mirrored on every device."""
  return keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(32, 3, activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Conv2D(64, 3, activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(128, activation='relu'),
      keras.layers.Dense(num_classes),
  ])


def load_my_data():
  """Your arrays: images [N, H, W, C] as uint8 0-255 (or float in [0, 1]) and integer labels.
  Here: the 5,000 real MNIST digits that ship with mma_tf."""
  digits = data.load('mnist_5k')
  return digits.train_images, digits.train_labels, digits.test_images, digits.test_labels


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', default='runs/my_model')
  parser.add_argument('--train_steps', type=int, default=1400)
  parser.add_argument('--eval_examples', type=int, default=200)
  parser.add_argument('--cpu_replicas', type=int, default=0,
                      help='Split the CPU into this many logical devices (no GPUs needed).')
  parser.add_argument('--quick', action='store_true',
                      help='Tiny attack budgets: a smoke test of the path, not an evaluation.')
  args = parser.parse_args()
  if args.cpu_replicas:
    cpu, = tf.config.list_physical_devices('CPU')
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)

  x_train, y_train, x_test, y_test = load_my_data()
  source = data.from_arrays(x_train, y_train, x_test, y_test, num_validation=500)
  # The embedded digits' settings (MNIST radii, Adam 1e-3); any field can be overridden.
  config = mma_tf.preset('mnist_5k', 'Linf', train_steps=args.train_steps, hinge_maxeps=0.45,
                         checkpoint_every=350, log_every=70)
  # All local GPUs; or the logical CPUs made above.
  cpus = [d.name for d in tf.config.list_logical_devices('CPU')] if args.cpu_replicas else None
  strategy = tf.distribute.MirroredStrategy(cpus)
  trainer = mma_tf.Trainer(config, args.model_dir, strategy, data=source, model=build_model)
  summary = trainer.train()  # restores from model_dir first, so re-running resumes
  print(f'{summary["step"]} steps on {strategy.num_replicas_in_sync} replicas; best validation '
        f'margin {summary["best_val_value"]:.4f} at step {summary["best_step"]}', flush=True)

  predict, _ = export.load_classifier(summary['export'])  # the exported best model, reloaded
  images, labels, _ = source.eval_split('test', limit=args.eval_examples)
  budgets = dict(apgd_nb_iter=5, fab_nb_iter=5, n_target_classes=2, square_queries=20,
                 margin_estimates=()) if args.quick else {}
  eval_config = evaluation.EvalConfig(norm='Linf', eps=(0.1, 0.2, 0.3), protocol='autoattack',
                                      **budgets)
  results, _ = evaluation.evaluate(predict, images, labels, eval_config,
                                   progress=lambda text: print(' ', text, flush=True),
                                   strategy=strategy)
  print(evaluation.markdown_table(results, f'{args.model_dir}/export, AutoAttack'))


if __name__ == '__main__':
  main()

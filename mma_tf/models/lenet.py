"""LeNet5Madry: Madry et al.'s MNIST network as advertorch builds it (docs/paper_notes.md 3.1)."""
import math

import keras

from mma_tf.models.seeding import LayerSeeds


def _torch_default_init(fan_in, seeds):
  """PyTorch's default Linear/Conv init: W and b ~ U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return dict(kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3, 'fan_in', 'uniform',
                                                                    seed=seeds.next()),
              bias_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seeds.next()))


def lenet5_madry(input_shape=(28, 28, 1), num_classes=10, name='lenet5_madry', seed=0):
  """conv5x5x32 - pool - conv5x5x64 - pool - fc1024 - fc10; inputs in [0, 1], no normalisation."""
  channels = input_shape[-1]
  seeds = LayerSeeds(seed)
  return keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(32, 5, padding='same', activation='relu',
                          **_torch_default_init(5 * 5 * channels, seeds)),
      keras.layers.MaxPooling2D(2),
      keras.layers.Conv2D(64, 5, padding='same', activation='relu',
                          **_torch_default_init(5 * 5 * 32, seeds)),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(1024, activation='relu', **_torch_default_init(7 * 7 * 64, seeds)),
      keras.layers.Dense(num_classes, **_torch_default_init(1024, seeds)),
  ], name=name)

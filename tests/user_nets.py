"""User-style models for tests/test_user_api.py, imported as `user_nets:<factory>` the way
`--model=package.module:factory` imports a user's module."""
import keras
import tensorflow as tf


def functional(input_shape, num_classes):
  inputs = keras.Input(input_shape)
  x = keras.layers.Conv2D(4, 3, padding='same', activation='relu')(inputs)
  x = keras.layers.Flatten()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name='user_functional')


@keras.saving.register_keras_serializable(package='user_nets')
class TwoLayerNet(keras.Model):
  """A subclassed model (no Functional graph), saved to .keras through get_config."""

  def __init__(self, num_classes=10, hidden=16, **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.hidden = num_classes, hidden
    self.flatten = keras.layers.Flatten()
    self.dense1 = keras.layers.Dense(hidden, activation='tanh')
    self.dense2 = keras.layers.Dense(num_classes)

  def call(self, x, training=False):
    return self.dense2(self.dense1(self.flatten(x)))

  def get_config(self):
    return dict(super().get_config(), num_classes=self.num_classes, hidden=self.hidden)


def subclassed(input_shape, num_classes):
  model = TwoLayerNet(num_classes)
  model(tf.zeros([1, *input_shape]))  # create the variables
  return model


def softmax_output(input_shape, num_classes):
  return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                           keras.layers.Dense(num_classes, activation='softmax')])


def random_flip_inside(input_shape, num_classes):
  return keras.Sequential([keras.Input(input_shape), keras.layers.RandomFlip('horizontal'),
                           keras.layers.Flatten(), keras.layers.Dense(num_classes)])


class NoisyInInference(keras.layers.Layer):
  def call(self, x):
    return x + tf.random.normal(tf.shape(x), stddev=0.1)  # ignores `training`


def noisy_at_inference(input_shape, num_classes):
  return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), NoisyInInference(),
                           keras.layers.Dense(num_classes)])


def expects_0_255(input_shape, num_classes):
  """A model whose first layer assumes pixels in [0, 255] (like keras.applications' models)."""
  return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255.0),
                           keras.layers.Flatten(), keras.layers.Dense(num_classes)],
                          name='expects_0_255')


def wrong_classes(input_shape, num_classes):
  return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                           keras.layers.Dense(num_classes + 1)])

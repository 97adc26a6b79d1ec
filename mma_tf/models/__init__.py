"""The paper's models and a small CNN; any Keras model mapping [0, 1] images to logits works."""
import keras

from mma_tf.models.lenet import lenet5_madry
from mma_tf.models.wide_resnet import PerImageStandardize, wide_resnet


def small_cnn(input_shape=(28, 28, 1), num_classes=10, name='small_cnn'):
  """A fast CNN for the embedded default run: conv16-pool-conv32-pool-fc64-fc10."""
  return keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(16, 3, padding='same', activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Conv2D(32, 3, padding='same', activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation='relu'),
      keras.layers.Dense(num_classes),
  ], name=name)


MODELS = {
    'lenet5_madry': lenet5_madry,
    'wrn28_4': lambda **kw: wide_resnet(28, 4, **kw),
    'wrn28_10': lambda **kw: wide_resnet(28, 10, **kw),
    'small_cnn': small_cnn,
}


def build_model(name, input_shape, num_classes):
  """Builds the registered model `name` for images of `input_shape`."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes)

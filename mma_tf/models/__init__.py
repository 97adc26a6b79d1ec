"""The paper's models and a small CNN; any Keras model mapping [0, 1] images to logits works.

Every builder takes a `seed`: each layer's initializer gets its own integer seed derived from it,
so a model's initial weights are a function of (architecture, seed) alone. Building a model never
reads or changes the process-wide random state (no keras.utils.set_random_seed needed).
"""
import keras

from mma_tf.models.lenet import lenet5_madry
from mma_tf.models.seeding import LayerSeeds
from mma_tf.models.wide_resnet import PerImageStandardize, wide_resnet  # noqa: F401 (public)


def small_cnn(input_shape=(28, 28, 1), num_classes=10, name='small_cnn', seed=0):
  """A fast CNN for the embedded default run: conv16-pool-conv32-pool-fc64-fc10."""
  seeds = LayerSeeds(seed)
  glorot = lambda: keras.initializers.GlorotUniform(seed=seeds.next())
  return keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(16, 3, padding='same', activation='relu', kernel_initializer=glorot()),
      keras.layers.MaxPooling2D(2),
      keras.layers.Conv2D(32, 3, padding='same', activation='relu', kernel_initializer=glorot()),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation='relu', kernel_initializer=glorot()),
      keras.layers.Dense(num_classes, kernel_initializer=glorot()),
  ], name=name)


MODELS = {
    'lenet5_madry': lenet5_madry,
    'wrn28_4': lambda **kw: wide_resnet(28, 4, **kw),
    'wrn28_10': lambda **kw: wide_resnet(28, 10, **kw),
    # WRN-10-1: the WideResNet code path (pre-activation blocks, BatchNorm) at toy cost, for
    # tests and smoke runs of the CIFAR settings.
    'wrn10_1': lambda **kw: wide_resnet(10, 1, **kw),
    'small_cnn': small_cnn,
}
BATCHNORM_MODELS = ('wrn28_4', 'wrn28_10', 'wrn10_1')


def build_model(name, input_shape, num_classes, seed=0, sync_batchnorm=False):
  """Builds the registered model `name` for images of `input_shape`, initialised from `seed`.

  sync_batchnorm: BatchNorm layers compute their batch statistics over the global batch (all
  replicas) instead of each replica's share; only for models with BatchNorm.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  kwargs = dict(input_shape=tuple(input_shape), num_classes=num_classes, seed=seed)
  if sync_batchnorm:
    if name not in BATCHNORM_MODELS:
      raise ValueError(f'--sync_batchnorm has no effect on {name!r}, which has no BatchNorm; '
                       f'drop the flag or use one of {BATCHNORM_MODELS}.')
    kwargs['sync_batchnorm'] = True
  return MODELS[name](**kwargs)

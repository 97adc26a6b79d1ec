"""WideResNet-28-k with per-image standardisation inside, as the released CIFAR-10 model
(docs/paper_notes.md 3.2).

BatchNorm under several replicas (tf.distribute): by default each replica normalises with the
statistics of its own share of the batch, as PyTorch's BatchNorm2d under DataParallel /
DistributedDataParallel does; the moving statistics are the mean of the replicas' updates. So one
and two replicas give different steps. `sync_batchnorm=True` (Keras 3
`BatchNormalization(synchronized=True)`) all-reduces the batch moments, so the statistics are those
of the global batch and the step matches one replica's. MMA's train-mode passes (the clean pass, the
AN-PGD bisection forwards with --search_bn_mode=train, the final mixed pass) each update the moving
statistics; see mma_tf/objectives/mma.py::MMA.
"""
import math

import keras
from keras import ops

from mma_tf.models.seeding import LayerSeeds


@keras.saving.register_keras_serializable(package='mma_tf')
class PerImageStandardize(keras.layers.Layer):
  """(x - mean) / max(std, 1/sqrt(N)) per image, with PyTorch's unbiased std (N - 1) as the
  released model computes it; attacks therefore work in [0, 1] pixel space."""

  def call(self, x):
    n = math.prod(x.shape[1:])
    axes = list(range(1, len(x.shape)))
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.sum(ops.square(x - mean), axis=axes, keepdims=True) / (n - 1)
    return (x - mean) / ops.maximum(ops.sqrt(var), 1.0 / math.sqrt(n))


def _conv(filters, kernel, stride, name, seeds):
  # N(0, sqrt(2 / (k*k*out))) as the released WRN init.
  return keras.layers.Conv2D(
      filters, kernel, strides=stride, padding='same', use_bias=False, name=name,
      kernel_initializer=keras.initializers.VarianceScaling(2.0, 'fan_out', 'untruncated_normal',
                                                            seed=seeds.next()))


def _bn(name, synchronized):
  # PyTorch defaults: eps 1e-5, momentum 0.1 (Keras momentum = 1 - 0.1).
  return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name,
                                         synchronized=synchronized)


def _basic_block(x, out_channels, stride, name, seeds, sync):
  """Pre-activation block; a 1x1 shortcut takes the pre-activated input when channels change."""
  in_channels = x.shape[-1]
  o = keras.layers.ReLU()(_bn(f'{name}_bn1', sync)(x))
  shortcut = x if in_channels == out_channels else _conv(
      out_channels, 1, stride, f'{name}_short', seeds)(o)
  o = _conv(out_channels, 3, stride, f'{name}_conv1', seeds)(o)
  o = keras.layers.ReLU()(_bn(f'{name}_bn2', sync)(o))
  o = _conv(out_channels, 3, 1, f'{name}_conv2', seeds)(o)
  return keras.layers.Add()([o, shortcut])


def wide_resnet(depth=28, width=4, input_shape=(32, 32, 3), num_classes=10, name=None, seed=0,
                sync_batchnorm=False):
  """WRN-depth-width: 3 groups of (depth - 4) / 6 blocks, channels 16 / 16w / 32w / 64w.

  sync_batchnorm: batch statistics over all replicas (see the module docstring).
  """
  if (depth - 4) % 6:
    raise ValueError(f'WideResNet depth must be 6n + 4; got {depth}.')
  blocks = (depth - 4) // 6
  seeds = LayerSeeds(seed)
  inputs = keras.Input(input_shape)
  x = PerImageStandardize(name='standardize')(inputs)
  x = _conv(16, 3, 1, 'conv1', seeds)(x)
  for group, (channels, stride) in enumerate([(16 * width, 1), (32 * width, 2), (64 * width, 2)]):
    for b in range(blocks):
      x = _basic_block(x, channels, stride if b == 0 else 1, f'g{group + 1}b{b + 1}', seeds,
                       sync_batchnorm)
  x = keras.layers.ReLU()(_bn('bn_final', sync_batchnorm)(x))
  x = keras.layers.GlobalAveragePooling2D()(x)
  bound = 1.0 / math.sqrt(x.shape[-1])
  logits = keras.layers.Dense(
      num_classes, name='logits', bias_initializer='zeros',
      kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seeds.next()))(x)
  return keras.Model(inputs, logits, name=name or f'wrn_{depth}_{width}')

"""Mixed precision: the dtype policy while a model is built, float32 logits, and loss scaling for
the attacks' input gradients.

Under 'mixed_float16' / 'mixed_bfloat16' the layers compute in 16 bits and keep float32 weights;
everything MMA decides on (logits, losses, margins, the bisection's success test, the eps table)
is float32. Float16 training wraps the optimizer in Keras' LossScaleOptimizer; the attacks scale
their loss too (`loss_scaled`), since an input gradient flows back through the same float16
layers and would underflow to zeros, which a sign step turns into coordinates that never move.
Sign and L2-normalised steps do not depend on the scale. bfloat16 has float32's range and needs no
scaling.
"""
import contextlib
import os

import keras
import tensorflow as tf

from mma_tf.configs import PRECISIONS as POLICIES


@contextlib.contextmanager
def dtype_policy(name):
  """Layers built inside use policy `name`; the previous global policy is restored after."""
  if name not in POLICIES:
    raise ValueError(f'Unknown precision {name!r}; choose one of {POLICIES}.')
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def float32_logits(model, training):
  """images -> float32 logits of a Keras model in the given mode."""
  return lambda images: tf.cast(model(images, training=training), tf.float32)


def loss_scaled(predict, scale):
  """`predict` whose backward pass carries gradients multiplied by `scale` through the model and
  divides them back at the input: input gradients are unchanged in value but do not underflow in
  float16 layers. `scale` is a float or a scalar tensor read at call time."""

  @tf.custom_gradient
  def enter(images):
    return tf.identity(images), lambda g: g / tf.cast(scale, g.dtype)

  @tf.custom_gradient
  def leave(logits):
    return tf.identity(logits), lambda g: g * tf.cast(scale, g.dtype)

  return lambda images: leave(predict(enter(images)))


def has_native_bfloat16():
  """True when a GPU / TPU is visible or the CPU reports avx512_bf16 or amx_bf16."""
  if tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'):
    return True
  try:
    with open('/proc/cpuinfo') as f:
      flags = f.read()
  except OSError:
    return True  # cannot tell (not Linux): do not warn
  return 'avx512_bf16' in flags or 'amx_bf16' in flags


def bfloat16_warning():
  """A warning text when mixed_bfloat16 would be emulated (slower than float32), else None."""
  if os.environ.get('MMA_TF_NO_BF16_WARNING') or has_native_bfloat16():
    return None
  return ('mixed_bfloat16 on a CPU without avx512_bf16 / amx_bf16 support: bfloat16 is emulated '
          'there and usually slower than float32 (BUILD.md, "Throughput"); use float32 on this '
          'machine, mixed_bfloat16 on TPUs or bf16-capable CPUs.')

"""Your own Keras model: where it comes from (`--model=`) and the contract it must meet.

`--model` is a built-in name, `package.module:factory` (importable from the working directory or
PYTHONPATH, called as factory(input_shape=..., num_classes=...) and returning a keras.Model), or
the path of a `.keras` file (loaded with compile=False: its weights are the starting point).
The trainer calls the factory inside the strategy's scope, so every variable is distributed.

`check_classifier` runs once at start-up and refuses, naming the fix: a model that does not take
the data's images, outputs other than [batch, num_classes] logits (a final softmax included),
outputs that change between two inference calls, Keras' random augmentation layers (they would
make the attack's gradients random: augment in the data pipeline instead), and variables created
outside the strategy's scope.
"""
import hashlib
import importlib
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from mma_tf.models import build_model
from mma_tf import configs


def model_factory(spec, seed=0, sync_batchnorm=False):
  """A function (input_shape, num_classes) -> keras.Model for `spec` (see the module docstring)."""
  kind = configs.model_source_kind(spec)
  if kind == 'builtin':
    return lambda input_shape, num_classes: build_model(spec, input_shape, num_classes, seed=seed,
                                                        sync_batchnorm=sync_batchnorm)
  if kind == 'keras_file':
    if not os.path.isfile(spec):
      raise ValueError(f'--model={spec}: no such .keras file.')

    def load(input_shape, num_classes):
      del input_shape, num_classes  # checked against the data by check_classifier
      try:
        return keras.saving.load_model(spec, compile=False)
      except Exception as e:  # zip, JSON and deserialisation errors
        raise ValueError(f'--model={spec} cannot be loaded ({type(e).__name__}: '
                         f'{str(e).splitlines()[0][:300] if str(e) else ""}). A custom layer '
                         'or model class needs @keras.saving.register_keras_serializable() in a '
                         'module imported before loading.') from e
    return load
  factory = import_object(spec)

  def build(input_shape, num_classes):
    model = factory(input_shape=tuple(input_shape), num_classes=int(num_classes))
    if not isinstance(model, keras.Model):
      raise ValueError(f'--model={spec} returned {type(model).__name__}, not a keras.Model.')
    return model
  return build


def import_object(ref):
  """`package.module:attr.attr` -> the object (the working directory is importable)."""
  module_name, _, qualname = ref.partition(':')
  if os.getcwd() not in sys.path and '' not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'--model={ref}: cannot import {module_name!r} ({e}); run from the directory '
                     'that holds it or add that directory to PYTHONPATH.') from e
  for part in qualname.split('.'):
    if not hasattr(obj, part):
      raise ValueError(f'--model={ref}: {module_name} has no attribute {qualname!r}.')
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f'--model={ref} is not callable; it must be a function returning a model.')
  return obj


def model_identity(spec):
  """What identifies the model's source in config.json: a .keras file's content hash."""
  if not (spec.endswith('.keras') and os.path.isfile(spec)):
    return {'model': spec}
  with open(spec, 'rb') as f:
    return {'model': spec, 'keras_file_sha256': hashlib.sha256(f.read()).hexdigest()[:16]}


def with_input_range(model, image_shape, input_range):
  """`model` behind x -> lo + (hi - lo) x, for a model that expects images in [lo, hi]: the
  wrapped model (trained, attacked and exported) takes [0, 1] images, so radii stay in [0, 1]
  units."""
  lo, hi = (float(v) for v in input_range)
  if (lo, hi) == (0.0, 1.0):
    return model
  inputs = keras.Input(tuple(image_shape))
  scaled = keras.layers.Rescaling(scale=hi - lo, offset=lo, name='input_range')(inputs)
  return keras.Model(inputs, model(scaled), name=f'{model.name}_from_unit_range')


def _layers(layer):
  """Every layer inside `layer`, recursively (Functional, Sequential and subclassed models)."""
  seen, stack, out = set(), [layer], []
  while stack:
    current = stack.pop()
    if id(current) in seen:
      continue
    seen.add(id(current))
    out.append(current)
    stack.extend(getattr(current, '_layers', None) or [])
    stack.extend(v for v in vars(current).values() if isinstance(v, keras.layers.Layer))
  return out


def check_classifier(model, image_shape, num_classes, strategy=None):
  """Raises ValueError, naming the fix, unless `model` maps [0, 1] images to logits (module
  docstring). Runs two inference calls on 4 random images."""
  if not isinstance(model, keras.Model):
    raise ValueError(f'The model must be a keras.Model; got {type(model).__name__}.')
  for layer in _layers(model):
    cls = type(layer)
    if cls.__name__.startswith('Random') and 'preprocessing' in cls.__module__:
      raise ValueError(f'The model contains {cls.__name__} ({layer.name}): random layers make '
                       "the attacks' gradients random. Augment in the data pipeline instead "
                       '(mma_tf.data sources take augment=).')
  if strategy is not None:
    # Keras 3 variables wrap the backend's: under a strategy that is a distributed variable.
    outside = [v.path for v in model.variables
               if not strategy.extended.variable_created_in_scope(getattr(v, 'value', v))]
    if outside:
      raise ValueError(f'{len(outside)} model variables (e.g. {outside[0]}) were created outside '
                       "the strategy's scope, so they are not distributed. Pass a factory (a "
                       'function that builds the model); the trainer calls it inside the scope.')
  probe = tf.random.stateless_uniform([4, *image_shape], [0, 17])
  try:
    first = model(probe, training=False)
    second = model(probe, training=False)
  except Exception as e:  # shape and dtype errors of many kinds
    raise ValueError(f'The model cannot take images of shape {list(image_shape)} '
                     f'({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}). '
                     'Build it for the data\'s image shape.') from e
  if not tf.is_tensor(first) and not isinstance(first, np.ndarray):
    raise ValueError(f'The model returns {type(first).__name__}; it must return one logits '
                     'tensor [batch, num_classes].')
  first, second = np.asarray(first, np.float32), np.asarray(second, np.float32)
  if first.shape != (4, num_classes):
    raise ValueError(f'The model returns shape {list(first.shape[1:])} per batch of 4 images; '
                     f'expected logits [batch, {num_classes}] for the data\'s {num_classes} '
                     'classes.')
  if not np.all(np.isfinite(first)):
    raise ValueError('The model returns non-finite outputs on random [0, 1] images.')
  final_softmax = any(getattr(layer, 'activation', None) in (keras.activations.softmax, 'softmax')
                      or isinstance(layer, keras.layers.Softmax)
                      for layer in getattr(model, 'layers', [])[-1:])
  rows_are_probabilities = (first.min() >= 0 and first.max() <= 1
                            and np.allclose(first.sum(axis=1), 1.0, atol=1e-4))
  if final_softmax or rows_are_probabilities:
    raise ValueError('The model outputs probabilities (a final softmax); it must return logits. '
                     'Remove the softmax (e.g. Dense(num_classes) with no activation); losses and '
                     'attacks apply it themselves.')
  if not np.allclose(first, second, rtol=1e-5, atol=1e-6):  # GPU kernels: last bits may vary
    raise ValueError('The model gives different outputs for the same images in inference mode '
                     '(training=False): a random layer is active at inference. Attacks and '
                     'validation need a deterministic model; make the layer respect `training`.')

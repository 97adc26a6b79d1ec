"""SavedModel export and loading: a serving signature from [0, 1] images to logits.

Evaluation attacks the exported artifact itself, so gradients w.r.t. the input must survive the
round trip; `load_classifier` returns a differentiable callable for SavedModels written here, by
`keras.Model.export()` or by `tf.saved_model.save` with a single-input signature.
"""
import os
import shutil

import tensorflow as tf


def export_saved_model(model, export_dir, image_shape=None):
  """Writes `model` (Keras, [0, 1] images -> logits) to export_dir, replacing it atomically.

  image_shape pins the serving signature to float32 [None, *image_shape] (a subclassed model has
  no recorded input shape of its own).

  The new SavedModel is written next to the old one and swapped in by renames, so an interrupted
  export never leaves a half-written directory where a good one was.
  """
  export_dir = os.path.abspath(export_dir)
  tmp, old = export_dir + '.tmp', export_dir + '.old'
  shutil.rmtree(tmp, ignore_errors=True)
  signature = None if image_shape is None else [
      tf.TensorSpec([None, *image_shape], tf.float32, name='images')]
  model.export(tmp, format='tf_saved_model', verbose=False, input_signature=signature)
  if os.path.exists(export_dir):
    shutil.rmtree(old, ignore_errors=True)
    os.replace(export_dir, old)
  os.replace(tmp, export_dir)
  shutil.rmtree(old, ignore_errors=True)
  return export_dir


class SavedModelError(ValueError):
  """A SavedModel is missing, corrupt, or not an image -> logits classifier."""


def load_classifier(saved_model_dir, signature=None):
  """Loads a SavedModel and returns (predict, input_spec): predict maps images to logits.

  Uses the named `signature` (default: 'serving_default', else the only signature). Raises
  SavedModelError naming the problem when the directory is missing, unreadable, or its
  signature does not take one float image tensor and return one [B, K] tensor.
  """
  if not os.path.isdir(saved_model_dir):
    raise SavedModelError(f'No SavedModel directory at {saved_model_dir}.')
  if not os.path.exists(os.path.join(saved_model_dir, 'saved_model.pb')):
    raise SavedModelError(f'{saved_model_dir} has no saved_model.pb: not a SavedModel '
                          '(export one with keras.Model.export() or bin/train.py).')
  try:
    loaded = tf.saved_model.load(saved_model_dir)
  except Exception as e:  # corrupt protobuf or variables: many TF error types
    raise SavedModelError(f'Cannot load the SavedModel at {saved_model_dir} '
                          f'({type(e).__name__}: {str(e).splitlines()[0][:300]}).') from e
  signatures = dict(loaded.signatures)
  if signature is None:
    if 'serving_default' in signatures:
      signature = 'serving_default'
    elif len(signatures) == 1:
      signature = next(iter(signatures))
    else:
      raise SavedModelError(f'{saved_model_dir} has signatures {sorted(signatures)}; choose one.')
  if signature not in signatures:
    raise SavedModelError(f'{saved_model_dir} has no signature {signature!r} '
                          f'(it has {sorted(signatures)}).')
  fn = signatures[signature]
  args, kwargs = fn.structured_input_signature
  specs = list(args) + list(kwargs.values())
  if len(specs) != 1 or not specs[0].dtype.is_floating or specs[0].shape.rank not in (3, 4):
    raise SavedModelError(f'Signature {signature!r} of {saved_model_dir} takes {specs}; an image '
                          'classifier takes one float tensor [B, H, W, C].')
  (input_name, input_spec), = kwargs.items() if kwargs else (('', specs[0]),)
  outputs = fn.structured_outputs
  if not isinstance(outputs, dict) or len(outputs) != 1:
    raise SavedModelError(f'Signature {signature!r} returns {outputs}; expected one logits tensor.')
  output_name, output_spec = next(iter(outputs.items()))
  if output_spec.shape.rank != 2:
    raise SavedModelError(f'Signature {signature!r} returns shape {output_spec.shape}; expected '
                          'logits [B, num_classes].')

  def predict(images):
    images = tf.cast(images, input_spec.dtype)
    out = fn(**{input_name: images}) if input_name else fn(images)
    # The signature's batch dimension is None; keep the input's static batch size, which the
    # attacks' loops rely on (a batch of one would otherwise broadcast to an unknown size).
    return tf.ensure_shape(out[output_name], [images.shape[0], output_spec.shape[1]])

  predict.loaded = loaded  # keep the trackable object (and its variables) alive
  return predict, input_spec

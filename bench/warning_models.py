"""Two models built to trip the evaluator's checks, derived from one export (any [0, 1] image ->
logits SavedModel), for measuring the warning thresholds (docs/autoattack.md 5):

  python bench/warning_models.py --saved_model=runs/mnist_5k-Linf-mma/export --output_dir=/tmp/w
  mma-evaluate --saved_model=/tmp/w/masked --eps=0.3 --num_examples=100
  mma-evaluate --saved_model=/tmp/w/saturated --eps=0.3 --num_examples=100

- masked: the same logits, with tf.stop_gradient on the input: every input gradient is zero
  (gradient masking at its plainest), so only Square and random noise can break points;
- saturated: the logits times 1000: the same predictions, but the softmax saturates and
  cross-entropy gradients vanish (float32), which blinds the cross-entropy attacks and margin
  estimates while the scale-invariant ones (DLR, FAB) still work.
"""
import os

from absl import app, flags

import mma_tf  # noqa: F401  (before TensorFlow: CPU kernels)
import tensorflow as tf

from mma_tf import export

flags.DEFINE_string('saved_model', None, 'The export to derive the models from.')
flags.DEFINE_string('output_dir', None, 'Where to write masked/ and saturated/.')
flags.mark_flags_as_required(['saved_model', 'output_dir'])
F = flags.FLAGS


class _Derived(tf.Module):

  def __init__(self, predict, spec, transform):
    super().__init__()
    self._predict, self._transform = predict, transform
    self._loaded = predict.loaded  # tracked: its variables are saved with this module
    self.__call__ = tf.function(self._call, input_signature=[spec])

  def _call(self, images):
    return self._transform(self._predict, images)


def main(_):
  predict, spec = export.load_classifier(F.saved_model)
  kinds = {'masked': lambda f, x: f(tf.stop_gradient(x)),
           'saturated': lambda f, x: 1000.0 * f(x)}
  for name, transform in kinds.items():
    module = _Derived(predict, spec, transform)
    path = os.path.join(F.output_dir, name)
    tf.saved_model.save(module, path, signatures=module.__call__.get_concrete_function())
    print(path)


if __name__ == '__main__':
  app.run(main)

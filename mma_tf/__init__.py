"""mma_tf: Max-Margin Adversarial (MMA) training for TensorFlow / Keras (Ding et al., ICLR 2020).

The Python API (README, "Your own model and data"):
  mma_tf.preset(dataset, norm, **overrides)  the paper's settings for (dataset, norm)
  mma_tf.data.from_arrays / from_dataset / from_tfds / from_npz / load   data sources
  mma_tf.Trainer(config, model_dir, strategy, data=..., model=factory).train()
  mma_tf.configure_process(config)           op determinism and global seeds (optional)
  mma_tf.keras.AdversarialModel(base, **settings)   compile() + fit() (README, "With model.fit()")
Names are imported on first use, so `import mma_tf` does not start TensorFlow.
"""
import importlib
import os
import sys

# TensorFlow uses its oneDNN CPU kernels by default only on CPUs with AVX-512 VNNI / BF16 or AMX;
# elsewhere (AVX2 CPUs) its default convolutions make the paper's models' passes about twice as
# slow (BUILD.md, "oneDNN on AVX2 CPUs"). Ask for oneDNN unless the user chose:
# TF_ENABLE_ONEDNN_OPTS=0 opts out. TF reads it once, so only before TensorFlow is imported.
if 'tensorflow' not in sys.modules:
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

__version__ = '0.1.0'

_LAZY = {'Trainer': ('mma_tf.trainer', 'Trainer'),
         'configure_process': ('mma_tf.trainer', 'configure_process'),
         'make_strategy': ('mma_tf.trainer', 'make_strategy'),
         'preset': ('mma_tf.configs', 'preset'),
         'TrainConfig': ('mma_tf.configs', 'TrainConfig'),
         'Objective': ('mma_tf.objectives', 'Objective'),
         'ObjectiveOutput': ('mma_tf.objectives', 'ObjectiveOutput'),
         'register_objective': ('mma_tf.objectives', 'register')}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  if name in ('data', 'attacks', 'evaluation', 'export', 'models', 'objectives', 'configs',
              'keras'):
    return importlib.import_module(f'mma_tf.{name}')
  raise AttributeError(f'module mma_tf has no attribute {name!r}')

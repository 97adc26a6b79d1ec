"""Data for training and evaluation: one `Source` contract over in-memory arrays and streamed
`tf.data` datasets, the loaders, the checks on user data, augmentation and the input pipelines.

Protocol (docs/paper_notes.md 3.3): validation = `num_validation` images of the training set,
train = the rest, test = the test split. Every training example carries `index`, its position in
the training set, which keys the per-example eps memory; the index is attached before any
shuffling or augmentation and an index outside the table is an error (on a GPU, tf.gather would
silently read 0). Images leave a source as float32 in [0, 1].

Where each part lives:
  - `source.py`: the `Source` contract (what the trainer and the evaluator read).
  - `arrays.py`: `ArraySource` (`from_arrays`): arrays in memory; each epoch is a permutation
    drawn from (seed, epoch), so a resumed run sees the batches of an uninterrupted one.
  - `streams.py`: `StreamSource` (`from_dataset`): a finite `tf.data.Dataset` read in its fixed
    order, each block of `shuffle_buffer` examples permuted per epoch.
  - `splits.py`: which training images validate (`validation_split` 'first' or 'random:SEED').
  - `loaders.py`: `load` by name: the embedded digits, `npz:PATH` (`from_npz`), TFDS
    (`from_tfds`, `tfds:NAME`), the built-in `DATASETS`.
  - `checks.py`: the checks on user data: shapes, pixel kinds, label range, class mix (data
    sorted by class is refused at start-up: `Source.check_label_mix`) and the identity hashes
    that config.json records.
  - `augment.py`: `PadCropFlip`, the paper's CIFAR-10 augmentation (`madry_cifar_augment`).
  - `pipelines.py`: `train_dataset` and `eval_dataset`: global batches and each input pipeline's
    (replica's) slice of them.

TensorFlow is imported inside the functions that build pipelines, not at module load: the CLIs
read `DATASETS` while checking flags, before TF starts (and before its log level is set).
"""
from mma_tf.data.arrays import IDENTITY_SAMPLE, ArraySource, from_arrays
from mma_tf.data.augment import PadCropFlip, madry_cifar_augment
from mma_tf.data.checks import MIX_FALSE_ALARM, identity_conflicts
from mma_tf.data.loaders import (DATASETS, EMBEDDED_TEST_SIZE, DataUnavailableError, DatasetSpec,
                                 describe_dataset_name, from_npz, from_tfds, load)
from mma_tf.data.pipelines import eval_dataset, train_dataset
from mma_tf.data.source import Source
from mma_tf.data.splits import DATA_SEED, default_num_validation, parse_validation_split
from mma_tf.data.streams import StreamSource, from_dataset

__all__ = ['ArraySource', 'DATASETS', 'DATA_SEED', 'DataUnavailableError', 'DatasetSpec',
           'EMBEDDED_TEST_SIZE', 'IDENTITY_SAMPLE', 'MIX_FALSE_ALARM', 'PadCropFlip', 'Source',
           'StreamSource', 'default_num_validation', 'describe_dataset_name', 'eval_dataset',
           'from_arrays', 'from_dataset', 'from_npz', 'from_tfds', 'identity_conflicts', 'load',
           'madry_cifar_augment', 'parse_validation_split', 'train_dataset']

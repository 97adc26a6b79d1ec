"""Data order and identity: validation splits that data sorted by class cannot make one-class, the
start-up check of the label mix, and resumes refused on other data."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config, tiny_data
from mma_tf import data as data_lib
from mma_tf import trainer as trainer_lib

QUIET = lambda m: None


def _sorted_arrays(per_class, shape=(4, 4), classes=10):
  """Random images with labels sorted by class, as image_dataset_from_directory(shuffle=False)."""
  labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
  images = np.random.RandomState(0).randint(0, 256, (len(labels),) + shape).astype(np.uint8)
  return images, labels


def _stream(x, y, **kw):
  return data_lib.from_dataset(tf.data.Dataset.from_tensor_slices((x[..., None], y)),
                               num_classes=10, **kw)


def _digits():
  """240 real digits at 8x8 (stored shuffled) as arrays."""
  d = tiny_data(num_train=200, num_validation=40, num_test=20, size=8)
  return d.train_images, d.train_labels


def _config():
  return tiny_config(batch_size=20, nb_iter=2, num_search_steps=3, eval_batch_size=40,
                     train_steps=2)


# ------------------------------------------------------------------------------ arrays
def test_arrays_validate_on_a_fixed_random_selection_that_sorted_data_cannot_skew():
  x, y = _sorted_arrays(per_class=60)
  source = data_lib.from_arrays(x, y, num_validation=100)
  images, labels, indices = source.eval_split('validation')
  assert len(np.unique(labels)) == 10  # the first 100 are classes 0 and 1 only
  np.testing.assert_array_equal(labels, y[indices])
  np.testing.assert_allclose(images[..., 0], x[indices] / 255.0, atol=1e-7)
  epoch = np.concatenate([b['index'] for b in data_lib.train_dataset(source, 50, 3, 0)])
  assert not set(epoch) & set(indices) and len(set(epoch) | set(indices)) == 600
  # Fixed (not the run's seed): the same selection every time; a smaller one is a subset.
  np.testing.assert_array_equal(data_lib.from_arrays(x, y, num_validation=100)
                                .validation_indices, indices)
  assert set(data_lib.from_arrays(x, y, num_validation=40).validation_indices) < set(indices)
  assert source.identity()['validation_split'] == 'random:0' and source.check_label_mix() == []
  # 'first' is the paper's protocol, and there sorted data is refused, naming the fix.
  first = data_lib.from_arrays(x, y, num_validation=100, validation_split='first')
  np.testing.assert_array_equal(first.eval_split('validation')[2], np.arange(100))
  with pytest.raises(ValueError, match=r"first 100 training images\) holds classes \{0: 60%, "
                                       r"1: 40%\}.*looks sorted.*validation_split='random'"):
    first.check_label_mix()
  with pytest.raises(ValueError, match="validation_split must be 'random'"):
    data_lib.from_arrays(x, y, validation_split='last')


def test_built_in_data_keeps_the_first_images_and_npz_draws_at_random(tmp_path):
  digits = data_lib.load('mnist_5k')
  images, labels, indices = digits.eval_split('validation')
  np.testing.assert_array_equal(indices, np.arange(500))  # the README's figures use this split
  np.testing.assert_array_equal(labels, digits.train_labels[:500])
  assert digits.identity()['validation_split'] == 'first' and digits.check_label_mix() == []
  x, y = _sorted_arrays(per_class=30)
  np.savez(tmp_path / 'sorted.npz', x_train=x, y_train=y)
  npz = data_lib.load(f'npz:{tmp_path / "sorted.npz"}', num_validation=50)
  assert npz.validation_split == 'random:0' and npz.check_label_mix() == []
  assert data_lib.load(f'npz:{tmp_path / "sorted.npz"}', num_validation=50,
                       validation_split='first').validation_split == 'first'
  with pytest.raises(ValueError, match='applies to npz:PATH only'):
    data_lib.load('mnist_5k', validation_split='random')


# ------------------------------------------------------------------------------ streams
def test_a_stream_sorted_by_class_is_refused_and_a_shuffled_one_passes():
  x, y = _sorted_arrays(per_class=100)
  fix = r'shuffle\(n, seed=0, reshuffle_each_iteration=False\)'
  with pytest.raises(ValueError, match=r'validation split \(the first 100 examples\) holds '
                                       r'classes \{0: 100%\}.*looks sorted.*' + fix):
    _stream(x, y, num_validation=100, shuffle_buffer=400).check_label_mix()
  shuffled = tf.data.Dataset.from_tensor_slices((x[..., None], y)).shuffle(
      1000, seed=0, reshuffle_each_iteration=False)
  assert data_lib.from_dataset(shuffled, num_classes=10, num_validation=100,
                               shuffle_buffer=400).check_label_mix() == []
  # A validation split of every class, then the rest sorted: blocks of a few classes each.
  front = np.random.RandomState(1).choice(1000, 100, replace=False)
  order = np.concatenate([front, np.setdiff1d(np.arange(1000), front)])
  with pytest.raises(ValueError, match='first half of the first shuffle block.*batches would '
                                       'see a few classes at a time.*' + fix):
    _stream(x[order], y[order], num_validation=100, shuffle_buffer=600).check_label_mix()
  # One block holding everything after validation is shuffled whole: only validation matters.
  assert _stream(x[order], y[order], num_validation=100,
                 shuffle_buffer=900).check_label_mix() == []
  # Everything read is one class: no histogram to compare, refused outright.
  x, y = _sorted_arrays(per_class=1000, shape=(2, 2))
  with pytest.raises(ValueError, match='all of the first 500 examples .* are of class 0'):
    _stream(x, y, num_validation=100, shuffle_buffer=400).check_label_mix()


def test_real_shuffled_digits_pass_the_check_and_small_parts_only_warn():
  digits = data_lib.load('mnist_5k')
  for buffer in (10_000, 1000, 300):
    stream = data_lib.from_dataset(
        tf.data.Dataset.from_tensor_slices((digits.train_images, digits.train_labels)),
        num_classes=10, num_validation=500, shuffle_buffer=buffer)
    assert stream.check_label_mix() == [], buffer
  x, y = _sorted_arrays(per_class=3)
  warnings = _stream(x, y, num_validation=5, shuffle_buffer=10).check_label_mix()
  assert len(warnings) == 2 and all('too few examples to check' in w for w in warnings)

  class Opaque(data_lib.Source):  # a source of your own, read only as it trains
    name = 'opaque'
  assert 'cannot be checked up front' in Opaque().check_label_mix()[0]


def test_training_refuses_sorted_data_before_writing_anything(tmp_path):
  x, y = _sorted_arrays(per_class=30, shape=(8, 8))
  source = data_lib.from_arrays(x, y, num_validation=60, validation_split='first')
  with pytest.raises(ValueError, match='looks sorted'):
    trainer_lib.Trainer(_config(), str(tmp_path), data=source, log=QUIET)
  assert not os.path.exists(tmp_path / 'config.json')


# ------------------------------------------------------------------------------ identity
def _saved_data(model_dir):
  with open(os.path.join(model_dir, 'config.json')) as f:
    return json.load(f)['data']


def test_resuming_on_other_images_or_labels_is_refused_naming_what_changed(tmp_path):
  x, y = _digits()
  changed = (r'data\.sample_sha256 \(a hash of sampled training images and labels: the data '
             r'differs\)')
  arrays_dir, stream_dir = str(tmp_path / 'arrays'), str(tmp_path / 'stream')
  trainer_lib.Trainer(_config(), arrays_dir, data=data_lib.from_arrays(x, y), log=QUIET)
  with pytest.raises(ValueError, match=changed):
    trainer_lib.Trainer(_config(), arrays_dir, data=data_lib.from_arrays(255 - x, y), log=QUIET)
  trainer_lib.Trainer(_config(), arrays_dir, data=data_lib.from_arrays(x.copy(), y), log=QUIET)
  trainer_lib.Trainer(_config(), stream_dir, data=_stream(x[..., 0], y), log=QUIET)
  for other_x, other_y in ((255 - x, y), (x, np.roll(y, 1))):
    with pytest.raises(ValueError, match=changed):
      trainer_lib.Trainer(_config(), stream_dir, data=_stream(other_x[..., 0], other_y),
                          log=QUIET)
  trainer_lib.Trainer(_config(), stream_dir, data=_stream(x[..., 0], y), log=QUIET)


def test_a_run_from_before_the_split_was_recorded_resumes_on_the_first_images(tmp_path):
  x, y = _digits()
  model_dir = str(tmp_path)
  trainer_lib.Trainer(_config(), model_dir, data=data_lib.from_arrays(x, y), log=QUIET)
  assert _saved_data(model_dir)['validation_split'] == 'random:0'
  # config.json as the previous version wrote it: no split, no image hash.
  path = os.path.join(model_dir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  del saved['data']['validation_split'], saved['data']['sample_sha256']
  with open(path, 'w') as f:
    json.dump(saved, f)
  messages = []
  resumed = trainer_lib.Trainer(_config(), model_dir, data=data_lib.from_arrays(x, y),
                                log=messages.append)
  assert resumed.task.data.validation_split == 'first'
  np.testing.assert_array_equal(resumed.task.data.eval_split('validation')[2], np.arange(24))
  assert any('validation split' in m and '(first)' in m for m in messages)
  assert _saved_data(model_dir)['validation_split'] == 'first'
  # It keeps resuming so; a split given explicitly must match the recorded one.
  again = trainer_lib.Trainer(_config(), model_dir, data=data_lib.from_arrays(x, y), log=QUIET)
  assert again.task.data.validation_split == 'first'
  with pytest.raises(ValueError, match=r"data\.validation_split: saved 'first', now 'random:0'"):
    trainer_lib.Trainer(_config(), model_dir, log=QUIET,
                        data=data_lib.from_arrays(x, y, validation_split='random'))

"""The `Source` contract: what the trainer, the evaluator and the input pipelines need from a
dataset. Its two implementations are `arrays.ArraySource` (in memory) and `streams.StreamSource`
(a streamed `tf.data.Dataset`)."""


class Source:
  """What the trainer and evaluator need from a dataset (see the `mma_tf.data` docstring).

  Attributes: name, image_shape (H, W, C), num_classes, num_validation, num_train_total (size of
  the training set with validation, the rows of the eps memory), augment (None or a function
  (image float32 [H, W, C] in [0, 1], stateless seed [2] int64) -> image).
  """
  name = image_shape = num_classes = num_validation = num_train_total = augment = None
  pixels = 'uint8'  # how images are stored: 'uint8' (0-255) or 'float' (in [0, 1])
  validation_split = 'first'  # or 'random:SEED' (see splits.parse_validation_split)

  def _check_protocol(self):
    if not 1 <= self.num_validation < self.num_train_total:
      raise ValueError(f'{self.name} has {self.num_train_total} training images; num_validation '
                       f'({self.num_validation}) must be >= 1 (validation picks the best '
                       'checkpoint) and leave images to train on.')
    if self.num_classes < 2:
      raise ValueError(f'{self.name}: a classifier needs >= 2 classes; got {self.num_classes}.')

  def steps_per_epoch(self, global_batch_size):
    return (self.num_train_total - self.num_validation) // global_batch_size

  def identity(self):
    """What identifies the data in config.json (a resumed run must see the same; see
    `checks.identity_conflicts`). sample_sha256 hashes images and labels (which ones: the
    subclass)."""
    return {'name': self.name, 'image_shape': list(self.image_shape),
            'num_classes': int(self.num_classes), 'num_train_total': int(self.num_train_total),
            'num_validation': int(self.num_validation), 'pixels': self.pixels,
            'augment': getattr(self.augment, '__name__', None) if self.augment else None,
            'validation_split': self.validation_split}

  def check_label_mix(self):
    """Raises ValueError, naming the fix, when the validation split (or a stream's first shuffle
    block) is far from the training set's class mix, as with data sorted by class; returns
    warnings (strings) where the parts read are too small to tell, or, as here, where the source
    cannot be inspected up front. See `checks.mix_tolerance`."""
    return [f'{self.name}: the class mix of the validation split cannot be checked up front '
            f'({type(self).__name__} reads its data only as it trains); make sure the data is '
            'not sorted by class.']

  def eval_split(self, split, limit=None):
    """(images float32 [N, H, W, C] in [0, 1], labels int32, indices int32) of 'validation' or
    'test' (the first `limit` examples if given)."""
    raise NotImplementedError

  def epoch_examples(self, seed, epoch, start, count):
    """The epoch's training examples number start..start+count-1 in its order, as an unbatched
    dataset of (raw image, label, index)."""
    raise NotImplementedError


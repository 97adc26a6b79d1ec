"""Augmentation of training images: stateless, one seed per (seed, epoch, example index), so a
resumed run and any number of replicas augment alike (`pipelines.train_dataset` draws the seed)."""


class PadCropFlip:
  """Reflect-pad, random crop back to the image size, random horizontal flip (Madry et al.'s
  CIFAR-10 augmentation with pad 4); stateless: `augment(image [H, W, C], seed [2])`.

  It also moves a perturbation between the stored frame and an augmented image, for the
  perturbation memory (`mma_tf.perturbation_memory`): `to_augmented` applies the image's own crop
  and flip (the ops are linear, so augment(x + d) == augment(x) + to_augmented(d) exactly), and
  `to_stored` writes an augmented-frame perturbation back where it came from, keeping the stored
  values of the pixels the crop left out (the part that fell on the padding is dropped).
  An augmentation without these two methods cannot be used with the perturbation memory.
  """

  def __init__(self, pad=4, name='madry_cifar_augment'):
    self.pad = pad
    self.__name__ = name  # how config.json names the augmentation (Source.identity)

  def __call__(self, image, seed):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    seeds = tf.random.experimental.stateless_split(seed, 2)
    size = tf.shape(image)
    p = self.pad
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]], mode='REFLECT')
    image = tf.image.stateless_random_crop(padded, size, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])

  def to_augmented(self, delta, seed):
    """A stored-frame perturbation [H, W, C] as seen in the image augmented with `seed`."""
    return self(delta, seed)

  def to_stored(self, delta, stored, seed):
    """Writes an augmented-frame perturbation [H, W, C] back into the stored one."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    seeds = tf.random.experimental.stateless_split(seed, 2)
    h, w = delta.shape[0], delta.shape[1]
    p = self.pad
    # Where __call__ cropped and whether it flipped: the same draws applied to index grids, so
    # they always agree with it (no copy of tf.image's internals).
    grid = tf.reshape(tf.range((h + 2 * p) * (w + 2 * p)), [h + 2 * p, w + 2 * p, 1])
    corner = tf.image.stateless_random_crop(grid, [h, w, 1], seed=seeds[0])[0, 0, 0]
    top, left = corner // (w + 2 * p), corner % (w + 2 * p)
    columns = tf.reshape(tf.range(w), [1, w, 1])
    flipped = tf.image.stateless_random_flip_left_right(columns, seed=seeds[1])[0, 0, 0] > 0
    delta = tf.where(flipped, tf.reverse(delta, axis=[1]), delta)
    paddings = [[top, 2 * p - top], [left, 2 * p - left], [0, 0]]
    window = tf.pad(tf.ones_like(delta), paddings)
    placed = window * tf.pad(delta, paddings) + (1 - window) * tf.pad(
        tf.cast(stored, delta.dtype), [[p, p], [p, p], [0, 0]])
    return placed[p:p + h, p:p + w]


madry_cifar_augment = PadCropFlip()

"""Per-layer initializer seeds, so model construction is independent of global random state."""


class LayerSeeds:
  """Hands out distinct integer seeds base*1000 + 0, 1, 2, ... in layer-construction order.

  A Keras initializer with an integer seed draws the same values at every call, so every layer
  needs its own seed; 1000 per base seed is far more layers than any model here has.
  """

  def __init__(self, seed):
    self._base = int(seed) * 1000
    self._count = 0

  def next(self):
    if self._count >= 1000:
      raise ValueError('LayerSeeds: more than 1000 seeded layers in one model.')
    self._count += 1
    return self._base + self._count - 1

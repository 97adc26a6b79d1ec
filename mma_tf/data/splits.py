"""Which training images validate: how many, and which ones.

Validation = `num_validation` images of the training set (they pick the best checkpoint), train =
the rest (docs/paper_notes.md 3.3). The built-in datasets and streams validate on the first ones
(the paper's protocol; a stream is read in order, so its front); arrays you pass (`from_arrays`,
`from_npz`) on a fixed random selection drawn with DATA_SEED, which data sorted by class cannot
turn into a one-class validation set. config.json records the rule as 'first' or 'random:SEED'.
"""
import numpy as np

# The seed of random validation splits and of the identity sample: fixed, not the run's --seed,
# so every seed of a study validates on the same images.
DATA_SEED = 0


def default_num_validation(num_train_total):
  """Validation size for data without a paper preset: 10% of the training set, at most the
  paper's 5,000 (the built-in datasets keep their own: 500 embedded, 5,000 MNIST / CIFAR-10)."""
  return min(5000, num_train_total // 10)


def parse_validation_split(split):
  """'first', or 'random' / 'random:SEED' (default seed DATA_SEED) -> 'first' or 'random:SEED',
  the form config.json records."""
  kind, colon, seed = str(split).partition(':')
  if kind == 'first' and not colon:
    return 'first'
  if kind == 'random' and (not colon or seed.lstrip('-').isdigit()):
    return f'random:{int(seed) if colon else DATA_SEED}'
  raise ValueError(f"validation_split must be 'random' (or 'random:SEED') or 'first'; got "
                   f'{split!r}.')


def validation_positions(validation_split, num_validation, num_train_total):
  """The positions in the training set of the validation images of a parsed split rule
  (`parse_validation_split`), in increasing order."""
  if validation_split == 'first':
    return np.arange(num_validation)
  seed = int(validation_split.partition(':')[2])
  return np.sort(np.random.default_rng(seed).permutation(num_train_total)[:num_validation])

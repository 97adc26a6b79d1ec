"""Fashion-MNIST (Xiao et al. 2017) from its original IDX files to an npz for `--dataset=npz:`.

  apt-get install dataset-fashion-mnist      # Debian: /usr/share/datasets/fashion-mnist/
  python docs/study/fashion_mnist_npz.py [--idx_dir=DIR] [--out=runs/fashion_mnist.npz]

Writes x_train uint8 [60000, 28, 28, 1], y_train int32, x_test [10000, 28, 28, 1], y_test, in the
files' order (the training file is not sorted by class).
"""
import argparse
import gzip
import os

import numpy as np

FILES = {'x_train': 'train-images-idx3-ubyte.gz', 'y_train': 'train-labels-idx1-ubyte.gz',
         'x_test': 't10k-images-idx3-ubyte.gz', 'y_test': 't10k-labels-idx1-ubyte.gz'}


def read_idx(path):
  """An IDX array (LeCun's format: magic 0x000008NN for uint8 with NN dimensions, big-endian
  int32 sizes, then the data)."""
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
  if zero != b'\x00\x00' or dtype_code != 0x08:
    raise ValueError(f'{path} is not a uint8 IDX file.')
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f'{path}: header says {shape}, file holds {data.size} values.')
  return data.reshape(shape)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--idx_dir', default='/usr/share/datasets/fashion-mnist')
  parser.add_argument('--out', default='runs/fashion_mnist.npz')
  args = parser.parse_args()
  arrays = {k: read_idx(os.path.join(args.idx_dir, f)) for k, f in FILES.items()}
  for split in ('train', 'test'):
    arrays[f'x_{split}'] = arrays[f'x_{split}'][..., None]
    arrays[f'y_{split}'] = arrays[f'y_{split}'].astype(np.int32)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez(args.out, **arrays)
  print(f'{args.out}: ' + ', '.join(f'{k} {v.shape}' for k, v in arrays.items()))


if __name__ == '__main__':
  main()

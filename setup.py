"""mma_tf: Max-Margin Adversarial (MMA) training for TensorFlow / Keras."""
import re

from setuptools import find_packages, setup

with open('mma_tf/__init__.py') as f:
  VERSION = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='mma_tf',
    version=VERSION,
    description=('Max-Margin Adversarial (MMA) training for TensorFlow / Keras '
                 '(Ding et al., ICLR 2020)'),
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mma_tf', 'mma_tf.*']),
    # The 5,000 embedded MNIST digits of --dataset=mnist_5k (1.1 MB; provenance and licence in
    # mma_tf/embedded_data/README.md), so the offline default needs no extra package.
    package_data={'mma_tf': ['embedded_data/mnist_5k.csv.gz', 'embedded_data/README.md']},
    python_requires='>=3.10',
    # TensorFlow comes through an extra: `tensorflow` and `tensorflow-cpu` are different pip
    # distributions, so requiring either one here would pull it next to the other.
    install_requires=[
        'tensorflow-datasets>=4.9',  # MNIST / CIFAR-10 of the paper's presets, tfds:NAME
        # tensorflow-datasets 4.9.10 imports it to download and prepare a dataset but does not
        # declare it: without it `download_and_prepare()` fails with ModuleNotFoundError.
        'importlib_resources',
        'keras>=3.0',
        'numpy',
        'absl-py',      # flags of mma-train / mma-evaluate
        'tensorboard',  # tf.summary needs it; TF 2.21 no longer installs it
    ],
    extras_require={
        'cpu': ['tensorflow-cpu>=2.16'],
        'gpu': ['tensorflow[and-cuda]>=2.16'],
        'plots': ['matplotlib'],  # PNG plots of mma-evaluate's report and docs/study
        # pytest-xdist: the README's test command runs two worker processes (-n 2), BUILD.md.
        # ruff: the linter .ci/run runs (ruff.toml), pinned so that CI's verdict does not move.
        'test': ['pytest', 'pytest-xdist', 'matplotlib', 'ruff==0.17.6'],
    },
    entry_points={'console_scripts': ['mma-train = mma_tf.cli.train:run',
                                      'mma-evaluate = mma_tf.cli.evaluate:run']},
    license='Apache-2.0',
)

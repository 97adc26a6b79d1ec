"""Test set-up: quiet TF logs and split the CPU into two logical devices for replica tests."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import mma_tf  # noqa: E402,F401  before TF, so tests get the CPU kernels users get (mma_tf/__init__)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices('CPU')
try:
  tf.config.set_logical_device_configuration(
      _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by another import; replica tests then skip
  pass


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long-running tests: the study replay, worker '
                          'processes, the example (run with --runslow; CI does)')


def pytest_addoption(parser):
  parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--runslow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --runslow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def rng():
  return np.random.RandomState(0)


@pytest.fixture(scope='session')
def two_cpu_strategy():
  """One MirroredStrategy over the two logical CPUs for the whole session: separate instances in
  one process collide in their collective-op keys."""
  if len(tf.config.list_logical_devices('CPU')) < 2:
    pytest.skip('needs two logical CPU devices (set up in conftest before TF initialises)')
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])

"""Test set-up: quiet TF logs and split the CPU into two logical devices for replica tests."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import mma_tf  # noqa: E402,F401  before TF, so tests get the CPU kernels users get (mma_tf/__init__)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mma_tf.cli import common  # noqa: E402

# As the CLIs import it: TF's C++ start-up notes (oneDNN, CPU features) dropped. They bypass
# TF_CPP_MIN_LOG_LEVEL, and pytest holds what is printed outside tests and writes it after the
# summary, so every xdist worker's notes ended the run.
tf = common.import_tensorflow()

_cpus = tf.config.list_physical_devices('CPU')
try:
  tf.config.set_logical_device_configuration(
      _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by another import; replica tests then skip
  pass


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long-running tests (BUILD.md, "Test tiers"): run with '
                          '--runslow; CI does')
  config.addinivalue_line('markers', 'processes: starts MultiWorkerMirrored worker processes on '
                          'loopback, whose bounded waits assume the cores are theirs: CI runs '
                          'these one at a time')
  config.addinivalue_line('markers', 'replay: re-trains and re-evaluates a row of docs/RESULTS.md: '
                          '--runslow runs it, CI does not (BUILD.md, "Test tiers")')
  # Keras 3.15's Variable.__array__ takes no `copy` argument, which NumPy 2 asks for whenever
  # Keras saves weights (keras/src/backend/common/variables.py; a plain Keras model's
  # save_weights warns alike): Keras' to fix, not ours. Only that Keras call site is silenced.
  config.addinivalue_line('filterwarnings', "ignore:__array__ implementation doesn't accept a copy "
                          r'keyword:DeprecationWarning:keras\.src\.backend\.tensorflow\.core')


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


@pytest.fixture
def op_determinism():
  """Op determinism for one test, as the CLI's configure_process sets it, then off again, so no
  other test depends on running before or after this one."""
  from tensorflow.python.framework import config as tf_config  # TF has no public disable
  was = tf_config.is_op_determinism_enabled()
  tf.config.experimental.enable_op_determinism()
  yield
  if not was:
    tf_config.disable_op_determinism()


@pytest.fixture(scope='session')
def data8():
  """200 digits at 8x8 (40 validation, 160 training: 10 batches of 16), 40 test digits."""
  from helpers import tiny_data
  return tiny_data(num_train=160, num_validation=40, num_test=40, size=8)


@pytest.fixture(scope='session')
def warm_weights(data8, tmp_path_factory):
  """One briefly trained model (on data8), trained once per test process, so MMA attacks most
  examples (tests start from it with helpers.warm_start)."""
  from helpers import tiny_config
  from mma_tf import trainer as trainer_lib
  warm = trainer_lib.Trainer(tiny_config(objective='standard', learning_rate=1e-2),
                             str(tmp_path_factory.mktemp('warm')), data=data8, log=lambda m: None)
  for epoch in range(6):
    iterator = iter(warm.task.train_batches(epoch))
    for _ in range(warm.steps_per_epoch):
      warm.task.train_step(iterator)
  return warm.task.model.get_weights()

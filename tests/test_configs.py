"""Configuration owned by its parts: each objective's settings dataclass (the registry holds it),
the flags and refusals derived from the registry, a registered objective's own settings, config.json
written nested, and run directories of the flat format still resuming."""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
from absl import flags

import in_process
from helpers import tiny_config, tiny_data
from mma_tf import configs, losses, objectives
from mma_tf import keras as keras_lib
from mma_tf import models
from mma_tf import trainer as trainer_lib

FLAT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                           'flat_config.json')  # written by main at 708ed3f (before the parts)


def _owners():
  """Setting name -> the built-in objectives whose settings have it."""
  out = {}
  for objective, settings in configs.OBJECTIVE_SETTINGS.items():
    for field in dataclasses.fields(settings):
      out.setdefault(field.name, []).append(objective)
  return out


# ------------------------------------------------------------------------------ derived refusals
def test_a_setting_of_another_objective_is_refused_naming_its_objectives():
  owners = _owners()
  assert owners['trades_beta'] == ['trades'] and owners['pgd_eps'] == ['pgd_at', 'trades']
  for name, owning in owners.items():
    value = configs.setting_owners(name)[1].default
    for objective in set(configs.OBJECTIVE_SETTINGS) - set(owning):
      with pytest.raises(ValueError, match=re.escape(
          f'--{name} has no effect here: ') + '.*' + re.escape(
              f'--objective={objective} ') + '.*' + re.escape(
                  f'(it is a setting of --objective={", ".join(owning)}).')):
        configs.resolve('mnist_5k', 'Linf', {'objective': objective, name: value,
                                             'model': 'wrn10_1'})
    for objective in owning:  # and taken by the objectives that own it
      config = configs.resolve('mnist_5k', 'Linf', {'objective': objective, name: value,
                                                    'model': 'wrn10_1'})
      assert getattr(config.settings, name) == value


def test_the_cli_defines_every_objective_setting_and_refuses_it_under_another_objective():
  result = in_process.run_main('mma_tf.cli.train', ['--objective=pgd_at', '--trades_beta=1',
                                                    '--train_steps=1'])
  assert result.returncode == 2
  assert ('--trades_beta has no effect here: it weighs the TRADES KL term, and --objective=pgd_at '
          'is not trades; drop it (it is a setting of --objective=trades).') in result.stderr
  for name in _owners():  # a flag per setting, unset by default, with the setting's help
    help_text = configs.setting_owners(name)[1].metadata['help']
    assert flags.FLAGS[name].default is None and help_text in flags.FLAGS[name].help


def test_flat_construction_routes_names_to_their_parts_and_refuses_strangers():
  config = configs.TrainConfig.flat(objective='trades', trades_beta=2.0, batch_size=7,
                                    momentum=0.5, train_steps=3, hinge_maxeps=0.2, model='wrn10_1')
  assert config.settings == configs.TradesSettings(trades_beta=2.0)
  assert (config.data.batch_size, config.optimization.momentum, config.loop.train_steps,
          config.attack.hinge_maxeps, config.network.model) == (7, 0.5, 3, 0.2, 'wrn10_1')
  assert config.trades_beta == 2.0 and config.batch_size == 7  # the loop's flat view
  assert configs.TrainConfig.flat(objective='omma').clean_loss_coeff == 0  # OMMA's own default
  with pytest.raises(ValueError, match=re.escape("Unknown configuration fields: ['no_such']")):
    configs.TrainConfig.flat(no_such=1)
  with pytest.raises(ValueError, match=r'--pgd_eps has no effect here: .*--objective=mma'):
    configs.TrainConfig.flat(objective='mma', pgd_eps=0.1)
  with pytest.raises(AttributeError, match="objective 'mma'.* no field 'trades_beta'"):
    configs.TrainConfig().trades_beta  # pylint: disable=expression-not-assigned


# ------------------------------------------------------------------------------ your objective
@dataclasses.dataclass
class ScaledSettings:
  loss_scale: float = 1.0  # the loss is loss_scale * CE

  def check(self, config):
    if self.loss_scale < 0:
      raise ValueError(f'--loss_scale must be >= 0; got {self.loss_scale}.')


@pytest.fixture
def scaled_ce():
  """A registered objective with its own settings dataclass: loss = loss_scale * CE."""

  @objectives.register
  class ScaledCE(objectives.Objective):
    name = 'scaled_ce'
    settings = ScaledSettings

    def __call__(self, model, x, y, eps0, seeds, stop_recording):
      loss = self.config.loss_scale * losses.cross_entropy(self.logits(model, x, True), y)
      return objectives.ObjectiveOutput(loss, None, {'loss': loss})
  yield ScaledCE.name
  objectives.unregister(ScaledCE.name)


def test_a_registered_objective_trains_from_python_with_its_own_settings(scaled_ce, tmp_path):
  data = tiny_data(num_train=100, num_validation=20, num_test=20, size=8)
  weights = {}
  for scale in (0.0, 1.0):  # Adam moves no weight on a zero loss: the setting reaches the loss
    config = tiny_config(objective=scaled_ce, loss_scale=scale, train_steps=2, checkpoint_every=2)
    trainer = trainer_lib.Trainer(config, str(tmp_path / str(scale)), data=data,
                                  log=lambda m: None)
    before = trainer.task.model.get_weights()
    trainer.train()
    weights[scale] = [np.abs(a - b).max() for a, b in
                      zip(before, trainer.task.model.get_weights(), strict=True)]
  assert max(weights[0.0]) == 0 and max(weights[1.0]) > 0
  with open(tmp_path / '0.0' / 'config.json') as f:
    assert json.load(f)['config']['settings'] == {'loss_scale': 0.0}
  with pytest.raises(ValueError, match=r'loss_scale: saved 0\.0, now 1\.0'):
    trainer_lib.Trainer(tiny_config(objective=scaled_ce, loss_scale=1.0, train_steps=2),
                        str(tmp_path / '0.0'), data=data)
  with pytest.raises(ValueError, match=r'--loss_scale must be >= 0'):
    tiny_config(objective=scaled_ce, loss_scale=-1.0).validate()
  with pytest.raises(ValueError, match=r'--loss_scale has no effect here: .*--objective=scaled_ce'):
    tiny_config(objective='mma', loss_scale=2.0)
  # AdversarialModel takes it as a keyword argument, as the built-in objectives' settings.
  model = keras_lib.AdversarialModel(models.small_cnn((8, 8, 1), 10), objective=scaled_ce,
                                     loss_scale=0.5)
  assert model.config.settings == ScaledSettings(0.5)


# ------------------------------------------------------------------------------ config.json
def test_config_json_is_nested_and_a_flat_one_from_before_resumes(tmp_path):
  data = tiny_data(num_train=100, num_validation=20, num_test=20, size=8)
  config = tiny_config(train_steps=2)  # the run that wrote FLAT_CONFIG
  with open(FLAT_CONFIG) as f:
    assert 'config' not in json.load(f)  # flat
  refused = str(tmp_path / 'refused')
  os.makedirs(refused)
  shutil.copy(FLAT_CONFIG, os.path.join(refused, 'config.json'))
  with pytest.raises(ValueError, match=r'hinge_maxeps: saved 0\.45, now 0\.3'):
    trainer_lib.Trainer(tiny_config(train_steps=2, hinge_maxeps=0.3), refused, data=data)
  model_dir = str(tmp_path / 'run')
  os.makedirs(model_dir)
  shutil.copy(FLAT_CONFIG, os.path.join(model_dir, 'config.json'))
  trainer_lib.Trainer(config, model_dir, data=data, log=lambda m: None)  # resumes
  with open(os.path.join(model_dir, 'config.json')) as f:
    record = json.load(f)
  assert set(record) == {'config', 'data', 'model_source'}
  assert set(record['config']) == {'objective', 'settings', *configs.PARTS}
  assert record['config']['settings'] == json.loads(json.dumps(
      dataclasses.asdict(configs.MMASettings())))
  assert record['config']['attack']['nb_iter'] == 3 and record['config']['data']['batch_size'] == 20
  assert configs.resume_conflicts(record, config) == []
  with open(FLAT_CONFIG) as f:
    flat = json.load(f)
  now = configs.flat_record(record)
  assert set(flat) - set(now) == {'pgd_eps', 'trades_beta'}  # other objectives' settings
  assert set(now) - set(flat) == {'search'}  # added since: the run used its default
  assert {k: v for k, v in now.items() if k in flat} == {k: v for k, v in flat.items()
                                                         if k in now}


def test_settings_of_another_objective_are_refused():
  """A config built directly keeps the default (MMA) settings whatever its objective; validate
  refuses it instead of failing at the first step that reads a setting."""
  with pytest.raises(ValueError, match="'trades' reads TradesSettings.*holds MMASettings"):
    configs.TrainConfig(objective='trades').validate()
  configs.TrainConfig.flat(objective='trades').validate()

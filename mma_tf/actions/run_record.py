"""The run directory's record, config.json: the configuration (nested, key 'config'; runs of
earlier versions wrote it flat, configs.flat_record) plus what identifies the data and the model's
source. Written when a run starts; a run resumed in the same directory must match it."""
import json
import os
import tempfile

from mma_tf import configs
from mma_tf import data as data_lib
from mma_tf.models import user as user_models

CONFIG_FILE = 'config.json'


def open_run(task, model_dir, is_chief, log):
  """Checks that model_dir is writable and, if it holds a run, that it is this one; then writes
  config.json (the chief). The task's data may be switched to the run's recorded validation
  split."""
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=model_dir, delete=True)
    probe.close()
  except OSError as e:
    raise ValueError(f'--model_dir={model_dir} is not writable ({e}).') from e
  path = os.path.join(model_dir, CONFIG_FILE)
  saved = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f'{path} is unreadable ({e}); restore it, or use a new '
                       '--model_dir.') from e
    _resume_validation_split(task, saved, model_dir, log)
  record = {'config': task.config.to_dict(), 'data': task.data.identity(),
            'model_source': user_models.model_identity(task.config.model)}
  if saved is not None:
    _check_same_run(saved, record, task.config, model_dir)
  try:
    for warning in task.data.check_label_mix():
      log(f'warning: {warning}')
  except ValueError as e:
    if saved is None:
      raise  # a new run: nothing written yet
    log(f'warning: {e}')  # a run started before the check: it resumes as it began
  if is_chief:
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True))


def _check_same_run(saved, record, config, model_dir):
  """Resuming with other settings would mix two runs in one directory; fields marked resumable
  (loop length, cadence) may change, and fields added by a later version resume at their default
  (configs.resume_conflicts). Runs written before config.json recorded the data and model source
  are compared on their configuration only."""
  conflicts = configs.resume_conflicts(saved, config)
  if 'data' in saved:
    conflicts += data_lib.identity_conflicts(saved['data'], record['data'])
  if 'model_source' in saved and saved['model_source'] != record['model_source']:
    conflicts.append(f'model_source: saved {saved["model_source"]}, now '
                     f'{record["model_source"]}')
  if conflicts:
    raise ValueError(
        f'{model_dir} holds a run with another configuration ({"; ".join(conflicts)}). '
        'Use a new --model_dir, or the same flags and data to resume.')


def _resume_validation_split(task, saved, model_dir, log):
  """An array source left at its default validation split resumes on the split the run
  recorded; runs from before it was recorded validated on the first images."""
  data = task.data
  recorded = saved.get('data', {}).get('validation_split', 'first')
  if getattr(data, 'validation_split_given', True) or data.validation_split == recorded:
    return
  task.data = data.with_validation_split(recorded)
  log(f'Resuming with the validation split {model_dir} began with ({recorded}).')


def atomic_write(path, text):
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)

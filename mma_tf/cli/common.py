"""Helpers shared by the command-line tools: radius parsing, flag errors, TensorFlow's log set-up.

Nothing here imports TensorFlow: a CLI reads its flags, checks them and only then starts TF, so a
flag error is reported at once and TF_CPP_MIN_LOG_LEVEL is set before TF's C++ side reads it (it
reads it once, when the library loads).
"""
import math
import os
import re
import sys

from absl import app, flags

# A decimal number ('8', '8.', '.5', '1e-3'; no 'nan' or 'inf'), and 'a/b' of two of them.
_NUMBER = r'[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?'
_FRACTION = re.compile(rf'^({_NUMBER})\s*/\s*({_NUMBER})$')


def parse_radius(text, flag=None):
  """A radius in the unit of the image range [0, 1]: '0.3', '2', '8/255' (= 0.0314...).

  No value is ever rescaled: '8' means 8, which Linf validation then rejects as outside the box.
  Only the syntax is checked here (and finiteness); the ranges depend on the norm and the image
  shape, so the config validators check them. `flag` (e.g. '--eps') prefixes the error message.
  """
  where = f'{flag}: ' if flag else ''
  if isinstance(text, (int, float)) and not isinstance(text, bool):
    value = float(text)
  else:
    text = str(text).strip()
    match = _FRACTION.match(text)
    if match and float(match.group(2)) != 0:
      value = float(match.group(1)) / float(match.group(2))
    elif not match and re.fullmatch(_NUMBER, text):
      value = float(text)
    else:
      raise ValueError(f"{where}{text!r} is not a number or a fraction a/b (e.g. 0.3 or 8/255).")
  if not math.isfinite(value):
    raise ValueError(f'{where}{text!r} is not a finite number.')
  return value


def parse_radii(values, flag=None):
  """A list of radii from a list of strings (absl DEFINE_list) or one comma-separated string."""
  if isinstance(values, str):
    values = [v for v in values.split(',') if v.strip()]
  return [parse_radius(v, flag) for v in values]


class RadiusParser(flags.ArgumentParser):
  """absl parser of one radius flag: errors surface while flags are parsed, before any TF start."""

  def parse(self, argument):
    return parse_radius(argument)

  def flag_type(self):
    return 'radius'


def define_radius(name, default, help_text, flag_values=flags.FLAGS):
  """A float flag that also accepts fractions such as 8/255 (same unit: the [0, 1] image range)."""
  flags.DEFINE(RadiusParser(), name, default, help_text + ' A number or a fraction a/b (8/255).',
               flag_values=flag_values, serializer=flags.ArgumentSerializer())


def exit_on_flag_error(argv):
  """absl `flags_parser` for `app.run`: a bad flag prints one 'error:' line and exits with 2.

  absl's own handler exits with 1 and a usage dump; 2 and one line match argparse and the
  configuration errors the CLIs report, so scripts can tell a user error from a crash.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}\nPass --help for the list of flags.', file=sys.stderr)
    sys.exit(2)


def set_tf_log_level(verbose):
  """Sets TF_CPP_MIN_LOG_LEVEL for TensorFlow's C++ logs; call before TF is first imported.

  verbose: '0', every C++ log line (start-up CPU feature and oneDNN notes included). Otherwise
  '2' (errors only), unless the environment already chose a level. Raises RuntimeError if TF is
  already loaded, since the C++ side would ignore the change.
  """
  if 'tensorflow' in sys.modules:
    raise RuntimeError('TensorFlow is already imported; its C++ log level can no longer change. '
                       'Call set_tf_log_level before the first `import tensorflow`.')
  if verbose:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0'
  else:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def import_tensorflow(verbose=False):
  """Imports TensorFlow with the C++ and Python log levels chosen by `verbose`; returns the module.

  Quiet by default: no start-up notes (cpu_feature_guard, oneDNN), and TF / absl Python warnings
  at ERROR / WARNING. The TF_CPP_MIN_LOG_LEVEL set-up is skipped if TF was imported already.
  Raises ImportError naming the pip command if TensorFlow is not installed.
  """
  if 'tensorflow' not in sys.modules:
    set_tf_log_level(verbose)
  try:
    if verbose or 'tensorflow' in sys.modules:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
    else:
      tf = _import_without_startup_notes()
  except ImportError as e:  # TF is an extra: tensorflow-cpu and tensorflow are separate packages
    raise ImportError(f'TensorFlow cannot be imported ({e}). Install it with pip install '
                      '"mma_tf[cpu]" (or "mma_tf[gpu]" for CUDA GPUs).') from e
  from absl import logging  # pylint: disable=import-outside-toplevel
  if not verbose:
    tf.get_logger().setLevel('ERROR')
    logging.set_verbosity(logging.WARNING)
  return tf


# TF's start-up notes: with oneDNN on, TF logs one through absl before its log level applies, so
# TF_CPP_MIN_LOG_LEVEL cannot hide it (mma_tf turns oneDNN on: mma_tf/__init__.py).
_STARTUP_NOTE = re.compile(r'absl::InitializeLog\(\) is called|\] oneDNN custom operations are on|'
                           r'cpu_feature_guard')


def _import_without_startup_notes():
  """`import tensorflow` with the C++ stderr of the import filtered: start-up notes dropped, any
  other line (an error, a warning) written back to stderr."""
  import tempfile  # pylint: disable=import-outside-toplevel
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines()
      kept = [line for line in lines if not _STARTUP_NOTE.search(line)]
      if kept:
        sys.stderr.write('\n'.join(kept) + '\n')
  return tf


def optional_import(module, extra, purpose):
  """Imports an optional dependency or raises ImportError naming the pip command that adds it."""
  import importlib  # pylint: disable=import-outside-toplevel
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f'{purpose} needs the optional package {module!r}: pip install '
                      f'"mma_tf[{extra}]" (or pip install {module}).') from e


def run_main(main, doc):
  """Console-script entry point: absl's --help shows `doc` (it prints the __main__ module's
  docstring), and a bad flag is one 'error:' line and exit code 2."""
  sys.modules['__main__'].__doc__ = doc
  app.run(main, flags_parser=exit_on_flag_error)

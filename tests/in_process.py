"""Runs a command-line tool's main() in the test process: the same flag parsing, checks and code
as `python -m <module>`, without starting another Python and TensorFlow. What only a new process
shows (start-up logs, what gets imported, the installed scripts) is tested with subprocesses."""
import contextlib
import importlib
import io
import subprocess
import sys

from absl import flags

from mma_tf import setting_names
from mma_tf.cli import common

# mma_tf.cli.train and mma_tf.cli.evaluate define flags of the same names on absl's global FLAGS,
# so one of them is loaded at a time: the other's flags are removed first.
_FLAG_NAMES = {}


def _load(module_name):
  for other in [m for m in _FLAG_NAMES if m != module_name and m in sys.modules]:
    for name in _FLAG_NAMES[other]:
      delattr(flags.FLAGS, name)
    del sys.modules[other]
  if module_name not in sys.modules:
    before = set(flags.FLAGS)
    importlib.import_module(module_name)
    _FLAG_NAMES[module_name] = set(flags.FLAGS) - before
  return sys.modules[module_name]


def run_main(module_name, args):
  """`python -m module_name *args`, in this process: a CompletedProcess with main's exit code
  (2 for a flag error, as the console script) and what it printed."""
  module = _load(module_name)
  flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  flag_names = setting_names._FLAGS  # pylint: disable=protected-access
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = module.main(common.exit_on_flag_error([module_name] + [str(a) for a in args]))
    except SystemExit as e:  # exit_on_flag_error printed the flag error
      code = e.code
    finally:  # the CLI names settings as flags; the tests after it use the Python API
      setting_names._FLAGS = flag_names  # pylint: disable=protected-access
  return subprocess.CompletedProcess([module_name] + list(args), code, out.getvalue(),
                                     err.getvalue())

"""How messages name a setting: as a Python argument (`protocol='rand'`), or as a command-line
flag (`--protocol=rand`) once a command-line tool has called `use_flags` at start-up.

Errors, notes and warnings that tell the user what to change go through `setting`, so the Python
API speaks Python and `mma-evaluate` speaks its flags (which may be named differently).
"""
_FLAGS = None  # {setting name: flag name} while a command-line tool runs


def use_flags(flag_names):
  """Name settings as flags from now on: {setting name: flag name without dashes}; settings not
  listed keep their own name as the flag's."""
  global _FLAGS
  _FLAGS = dict(flag_names)


def setting(name, value=None):
  """'name' or "name='value'" in Python; '--flag' or '--flag=value' on the command line."""
  if _FLAGS is None:
    return name if value is None else f'{name}={value!r}'
  flag = '--' + _FLAGS.get(name, name)
  return flag if value is None else f'{flag}={value}'
